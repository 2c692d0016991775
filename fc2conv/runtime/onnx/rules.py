"""The rewrite rules that make an ONNX classifier fully convolutional, one small class per rule.

The algebra, with X an N×C×h×w feature map and x = Flatten(X) its N×(C·h·w) rows (x[n, c·h·w + i·w + j] =
X[n, c, i, j]); the same holds with one or three spatial axes (N×C×L signals, N×C×D×H×W volumes):

- Gemm computes y = α·A'·B' + β·bias with A' = x and B' = Bᵀ when transB = 1, else B; MatMul computes x·B.
  With W = (α·B')ᵀ ∈ R^{out×C·h·w}, y[n, o] = Σ_{c,i,j} W[o, c·h·w + i·w + j]·X[n, c, i, j] + β·bias[o], which
  is Conv(X) with kernel W.reshape(out, C, h, w), bias β·bias, stride 1 and no padding: N×out×1×1 at the
  reference size, sliding over larger maps.
- A vector tensor y ∈ R^{N×D} is carried as the map Y ∈ R^{N×D×1×1} ("lifted"). Element-wise ops give the
  same values on Y once per-feature constants of shape (D,) or (1, D) are reshaped to (1, D, 1, 1);
  BatchNormalization acts on axis 1 of both; Softmax, LogSoftmax (opset ≥ 13) and Concat over axis 1 of Y
  equal the same op over axis 1 of y. A Gemm on a lifted Y is the case h = w = 1 above: a 1×1 Conv.
- Adding a per-output constant to such a Conv's output is adding it to the Conv's bias.
- Flatten/Reshape/Squeeze from N×C×1×1 to N×C, and Reshape/Unsqueeze back, move no data and are dropped.
- A global average (max) pool over an H×W map is AveragePool (MaxPool) with an H×W kernel and stride 1 at
  that size; on a larger map it slides and gives one pooled vector per window (mode "dense"). Pools whose
  result is recombined with data that was not pooled (a squeeze-excitation gate multiplying the features it
  pooled) are global context, not a head, and stay global. Pools of one map combined with each other (a
  Concat of average and max pools) all slide on the same grid; pools of two different maps are refused.

Each rule is matched at a node (`match`), says why it must refuse (`check` returns the reason, or None), and
rewrites the graph (`rewrite`). The driver tries the rules in `rules_for(mode)` order at each node. The rules of
the Linear layers (Gemm and MatMul to Conv, a constant after it into its bias) are in `linear`; what every rule
shares (the `Rule` protocol, flattening ops, vectors carried as maps) in `rule`.
"""

from __future__ import annotations

import onnx
from onnx import helper

from .graph import Graph, attribute
from .linear import FoldBias, GemmToConv
from .pools import pool_kind, pool_use
from .rule import FLATTENS, UNFLATTENS, UNKNOWN_SHAPE, Rule, fixed_size_reason, grows, lift, per_feature, set_int

__all__ = ["Rule", "rules_for"]

# Ops that act on each element alone (extra inputs, if any, are per-op parameters such as Clip's bounds or
# BatchNormalization's per-channel statistics, which already index axis 1).
_POINTWISE = frozenset({
    "Abs", "BatchNormalization", "Cast", "Celu", "Ceil", "Clip", "Dropout", "Elu", "Erf", "Exp", "Floor",
    "Gelu", "HardSigmoid", "HardSwish", "Identity", "LeakyRelu", "Log", "Mish", "Neg", "Reciprocal", "Relu",
    "Round", "Selu", "Sigmoid", "Sign", "Softplus", "Softsign", "Sqrt", "Tanh", "ThresholdedRelu",
})
# Ops that broadcast their operands against each other: constants must be scalars or per feature.
_BROADCASTING = frozenset({"Add", "Div", "Max", "Mean", "Min", "Mul", "Pow", "PRelu", "Sub", "Sum"})
_ALONG_AXIS = frozenset({"Concat", "LogSoftmax", "Softmax"})
_WINDOW_POOLS = {"avg": "AveragePool", "max": "MaxPool"}


def rules_for(mode: str) -> list[Rule]:
    """The rules in the order they are tried at each node; `mode` is "dense" or "global"."""
    dense = mode == "dense"
    rules: list[Rule] = [KeepReducedDims(), DropUnitReshape(), GemmToConv(dense), FoldBias(), LiftPointwise()]
    if dense:
        rules.append(SlidingPool())
    rules.append(RefuseOtherHeadConsumers())
    return rules


class KeepReducedDims(Rule):
    """ReduceMean/ReduceMax over H, W with keepdims=0 gives N×C vectors: keep the dims, lift the result."""

    def match(self, g: Graph, node: onnx.NodeProto) -> bool:
        return node.op_type.startswith("Reduce") and attribute(node, "keepdims", 1) == 0 and bool(
            pool_kind(g, node)
        )

    def rewrite(self, g: Graph, node: onnx.NodeProto) -> None:
        set_int(node, "keepdims", 1)
        lift(g, node.output[0], *g.shapes[node.input[0]][:2])




