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
rewrites the graph (`rewrite`). The driver tries the rules in `rules_for(mode)` order at each node.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from ...shapes import times
from .graph import Graph, attribute, describe
from .pools import pool_kind, pool_use

__all__ = ["Rule", "rules_for"]

_FLATTENS = frozenset({"Flatten", "Reshape", "Squeeze"})
_UNFLATTENS = frozenset({"Reshape", "Unsqueeze"})
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
_UNKNOWN = (
    "unknown to ONNX shape inference at the reference input size (a shape the graph computes at run time, "
    "such as a channel shuffle's Reshape); convert the PyTorch model with fc2conv.convert instead"
)


class Rule:
    """One rewrite rule. `check` runs only where `match` holds; `rewrite` only where `check` found no reason."""

    def match(self, g: Graph, node: onnx.NodeProto) -> bool:
        raise NotImplementedError

    def check(self, g: Graph, node: onnx.NodeProto) -> str | None:
        return None

    def rewrite(self, g: Graph, node: onnx.NodeProto) -> None:
        raise NotImplementedError


def rules_for(mode: str) -> list[Rule]:
    """The rules in the order they are tried at each node; `mode` is "dense" or "global"."""
    dense = mode == "dense"
    rules: list[Rule] = [KeepReducedDims(), DropUnitReshape(), GemmToConv(dense), FoldBias(), LiftPointwise()]
    if dense:
        rules.append(SlidingPool())
    rules.append(RefuseOtherHeadConsumers())
    return rules


# -- shared helpers ------------------------------------------------------------------------------------


def _lift(g: Graph, name: str, batch: int | None, features: int | None) -> None:
    """Record that `name`, an N×D vector in the original graph, now holds N×D×1×…×1 at the reference size."""
    g.lifted.add(name)
    g.shapes[name] = (batch, features, *(1,) * g.spatial)


def _set_int(node: onnx.NodeProto, name: str, value: int) -> None:
    """Set `node`'s integer attribute `name`, adding it when absent."""
    for attr in node.attribute:
        if attr.name == name:
            attr.i = value
            return
    node.attribute.append(helper.make_attribute(name, value))


def _per_feature(value: np.ndarray, features: int) -> bool:
    """Whether `value` broadcasts against N×features vectors as one number or one number per feature."""
    return value.size == 1 or value.shape in ((features,), (1, features))


def _grows(g: Graph, name: str) -> bool | None:
    """Whether the spatial size of map `name` grows with the input (None when shape inference cannot tell)."""
    ref, probe = g.shapes.get(name), g.probe.get(name)
    if ref is None or probe is None or None in probe[2:]:
        return None
    return any(p > r for p, r in zip(probe[2:], ref[2:], strict=True))


def _fixed_size_reason(name: str, size: tuple[int, ...]) -> str:
    return (
        f"its input {name!r} stays {times(size)} when the image grows, so nothing can slide over it: a "
        "layer before it has this image size baked in (a reshape written with the export's sizes, or an adaptive "
        "pool the exporter unrolled). Export with dynamic height and width (dynamic_axes), at a size where such a "
        "pool is the identity (VGG/AlexNet: 224×224), or use mode='global'"
    )


# -- rules ---------------------------------------------------------------------------------------------


class KeepReducedDims(Rule):
    """ReduceMean/ReduceMax over H, W with keepdims=0 gives N×C vectors: keep the dims, lift the result."""

    def match(self, g: Graph, node: onnx.NodeProto) -> bool:
        return node.op_type.startswith("Reduce") and attribute(node, "keepdims", 1) == 0 and bool(
            pool_kind(g, node)
        )

    def rewrite(self, g: Graph, node: onnx.NodeProto) -> None:
        _set_int(node, "keepdims", 1)
        _lift(g, node.output[0], *g.shapes[node.input[0]][:2])


class DropUnitReshape(Rule):
    """Flatten/Reshape/Squeeze N×C×1×1 → N×C, or Reshape/Unsqueeze of a lifted vector to N×C×1×1: no-ops."""

    def match(self, g: Graph, node: onnx.NodeProto) -> bool:
        if node.op_type not in _FLATTENS | _UNFLATTENS:
            return False
        source, target = g.shapes.get(node.input[0]), g.shapes.get(node.output[0])
        if source is None or target is None or len(source) < 3 or set(source[2:]) != {1} or None in source:
            return False
        flattens = node.op_type in _FLATTENS and target == source[:2]
        unflattens = node.op_type in _UNFLATTENS and node.input[0] in g.lifted and target == source
        return flattens or unflattens

    def rewrite(self, g: Graph, node: onnx.NodeProto) -> None:
        source, target = node.input[0], node.output[0]
        vector = len(g.shapes[target]) == 2
        g.shapes[target] = g.shapes[source]
        g.alias(node)
        if vector:
            _lift(g, target, *g.shapes[source][:2])


