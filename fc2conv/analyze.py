"""Decide, node by node, how a traced classifier becomes fully convolutional.

One pass over the graph in order gives every node a *value* and an *action*.

Values say what a node's output is in the converted graph:
- kept (no entry): the node computes what it computed before, on maps that may now be larger;
- `Vector`: the original output is a vector per example that equals `source.flatten(1)` at the reference
  size, where `source` is a 4-D map in the converted graph. A flatten of C×h×w features starts one
  (kernel h×w), a Linear on it gives another (kernel 1×1): this is how the head is carried as maps;
- `ChannelsLast`: the original output is `source.permute(0, 2, 3, 1)` (the inside of a ConvNeXt block).

Actions say what the rewrite emits: a copy of the node (the default), an alias of another node's
value (a flatten or an identity pool disappears), or one of the replacements below. Every Linear,
and every pool the mode touches, also gets a `Decision`, the printable row of `plan()`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import ConversionError

__all__ = ["MODES", "Analysis", "Decision", "Plan", "analyze"]

Mode = Literal["dense", "global", "cam"]
MODES: tuple[str, ...] = ("dense", "global", "cam")

# ---------------------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Vector:
    source: fx.Node
    channels: int
    kernel: tuple[int, int]
    origin: fx.Node  # where the vector was made; vectors of two origins never mix
    fold_from: tuple[int, int] | None = None  # an adaptive average pool from this size is still to fold
    mean: bool = False  # cam: the original vector is the spatial mean of `source`

    @property
    def is_plain(self) -> bool:
        return self.kernel == (1, 1) and self.fold_from is None


@dataclass(frozen=True)
class ChannelsLast:
    source: fx.Node


# --------------------------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Alias:
    of: fx.Node


@dataclass(frozen=True)
class LinearToConv:
    input: fx.Node
    channels: int
    kernel: tuple[int, int]
    fold_from: tuple[int, int] | None


@dataclass(frozen=True)
class BatchNormTo2d:
    input: fx.Node


@dataclass(frozen=True)
class LayerNormToChannels:
    input: fx.Node


@dataclass(frozen=True)
class SoftmaxOverChannels:
    input: fx.Node
    log: bool


@dataclass(frozen=True)
class GlobalToWindowPool:
    input: fx.Node
    kind: str
    size: tuple[int, int]


@dataclass(frozen=True)
class GlobalPoolKeepDims:
    input: fx.Node
    kind: str


@dataclass(frozen=True)
class ConcatOverChannels:
    inputs: tuple[fx.Node, ...]


Action = Alias | LinearToConv | BatchNormTo2d | LayerNormToChannels | SoftmaxOverChannels | GlobalToWindowPool
Action = Action | GlobalPoolKeepDims | ConcatOverChannels

# ------------------------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Decision:
    """One row of a plan: what happens to a layer, and why."""

    layer: str
    op: str
    rule: str
    kernel: tuple[int, int] | None = None
    in_channels: int | None = None
    out_channels: int | None = None
    reason: str = ""


class Plan(list):
    """The decisions of a conversion, in graph order; `str(plan)` is a table."""

    notes: list[str]

    def __init__(self, decisions=(), notes=()):
        super().__init__(decisions)
        self.notes = list(notes)

    def __str__(self) -> str:
        header = ("layer", "op", "rule", "kernel", "channels", "reason")
        rows = [header] + [
            (
                d.layer, d.op, d.rule, "" if d.kernel is None else f"{d.kernel[0]}×{d.kernel[1]}",
                "" if d.in_channels is None else f"{d.in_channels}→{d.out_channels}", d.reason,
            )
            for d in self
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
        lines = [("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]).rstrip()
                 for r in rows]
        return "\n".join([*lines, *self.notes])


@dataclass
class Analysis:
    """Everything the rewrite needs: per-node values and actions, the plan, and the head's entry."""

    mode: str
    values: dict[fx.Node, Vector | ChannelsLast]
    actions: dict[fx.Node, Action]
    plan: Plan
    cut: fx.Node | None  # the feature map the head slides over (dense), when there is exactly one
    window: tuple[int, int] | None  # its size at the reference input
    global_context: bool  # dense: some global pool feeds the backbone, so cells see image-level context