class DropUnitReshape(Rule):
    """Flatten/Reshape/Squeeze N×C×1×1 → N×C, or Reshape/Unsqueeze of a lifted vector to N×C×1×1: no-ops."""

    def match(self, g: Graph, node: onnx.NodeProto) -> bool:
        if node.op_type not in FLATTENS | UNFLATTENS:
            return False
        source, target = g.shapes.get(node.input[0]), g.shapes.get(node.output[0])
        if source is None or target is None or len(source) < 3 or set(source[2:]) != {1} or None in source:
            return False
        flattens = node.op_type in FLATTENS and target == source[:2]
        unflattens = node.op_type in UNFLATTENS and node.input[0] in g.lifted and target == source
        return flattens or unflattens

    def rewrite(self, g: Graph, node: onnx.NodeProto) -> None:
        source, target = node.input[0], node.output[0]
        vector = len(g.shapes[target]) == 2
        g.shapes[target] = g.shapes[source]
        g.alias(node)
        if vector:
            lift(g, target, *g.shapes[source][:2])



class LiftPointwise(Rule):
    """Element-wise ops, BatchNormalization, Softmax/LogSoftmax/Concat on lifted vectors → same op on maps."""

    def match(self, g: Graph, node: onnx.NodeProto) -> bool:
        ops = _POINTWISE | _BROADCASTING | _ALONG_AXIS
        return node.op_type in ops and any(i in g.lifted for i in node.input) and node.output[0] not in g.lifted

    def check(self, g: Graph, node: onnx.NodeProto) -> str | None:
        head = next(i for i in node.input if i in g.lifted)
        features = g.shapes[head][1]
        dependent = g.value_dependent()
        for name in node.input:
            if not name or name in g.lifted:
                continue
            if name in dependent:
                return f"it combines the head's {head!r} with {name!r}, which comes from another branch"
            if node.op_type == "Concat":
                return f"it concatenates the head's {head!r} with the constant {name!r}"
            if node.op_type in _BROADCASTING:
                value = g.constant(name)
                if value is None:
                    return f"its operand {name!r} is computed by the graph rather than stored as a constant"
                if not per_feature(value, features):
                    return f"its constant {name!r} of shape {value.shape} is neither a scalar nor per feature"
        if node.op_type in _ALONG_AXIS and attribute(node, "axis", -1) not in (1, -1):
            return "it works along an axis other than the features"
        if node.op_type in ("Softmax", "LogSoftmax") and g.opset < 13:
            return f"before opset 13 {node.op_type} normalizes over all axes from `axis` on, not per position"
        return None

    def rewrite(self, g: Graph, node: onnx.NodeProto) -> None:
        batch, features = g.shapes[next(i for i in node.input if i in g.lifted)][:2]
        if node.op_type in _BROADCASTING:
            for k, name in enumerate(node.input):
                value = g.constant(name) if name not in g.lifted else None
                if value is not None and value.size > 1:
                    node.input[k] = g.add_initializer(value.reshape(1, features, 1, 1), f"{name}_map")
        if node.op_type in _ALONG_AXIS:
            set_int(node, "axis", 1)
        if node.op_type == "Concat":
            features = sum(g.shapes[i][1] for i in node.input)
        g.refresh()
        lift(g, node.output[0], batch, features)



class SlidingPool(Rule):
    """(dense mode) A global pool that is not global context → AveragePool/MaxPool of its size, stride 1; so is a
    window pool whose one window covers the map at the reference size (what a static export writes for
    `F.avg_pool2d(x, x.size()[2:])`)."""

    def match(self, g: Graph, node: onnx.NodeProto) -> bool:
        return (
            bool(pool_kind(g, node)) and attribute(node, "keepdims", 1) == 1
            and node.output[0] not in g.sliding_pools  # a window pool of the map's size is one already
            and node.output[0] not in pool_use(g).context
        )

    def check(self, g: Graph, node: onnx.NodeProto) -> str | None:
        size = g.shapes.get(node.input[0], (None,) * (2 + g.spatial))[2:]
        if None in size:
            return f"the spatial size of its input {node.input[0]!r} is {UNKNOWN_SHAPE}"
        use = pool_use(g)
        other_maps = sorted({use.maps[p] for p in use.partners.get(node.output[0], ())} - {node.input[0]})
        if other_maps:
            return (f"its result is combined with a pool of another map ({', '.join(map(repr, other_maps))}); "
                    "their windows would slide on different grids")
        if grows(g, node.input[0]) is False:
            return fixed_size_reason(node.input[0], size)
        return None

    def rewrite(self, g: Graph, node: onnx.NodeProto) -> None:
        size = list(g.shapes[node.input[0]][2:])
        op = _WINDOW_POOLS[pool_kind(g, node)]
        pool = helper.make_node(
            op, [node.input[0]], list(node.output), name=node.name, kernel_shape=size, strides=[1] * len(size)
        )
        g.replace(node, [pool])
        g.sliding_pools.add(node.output[0])



class RefuseOtherHeadConsumers(Rule):
    """Any other node reading a lifted vector (rewritten nodes write lifted outputs) cannot work on maps."""

    def match(self, g: Graph, node: onnx.NodeProto) -> bool:
        return any(i in g.lifted for i in node.input) and node.output[0] not in g.lifted

    def check(self, g: Graph, node: onnx.NodeProto) -> str | None:
        head = next(i for i in node.input if i in g.lifted)
        return f"fc2conv cannot keep {node.op_type} working on {head!r} once it becomes an N×C×H×W map"