class GemmToConv(Rule):
    """Gemm, or MatMul by a constant matrix, on flattened N×C×h×w features or on a lifted vector → Conv."""

    def __init__(self, dense: bool) -> None:
        self.dense = dense

    def match(self, g: Graph, node: onnx.NodeProto) -> bool:
        if node.op_type != "MatMul":
            return node.op_type == "Gemm"
        a, b = node.input
        return g.is_constant(b) and g.rank(b) == 2 and (a in g.lifted or g.rank(a) == 2)

    def check(self, g: Graph, node: onnx.NodeProto) -> str | None:
        features = self._features(g, node.input[0])
        if isinstance(features, str):
            return features
        x, channels, kernel = features
        if attribute(node, "transA", 0):
            return "transA=1 transposes the batch into the features"
        if not g.is_constant(node.input[1]) or g.rank(node.input[1]) != 2:
            return f"its weight {node.input[1]!r} is not a constant matrix"
        out_features, in_features = self._matrix_shape(node, g.shapes[node.input[1]])
        if in_features != channels * math.prod(kernel):
            return (f"it takes {in_features} features, not {channels}×{times(kernel)} = "
                    f"{channels * math.prod(kernel)}")
        bias = g.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if len(node.input) > 2 and node.input[2] and (bias is None or not _per_feature(bias, out_features)):
            return f"its bias {node.input[2]!r} is not a constant with one value per output"
        if self.dense and x not in g.lifted and _grows(g, x) is False:
            return _fixed_size_reason(x, kernel)
        return None

    def rewrite(self, g: Graph, node: onnx.NodeProto) -> None:
        x, _, kernel = self._features(g, node.input[0])
        weight = self._matrix(node, g.constant(node.input[1]))
        alpha = attribute(node, "alpha", 1.0) if node.op_type == "Gemm" else 1.0
        conv_weight = (alpha * weight).astype(weight.dtype).reshape(weight.shape[0], -1, *kernel)
        inputs = [x, g.add_initializer(conv_weight, f"{node.input[1]}_conv")]
        if len(node.input) > 2 and node.input[2]:
            beta = attribute(node, "beta", 1.0)
            bias = np.broadcast_to(beta * g.constant(node.input[2]), (1, weight.shape[0])).reshape(-1)
            inputs.append(g.add_initializer(bias.astype(weight.dtype), f"{node.input[2]}_conv"))
        out = node.output[0]
        conv = helper.make_node("Conv", inputs, [out], name=node.name, kernel_shape=list(kernel))
        g.replace(node, [conv])
        _lift(g, out, g.shapes[x][0], weight.shape[0])

    @staticmethod
    def _out_by_in(node: onnx.NodeProto) -> bool:
        """Whether the weight is stored out×in (Gemm with transB=1); otherwise it is in×out."""
        return node.op_type == "Gemm" and bool(attribute(node, "transB", 0))

    @classmethod
    def _matrix_shape(cls, node: onnx.NodeProto, shape: tuple[int, ...]) -> tuple[int, int]:
        return (shape[0], shape[1]) if cls._out_by_in(node) else (shape[1], shape[0])

    @classmethod
    def _matrix(cls, node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
        """The weight as out×in."""
        return weight if cls._out_by_in(node) else weight.T

    @staticmethod
    def _features(g: Graph, a: str) -> tuple[str, int, tuple[int, ...]] | str:
        """(map, C, kernel) such that `a` is Flatten(map) or the lifted map itself; else why not."""
        if a in g.lifted:
            return a, g.shapes[a][1], (1,) * g.spatial
        producer = g.producer.get(a)
        if producer is None:
            return f"its input {a!r} is a graph input of rank {g.rank(a)}, not image features"
        source = g.shapes.get(producer.input[0])
        if producer.op_type in _FLATTENS and source is not None and len(source) == 2 + g.spatial:
            if None in source:
                return f"the shape of its input features {producer.input[0]!r} is {_UNKNOWN}"
            if g.shapes.get(a) == (source[0], math.prod(source[1:])):
                return producer.input[0], source[1], tuple(source[2:])
        return (
            f"its input {a!r} comes from {describe(producer)}, not from flattened convolutional features, a "
            "global pool or another converted Gemm"
        )


class FoldBias(Rule):
    """Add of a per-output constant right after a head Conv → that Conv's bias."""

    def match(self, g: Graph, node: onnx.NodeProto) -> bool:
        if node.op_type != "Add" or len(node.input) != 2:
            return False
        for conv_out, other in (node.input, reversed(node.input)):
            conv = g.producer.get(conv_out)
            value = g.constant(other)
            if (
                conv is not None and conv.op_type == "Conv" and conv_out in g.lifted
                and len(g.consumers[conv_out]) == 1 and conv_out not in g.outputs
                and value is not None and _per_feature(value, g.shapes[conv_out][1])
            ):
                return True
        return False

    def rewrite(self, g: Graph, node: onnx.NodeProto) -> None:
        conv_out, other = node.input if node.input[0] in g.lifted else reversed(node.input)
        conv = g.producer[conv_out]
        channels = g.shapes[conv_out][1]
        weight = g.constant(conv.input[1])
        bias = g.constant(conv.input[2]) if len(conv.input) > 2 else np.zeros(channels, weight.dtype)
        bias = (bias + np.broadcast_to(g.constant(other), (1, channels)).reshape(-1)).astype(weight.dtype)
        name = g.add_initializer(bias, f"{conv.input[1]}_bias")
        if len(conv.input) > 2:
            conv.input[2] = name
        else:
            conv.input.append(name)
        conv.output[0] = node.output[0]
        g.replace(node, [])
        _lift(g, node.output[0], *g.shapes[conv_out][:2])


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
                if not _per_feature(value, features):
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
            _set_int(node, "axis", 1)
        if node.op_type == "Concat":
            features = sum(g.shapes[i][1] for i in node.input)
        g.refresh()
        _lift(g, node.output[0], batch, features)


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
            return f"the spatial size of its input {node.input[0]!r} is {_UNKNOWN}"
        use = pool_use(g)
        other_maps = sorted({use.maps[p] for p in use.partners.get(node.output[0], ())} - {node.input[0]})
        if other_maps:
            return (f"its result is combined with a pool of another map ({', '.join(map(repr, other_maps))}); "
                    "their windows would slide on different grids")
        if _grows(g, node.input[0]) is False:
            return _fixed_size_reason(node.input[0], size)
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