# ---------------------------------------------------------------------------------------- op matching

POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
    nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Dropout, nn.AlphaDropout, nn.Identity,
)
POINTWISE_FUNCTIONS = {
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.leaky_relu, F.elu,
    F.selu, F.celu, F.mish, F.softplus, F.hardtanh, F.dropout, F.alpha_dropout, torch.relu, torch.sigmoid,
    torch.tanh, torch.clamp,
}
POINTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "clamp", "clamp_min", "clamp_max", "contiguous", "clone"}
# Ops that are the identity in eval mode: they commute with pooling and with spatial averaging.
IDENTITY_MODULES = (nn.Dropout, nn.AlphaDropout, nn.Identity)
IDENTITY_FUNCTIONS = {F.dropout, F.alpha_dropout}
IDENTITY_METHODS = {"contiguous", "clone"}
BINARY_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
                    torch.div}
BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_"}
LINEAR_IN_MEAN = {operator.add, operator.sub, torch.add, torch.sub, "add", "sub", "add_", "sub_"}
RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze"}
CONCAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
SOFTMAX_FUNCTIONS = {F.softmax: False, torch.softmax: False, F.log_softmax: True, torch.log_softmax: True}
SOFTMAX_METHODS = {"softmax": False, "log_softmax": True}
ADAPTIVE_POOLS = {nn.AdaptiveAvgPool2d: "avg", nn.AdaptiveMaxPool2d: "max",
                  F.adaptive_avg_pool2d: "avg", F.adaptive_max_pool2d: "max"}
REDUCTIONS = {"mean": "avg", torch.mean: "avg", "amax": "max", torch.amax: "max"}


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if hasattr(meta, "shape") else None


def _callee(node: fx.Node, modules: dict[str, nn.Module]) -> Any:
    """The module, function or method name a node calls."""
    if node.op == "call_module":
        return modules[node.target]
    return node.target if node.op in ("call_function", "call_method") else None


def _is(callee: Any, modules: tuple[type, ...], functions=(), methods=()) -> bool:
    if isinstance(callee, nn.Module):
        return isinstance(callee, modules)
    if isinstance(callee, str):
        return callee in methods
    return callee in functions


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


@dataclass(frozen=True)
class _Pool:
    kind: str
    size_in: tuple[int, int]
    size_out: tuple[int, int]
    keepdim: bool

    @property
    def is_global(self) -> bool:
        return self.size_out == (1, 1)


def _match_pool(node: fx.Node, callee: Any) -> _Pool | None:
    """Adaptive pools and spatial mean/amax reductions of a 4-D tensor."""
    source = node.args[0] if node.args else None
    shape_in, shape_out = _shape(source), _shape(node)
    if shape_in is None or shape_out is None or len(shape_in) != 4:
        return None
    try:
        kind = ADAPTIVE_POOLS.get(type(callee) if isinstance(callee, nn.Module) else callee)
    except TypeError:  # unhashable callee
        kind = None
    if kind is not None:
        if getattr(callee, "return_indices", False) or node.kwargs.get("return_indices", False):
            return None
        return _Pool(kind, shape_in[2:], shape_out[2:], keepdim=True)
    try:
        kind = REDUCTIONS.get(callee)
    except TypeError:
        return None
    if kind is None:
        return None
    dims = _arg(node, 1, "dim")
    dims = (dims,) if isinstance(dims, int) else dims
    if not isinstance(dims, list | tuple) or {d % 4 for d in dims} != {2, 3}:
        return None
    keepdim = bool(_arg(node, 2, "keepdim", False))
    return _Pool(kind, shape_in[2:], (1, 1), keepdim)


def _is_reshape(callee: Any) -> bool:
    return _is(callee, (nn.Flatten,), RESHAPE_FUNCTIONS, RESHAPE_METHODS)


def _is_flatten(node: fx.Node, callee: Any) -> bool:
    """A reshape of N×C×h×w features into N×(C·h·w), however it is spelled; after a global pool also
    the first of a chain of squeezes (N×C×1×1 → N×C×1)."""
    if not _is_reshape(callee):
        return False
    shape_in, shape_out = _shape(node.args[0]), _shape(node)
    if shape_in is None or shape_out is None or len(shape_in) != 4 or len(shape_out) >= 4:
        return False
    batch, channels, h, w = shape_in
    if shape_out == (batch, channels * h * w):
        return True
    return (h, w) == (1, 1) and shape_out[:2] == (batch, channels) and set(shape_out[2:]) <= {1}


def _is_batch_size(node: fx.Node) -> bool:
    """`x.size(0)`, or `x.shape` / `x.size()` used only as `[0]`: the batch size, which a map shares."""
    if node.op == "call_method" and node.target == "size":
        dim = _arg(node, 1, "dim")
        if dim is not None:
            return dim == 0
    elif not (node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",)):
        return False
    return all(user.target is operator.getitem and user.args[1] == 0 for user in node.users)


def _is_linear(callee: Any) -> bool:
    return isinstance(callee, nn.Linear) or callee is F.linear


def _describe(node: fx.Node, callee: Any) -> str:
    if isinstance(callee, nn.Module):
        return f"'{node.target}' ({type(callee).__name__})"
    name = getattr(callee, "__name__", callee)
    return f"'{node.name}' ({name})"


def _linear_op(node: fx.Node, callee: Any) -> tuple[str, int, int]:
    if isinstance(callee, nn.Linear):
        return f"Linear({callee.in_features}, {callee.out_features})", callee.in_features, callee.out_features
    out_features, in_features = _shape(node.args[1]) or (None, None)
    return f"F.linear({in_features}, {out_features})", in_features, out_features


def _variable_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value depends on the model's input."""
    variable: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(n in variable for n in node.all_input_nodes):
            variable.add(node)
    return variable


def _feeds_only_head(pools: list[fx.Node], graph: fx.Graph, variable: set[fx.Node]) -> bool:
    """True unless something downstream of `pools` (global pools of one map) mixes them with other
    input-dependent maps.

    A squeeze-excitation pool rescales the features it was computed from: it is global context, not the
    head, and sliding it would change what every cell of the backbone computes. Pools of the same map may
    mix with each other (an average and a max pool concatenated): as windows they slide on the same grid.
    """
    downstream = set(pools)
    for node in graph.nodes:
        inputs = node.all_input_nodes
        if node in downstream or not any(n in downstream for n in inputs):
            continue
        downstream.add(node)
        for n in inputs:
            if n not in downstream and n in variable and _shape(n) is not None and node.op != "output":
                return False
    return True


# ------------------------------------------------------------------------------------------- analysis


class _Analyzer:
    def __init__(self, gm: fx.GraphModule, input_shape: tuple[int, ...], mode: str, channels_last_linears: bool):
        self.gm, self.mode, self.channels_last_linears = gm, mode, channels_last_linears
        self.input_shape = input_shape
        self.modules = dict(gm.named_modules())
        self.variable = _variable_nodes(gm.graph)
        self.values: dict[fx.Node, Vector | ChannelsLast] = {}
        self.actions: dict[fx.Node, Action] = {}
        self.decisions: list[Decision] = []
        self.cuts: dict[fx.Node, tuple[int, int]] = {}
        self.head: set[fx.Node] = set()  # nodes downstream of where the head starts
        self.pool_origins: dict[fx.Node, fx.Node] = {}  # global pool → the origin its vectors get
        self.global_context = False

    # -- helpers
    def fail(self, node: fx.Node, callee: Any, why: str) -> ConversionError:
        prefix = "cam mode: " if self.mode == "cam" else ""
        return ConversionError(f"{prefix}cannot convert {_describe(node, callee)}: {why}")

    def resolve(self, node: fx.Node) -> fx.Node:
        """Follow aliases back to the node whose value is really emitted."""
        while isinstance(self.actions.get(node), Alias):
            node = self.actions[node].of
        return node

    def layer(self, node: fx.Node) -> str:
        return str(node.target) if node.op == "call_module" else node.name

    def start_head(self, node: fx.Node, features: fx.Node) -> None:
        """`node` starts the head on `features`, unless it is already inside the head."""
        self.head.add(node)
        if features in self.head:
            return
        features = self.resolve(features)
        shape = _shape(features)
        self.cuts[features] = (1, 1) if shape is None or len(shape) != 4 else shape[2:]

    # -- the pass
    def run(self) -> Analysis:
        for node in self.gm.graph.nodes:
            callee = _callee(node, self.modules)
            inputs = [self.values.get(n) for n in node.all_input_nodes]
            if node.op == "placeholder":
                self.visit_placeholder(node)
            elif node.op == "output":
                self.visit_output(node)
            elif any(isinstance(v, Vector) for v in inputs):
                self.visit_vector(node, callee)
            elif any(isinstance(v, ChannelsLast) for v in inputs):
                self.visit_channels_last(node, callee)
            else:
                self.visit_kept(node, callee)
            if any(n in self.head for n in node.all_input_nodes):
                self.head.add(node)
        notes = []
        if not any(d.op.startswith(("Linear", "F.linear")) for d in self.decisions):
            notes.append("No Linear layer: the model is already convolutional.")
        if self.global_context:
            notes.append("Global pools that feed the backbone stay global: dense cells see image-level context.")
        (cut, window), = self.cuts.items() if len(self.cuts) == 1 else ((None, None),)
        return Analysis(self.mode, self.values, self.actions, Plan(self.decisions, notes), cut, window,
                        self.global_context)

    def visit_placeholder(self, node: fx.Node) -> None:
        if len(self.input_shape) == 1:  # an MLP: its input vector becomes a map of vectors
            self.values[node] = Vector(node, self.input_shape[0], (1, 1), origin=node)
            self.start_head(node, node)

    def visit_output(self, node: fx.Node) -> None:
        result = node.args[0]
        if not isinstance(result, fx.Node):
            raise ConversionError(
                f"the model returns {type(result).__name__}, not one tensor; fc2conv converts classifiers "
                "that return a single N×K tensor of scores"
            )
        value, shape = self.values.get(result), _shape(result)
        if isinstance(value, Vector) and value.is_plain and value.mean == (self.mode == "cam"):
            return
        if self.mode == "cam" and isinstance(value, Vector):
            raise ConversionError(
                f"cam mode: the output '{result.name}' is not computed linearly from a global average pool "
                f"(the head starts at '{value.origin.name}'); use mode='dense' or mode='global'"
            )
        if value is None and shape is not None and len(shape) == 4:
            return  # already a map of scores
        what = f"flattened {value.channels}×{value.kernel[0]}×{value.kernel[1]} features" if value else shape
        raise ConversionError(
            f"the model's output '{result.name}' is {what}, not a vector of class scores per example "
            "(N×K) computed from conv features; fc2conv cannot give it as a map"
        )

    def visit_kept(self, node: fx.Node, callee: Any) -> None:
        pool = _match_pool(node, callee)
        if pool is not None:
            self.visit_pool(node, callee, pool)
        elif _is_flatten(node, callee) and node.args[0] in self.variable:
            features = node.args[0]
            _, channels, h, w = _shape(features)
            self.actions[node] = Alias(features)
            self.values[node] = Vector(features, channels, (h, w), origin=self.pool_origins.get(features, node))
            self.start_head(node, features)
        elif _is_linear(callee):
            shape = _shape(node.args[0])
            op = _linear_op(node, callee)[0]
            if shape is not None and len(shape) >= 3:
                self.decisions.append(Decision(
                    self.layer(node), op, "left alone", reason=(
                        f"acts on the last dimension of a {len(shape)}-D tensor at every position; already "
                        "convolutional" + ("" if self.channels_last_linears else
                                           " (channels_last_linears=True makes it a 1×1 conv)"))))
                return
            source = node.args[0]
            raise self.fail(node, callee, (
                f"it is fed by '{getattr(source, 'name', source)}' of shape {shape}, which is not flattened "
                "conv features, a global pool or another Linear. Heads on sequences or tokens (RNNs, "
                "transformers) have no spatial map to slide over"))
        elif (self.channels_last_linears and _is(callee, (), {torch.permute}, {"permute"})
              and _permutation(node) == (0, 2, 3, 1) and len(_shape(node.args[0]) or ()) == 4):
            self.actions[node] = Alias(node.args[0])
            self.values[node] = ChannelsLast(node.args[0])

    def global_pools_of(self, features: fx.Node) -> list[fx.Node]:
        """Every global pool of `features`, in graph order."""
        return [n for n in features.users
                if (pool := _match_pool(n, _callee(n, self.modules))) is not None and pool.is_global
                and n.args[0] is features]

    def visit_pool(self, node: fx.Node, callee: Any, pool: _Pool) -> None:
        features = node.args[0]
        channels = _shape(features)[1]
        siblings = self.global_pools_of(features) if pool.is_global else [node]
        head = _feeds_only_head(siblings, self.gm.graph, self.variable)
        origin = self.pool_origins[node] = siblings[0]  # vectors pooled from one map may mix: one origin
        op = _describe(node, callee).split(" ", 1)[1].strip("()")
        record = lambda rule, reason="": self.decisions.append(  # noqa: E731
            Decision(self.layer(node), op, rule, pool.size_in, channels, channels, reason))
        if not pool.is_global:
            if self.mode != "dense" or not head:
                return
            self.start_head(node, features)
            if pool.size_in == pool.size_out:
                self.actions[node] = Alias(features)
                record("removed", "the identity at the reference size")
            elif pool.kind == "avg":
                self.actions[node] = Alias(features)
                self.values[node] = Vector(features, channels, pool.size_out, origin=node, fold_from=pool.size_in)
                record("folded", f"averages {pool.size_in} to {pool.size_out}; folded into the next conv")
            else:
                raise self.fail(node, callee, (
                    f"an adaptive max pool from {pool.size_in} to {pool.size_out} is not a sliding window; use "
                    f"mode='global', or a reference size where the map is already {pool.size_out}"))
            return
        if not head:
            if self.mode == "dense":
                self.global_context = True
                record("kept global", "global context: its result rescales the features elsewhere")
        elif self.mode == "global":
            record("kept global", "mode='global': the output stays one cell for every input size")
        elif self.mode == "dense":
            self.start_head(node, features)
            self.actions[node] = GlobalToWindowPool(features, pool.kind, pool.size_in)
            record(f"window {pool.kind} pool", "stride 1: slides over larger inputs")
            if not pool.keepdim:
                self.values[node] = Vector(node, channels, (1, 1), origin=origin)
            return
        elif self.mode == "cam":
            if pool.kind != "avg":
                raise self.fail(node, callee, "class activation maps need a global *average* pool")
            self.start_head(node, features)
            self.actions[node] = Alias(features)
            self.values[node] = Vector(features, channels, (1, 1), origin=origin, mean=True)
            record("removed", "cam: the head runs at every location before averaging")
            return
        if not pool.keepdim:  # keep the batch of vectors a batch of 1×1 maps
            self.actions[node] = GlobalPoolKeepDims(features, pool.kind)
            self.values[node] = Vector(node, channels, (1, 1), origin=origin)

    def visit_vector(self, node: fx.Node, callee: Any) -> None:
        vectors = [v for n in node.all_input_nodes if isinstance(v := self.values.get(n), Vector)]
        vec = vectors[0]
        if any(v.origin is not vec.origin for v in vectors):
            origins = sorted({v.origin.name for v in vectors})
            raise self.fail(node, callee, (
                f"it combines vectors from separate branches ({', '.join(origins)}); a map of scores needs "
                "one path from the features to the classifier"))
        follow = lambda: replace(vec, source=node)  # noqa: E731
        shape_out = _shape(node)

        if _is_linear(callee):
            if node.args[0] not in self.values:
                raise self.fail(node, callee, "its weight, not its input, comes from the features")
            if len(_shape(node.args[0])) != 2:
                raise self.fail(node, callee, f"its input has shape {_shape(node.args[0])}, not N×features")
            op, _, out_features = _linear_op(node, callee)
            if vec.mean and not vec.is_plain:
                raise self.fail(node, callee, "it is not fed by a global average pool")
            kernel = vec.fold_from or vec.kernel
            rule = "1×1 conv" if kernel == (1, 1) else "global conv"
            if vec.fold_from:
                rule += " (pool folded)"
            self.actions[node] = LinearToConv(node.args[0], vec.channels, vec.kernel, vec.fold_from)
            self.values[node] = Vector(node, out_features, (1, 1), origin=vec.origin, mean=vec.mean)
            self.decisions.append(Decision(self.layer(node), op, rule, kernel, vec.channels, out_features))
            return
        if _is_reshape(callee) and shape_out is not None and node.args[0] in self.values:
            size = vec.channels * vec.kernel[0] * vec.kernel[1]
            if vec.is_plain and not vec.mean and shape_out[1:] == (vec.channels, 1, 1):
                self.actions[node] = Alias(vec.source)  # back to a 1×1 map: the kept map is that map
                return
            if int(torch.Size(shape_out[1:]).numel()) == size and shape_out[0] == _shape(node.args[0])[0]:
                self.actions[node] = Alias(node.args[0])  # the same vectors, reshaped
                self.values[node] = vec
                return
        if _is_batch_size(node):
            return  # the batch size is the same in the map
        if _is(callee, IDENTITY_MODULES, IDENTITY_FUNCTIONS, IDENTITY_METHODS):
            self.values[node] = follow()
            return
        if _is(callee, POINTWISE_MODULES, POINTWISE_FUNCTIONS, POINTWISE_METHODS):
            if vec.fold_from:
                raise self.fail(node, callee, "it sits between an adaptive average pool and a Linear, so the "
                                              "pool cannot be folded into the Linear; use mode='global'")
            if vec.mean:
                raise self.fail(node, callee, "it is not linear, so class maps would not average to the logits")
            self.values[node] = follow()
            return
        if _is(callee, (), BINARY_FUNCTIONS, BINARY_METHODS):
            others = [a for a in node.args if isinstance(a, fx.Node) and a not in self.values]
            layouts = {(v.channels, v.kernel, v.fold_from) for v in vectors}
            if others and any(_shape(a) not in ((), None) for a in others):
                raise self.fail(node, callee, "it combines the head's vectors with a tensor from the features")
            if len(layouts) != 1 or vec.fold_from:
                raise self.fail(node, callee, "it combines vectors of different layouts")
            if vec.mean and (callee not in LINEAR_IN_MEAN and len(vectors) > 1):
                raise self.fail(node, callee, "it is not linear, so class maps would not average to the logits")
            self.values[node] = follow()
            return
        if _is(callee, (), CONCAT_FUNCTIONS):
            parts = _arg(node, 0, "tensors")
            if len(shape_out or ()) != 2 or _arg(node, 1, "dim", 0) not in (1, -1):
                raise self.fail(node, callee, "it concatenates the head's vectors along the batch")
            if not all(isinstance(self.values.get(n), Vector) for n in parts):
                raise self.fail(node, callee, "it concatenates the head's vectors with a tensor from elsewhere")
            if any(not v.is_plain or v.mean != vec.mean for v in vectors):
                raise self.fail(node, callee, "it concatenates flattened maps, not pooled vectors")
            self.actions[node] = ConcatOverChannels(tuple(parts))
            self.values[node] = Vector(node, sum(self.values[n].channels for n in parts), (1, 1), origin=vec.origin,
                                       mean=vec.mean)
            return
        if isinstance(callee, nn.BatchNorm1d) and vec.is_plain and len(_shape(node.args[0])) == 2:
            self.actions[node] = BatchNormTo2d(node.args[0])
            self.values[node] = follow()
            self.decisions.append(Decision(self.layer(node), "BatchNorm1d", "BatchNorm2d", (1, 1),
                                           vec.channels, vec.channels, "same statistics"))
            return
        if vec.mean:
            raise self.fail(node, callee, "it is not linear, so class maps would not average to the logits")
        if isinstance(callee, nn.LayerNorm) and vec.is_plain and tuple(callee.normalized_shape) == (vec.channels,):
            self.actions[node] = LayerNormToChannels(node.args[0])
            self.values[node] = follow()
            self.decisions.append(Decision(self.layer(node), "LayerNorm", "channel LayerNorm", (1, 1),
                                           vec.channels, vec.channels))
            return
        softmax_log = _softmax(callee)
        over_classes = softmax_log is not None and _softmax_dim(node, callee) in (1, -1)
        if over_classes and vec.is_plain and len(shape_out or ()) == 2:
            self.actions[node] = SoftmaxOverChannels(node.args[0], softmax_log)
            self.values[node] = follow()
            return
        raise self.fail(node, callee, (
            f"fc2conv does not know how to apply it to the head's vectors (flattened "
            f"{vec.channels}×{vec.kernel[0]}×{vec.kernel[1]} features from '{vec.origin.name}')"))

    def visit_channels_last(self, node: fx.Node, callee: Any) -> None:
        value = next(v for n in node.all_input_nodes if isinstance(v := self.values.get(n), ChannelsLast))
        channels = _shape(node.args[0])[-1] if node.args and isinstance(node.args[0], fx.Node) else None
        if _is_linear(callee) and node.args[0] in self.values:
            op, in_features, out_features = _linear_op(node, callee)
            self.actions[node] = LinearToConv(node.args[0], in_features, (1, 1), None)
            self.values[node] = ChannelsLast(node)
            self.decisions.append(Decision(self.layer(node), op, "1×1 conv", (1, 1), in_features, out_features,
                                           "channels-last Linear"))
        elif isinstance(callee, nn.LayerNorm) and tuple(callee.normalized_shape) == (channels,):
            self.actions[node] = LayerNormToChannels(node.args[0])
            self.values[node] = ChannelsLast(node)
        elif _is(callee, POINTWISE_MODULES, POINTWISE_FUNCTIONS, POINTWISE_METHODS) and len(node.all_input_nodes) == 1:
            self.values[node] = ChannelsLast(node)
        elif _is(callee, (), {torch.permute}, {"permute"}) and _permutation(node) == (0, 3, 1, 2):
            self.actions[node] = Alias(value.source)
        # anything else gets the channels-last tensor back (the rewrite materialises the permute)


def _permutation(node: fx.Node) -> tuple[int, ...] | None:
    dims = node.args[1:] if node.op == "call_method" else node.args[1:2]
    if len(dims) == 1 and isinstance(dims[0], list | tuple):
        dims = dims[0]
    dims = dims or node.kwargs.get("dims", ())
    return tuple(dims) if all(isinstance(d, int) for d in dims) else None


def _softmax(callee: Any) -> bool | None:
    if isinstance(callee, nn.Softmax | nn.LogSoftmax):
        return isinstance(callee, nn.LogSoftmax)
    if isinstance(callee, str):
        return SOFTMAX_METHODS.get(callee)
    try:
        return SOFTMAX_FUNCTIONS.get(callee)
    except TypeError:
        return None


def _softmax_dim(node: fx.Node, callee: Any) -> Any:
    return callee.dim if isinstance(callee, nn.Module) else _arg(node, 1, "dim")


def analyze(gm: fx.GraphModule, input_shape: tuple[int, ...], mode: str = "dense", *,
            channels_last_linears: bool = False) -> Analysis:
    """Values, actions and the plan for converting a traced, shape-propagated model (see `trace`)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    return _Analyzer(gm, tuple(input_shape), mode, channels_last_linears).run()
