"""Decide, node by node, how a traced classifier becomes fully convolutional.

One pass over the graph in order gives every node a *value* and an *action*.

Values say what a node's output is in the converted graph:
- kept (no entry): the node computes what it computed before, on maps that may now be larger;
- `Vector`: the original output is a vector per example that equals `source.flatten(1)` at the reference
  size, where `source` is an N×C×(spatial) map in the converted graph, with 1, 2 or 3 spatial axes. A flatten
  of C×h×w features starts one (kernel h×w), a Linear on it gives another (kernel 1×1): this is how the head
  is carried as maps;
- `ChannelsLast`: the original output is `source` with its channels moved last (the inside of a ConvNeXt
  block).

Global pools that are not the head (squeeze-excitation and every other spelling of global context: ECA,
split attention, CBAM) are kept as they are, and so is everything computed from them alone until it meets
the features again: a Linear there is left alone.

Actions say what the rewrite emits: a copy of the node (the default), an alias of another node's
value (a flatten or an identity pool disappears), or one of the replacements below. Every Linear,
and every pool the mode touches, also gets a `Decision`, the printable row of `plan()`.
"""

from __future__ import annotations

import math
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
    kernel: tuple[int, ...]
    origin: fx.Node  # where the vector was made; vectors of two origins never mix
    fold_from: tuple[int, ...] | None = None  # an adaptive average pool from this size is still to fold
    mean: bool = False  # cam: the original vector is the spatial mean of `source`

    @property
    def is_plain(self) -> bool:
        return all(k == 1 for k in self.kernel) and self.fold_from is None

    def describe(self) -> str:
        return f"flattened {self.channels}×{_times(self.kernel)} features from '{self.origin.name}'"


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
    kernel: tuple[int, ...]
    fold_from: tuple[int, ...] | None


@dataclass(frozen=True)
class BatchNormToMaps:
    input: fx.Node
    spatial: int


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
    size: tuple[int, ...]


@dataclass(frozen=True)
class GlobalPoolKeepDims:
    input: fx.Node
    kind: str


@dataclass(frozen=True)
class ConcatOverChannels:
    inputs: tuple[fx.Node, ...]


Action = Alias | LinearToConv | BatchNormToMaps | LayerNormToChannels | SoftmaxOverChannels | GlobalToWindowPool
Action = Action | GlobalPoolKeepDims | ConcatOverChannels

# ------------------------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Decision:
    """One row of a plan: what happens to a layer, and why."""

    layer: str
    op: str
    rule: str
    kernel: tuple[int, ...] | None = None
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
                d.layer, d.op, d.rule, "" if d.kernel is None else _times(d.kernel),
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
    window: tuple[int, ...] | None  # its size at the reference input
    global_context: bool  # dense: some global pool feeds the backbone, so cells see image-level context
    widened: bool  # global/cam: a fixed pool that covered the map at the reference size now pools any size


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
ADAPTIVE_POOLS = {
    nn.AdaptiveAvgPool1d: "avg", nn.AdaptiveAvgPool2d: "avg", nn.AdaptiveAvgPool3d: "avg",
    nn.AdaptiveMaxPool1d: "max", nn.AdaptiveMaxPool2d: "max", nn.AdaptiveMaxPool3d: "max",
    F.adaptive_avg_pool1d: "avg", F.adaptive_avg_pool2d: "avg", F.adaptive_avg_pool3d: "avg",
    F.adaptive_max_pool1d: "max", F.adaptive_max_pool2d: "max", F.adaptive_max_pool3d: "max",
}
# Fixed-window pools: global when their kernel is read from the tensor, or covers the map at the reference size.
WINDOW_POOLS = {
    nn.AvgPool1d: "avg", nn.AvgPool2d: "avg", nn.AvgPool3d: "avg", nn.MaxPool1d: "max", nn.MaxPool2d: "max",
    nn.MaxPool3d: "max", F.avg_pool1d: "avg", F.avg_pool2d: "avg", F.avg_pool3d: "avg", F.max_pool1d: "max",
    F.max_pool2d: "max", F.max_pool3d: "max",
}
REDUCTIONS = {"mean": "avg", torch.mean: "avg", "amax": "max", torch.amax: "max"}
PERMUTES = {torch.permute, torch.transpose, "permute", "transpose"}


def _times(sizes: tuple[int, ...]) -> str:
    return "×".join(map(str, sizes))


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
    size_in: tuple[int, ...]
    size_out: tuple[int, ...]
    keepdim: bool
    fixed: bool = False  # a fixed kernel that covers the whole map only at the reference size

    @property
    def is_global(self) -> bool:
        return all(s == 1 for s in self.size_out)


def _kind(table: dict, callee: Any) -> str | None:
    try:
        return table.get(type(callee) if isinstance(callee, nn.Module) else callee)
    except TypeError:  # unhashable callee
        return None


def _match_pool(node: fx.Node, callee: Any) -> _Pool | None:
    """Adaptive pools, spatial mean/amax reductions, and fixed-window pools that cover the whole map (a kernel
    read from the tensor, or one the size of the map at the reference input) of an N×C×(spatial) tensor."""
    source = node.args[0] if node.args else None
    shape_in, shape_out = _shape(source), _shape(node)
    if shape_in is None or shape_out is None or len(shape_in) < 3:
        return None
    spatial = shape_in[2:]
    if (kind := _kind(ADAPTIVE_POOLS, callee)) is not None:
        if getattr(callee, "return_indices", False) or node.kwargs.get("return_indices", False):
            return None
        return _Pool(kind, spatial, shape_out[2:], keepdim=True)
    if (kind := _kind(WINDOW_POOLS, callee)) is not None:
        covers = _covers_whole_map(node, callee, spatial)
        if covers is None or len(shape_out) != len(shape_in) or any(s != 1 for s in shape_out[2:]):
            return None
        return _Pool(kind, spatial, shape_out[2:], keepdim=True, fixed=covers == "fixed")
    if (kind := _kind(REDUCTIONS, callee)) is None:
        return None
    dims = _arg(node, 1, "dim")
    dims = (dims,) if isinstance(dims, int) else dims
    if not isinstance(dims, list | tuple) or {d % len(shape_in) for d in dims} != set(range(2, len(shape_in))):
        return None
    keepdim = bool(_arg(node, 2, "keepdim", False))
    return _Pool(kind, spatial, (1,) * len(spatial), keepdim)


def _covers_whole_map(node: fx.Node, callee: Any, spatial: tuple[int, ...]) -> str | None:
    """"dynamic" when a pool's kernel is read from the tensor (`F.avg_pool2d(x, x.size()[2:])`), "fixed" when it
    is the map's size at the reference input without padding (`nn.AvgPool2d(7)` on a 7×7 map), else None."""
    if isinstance(callee, nn.Module):
        kernel, padding = callee.kernel_size, callee.padding
    else:
        kernel, padding = _arg(node, 1, "kernel_size"), _arg(node, 3, "padding", 0)
    if isinstance(kernel, fx.Node) or (isinstance(kernel, list | tuple) and any(isinstance(k, fx.Node)
                                                                                 for k in kernel)):
        return "dynamic"
    kernel = (kernel,) * len(spatial) if isinstance(kernel, int) else tuple(kernel)
    padding = (padding,) * len(spatial) if isinstance(padding, int) else tuple(padding)
    return "fixed" if kernel == spatial and not any(padding) else None


def _is_reshape(callee: Any) -> bool:
    return _is(callee, (nn.Flatten,), RESHAPE_FUNCTIONS, RESHAPE_METHODS)


def _is_flatten(node: fx.Node, callee: Any) -> bool:
    """A reshape of N×C×(spatial) features into N×(C·spatial), however it is spelled; after a global pool also
    the first of a chain of squeezes (N×C×1×1 → N×C×1)."""
    if not _is_reshape(callee):
        return False
    shape_in, shape_out = _shape(node.args[0]), _shape(node)
    if shape_in is None or shape_out is None or len(shape_in) < 3 or len(shape_out) >= len(shape_in):
        return False
    batch, channels, *spatial = shape_in
    if shape_out == (batch, channels * math.prod(spatial)):
        return True
    return set(spatial) == {1} and shape_out[:2] == (batch, channels) and set(shape_out[2:]) <= {1}


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


def _feeds_only_head(pools: list[fx.Node], graph: fx.Graph, variable: set[fx.Node], pooled: set[fx.Node]) -> bool:
    """True unless something downstream of `pools` (global pools of one map) mixes them with input-dependent
    values that were not pooled (`pooled`: computed from global pools alone).

    A squeeze-excitation pool rescales the features it was computed from: it is global context, not the
    head, and sliding it would change what every cell of the backbone computes. Pools of the same map may
    mix with each other (an average and a max pool concatenated): as windows they slide on the same grid.
    Pools of different maps meeting are still the head, which then refuses to mix them.
    """
    downstream = set(pools)
    for node in graph.nodes:
        inputs = node.all_input_nodes
        if node in downstream or not any(n in downstream for n in inputs):
            continue
        downstream.add(node)
        for n in inputs:
            if (n not in downstream and n in variable and n not in pooled and _shape(n) is not None
                    and node.op != "output"):
                return False
    return True


def _pooled_nodes(graph: fx.Graph, variable: set[fx.Node], is_pool: Any) -> set[fx.Node]:
    """Global pools, and the nodes whose input-dependent inputs all come from them."""
    pooled: set[fx.Node] = set()
    for node in graph.nodes:
        inputs = [n for n in node.all_input_nodes if n in variable]
        if is_pool(node) or (inputs and all(n in pooled for n in inputs)):
            pooled.add(node)
    return pooled


# ------------------------------------------------------------------------------------------- analysis


class _Analyzer:
    def __init__(self, gm: fx.GraphModule, input_shape: tuple[int, ...], mode: str, channels_last_linears: bool):
        self.gm, self.mode, self.channels_last_linears = gm, mode, channels_last_linears
        self.input_shape = input_shape
        self.modules = dict(gm.named_modules(remove_duplicate=False))  # a module shared under two names
        self.variable = _variable_nodes(gm.graph)
        self.pooled = _pooled_nodes(gm.graph, self.variable, self.is_global_pool)
        self.values: dict[fx.Node, Vector | ChannelsLast] = {}
        self.actions: dict[fx.Node, Action] = {}
        self.decisions: list[Decision] = []
        self.cuts: dict[fx.Node, tuple[int, ...]] = {}
        self.head: set[fx.Node] = set()  # nodes downstream of where the head starts
        self.pool_origins: dict[fx.Node, fx.Node] = {}  # global pool → the origin its vectors get
        self.context: dict[fx.Node, fx.Node] = {}  # node computed from a global-context pool alone → that pool
        self.global_context = False
        self.widened = False

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
        inside = features in self.head
        self.head.add(node)
        if inside:
            return
        features = self.resolve(features)
        shape = _shape(features)
        self.cuts[features] = (1, 1) if shape is None or len(shape) < 3 else shape[2:]

    def context_pool(self, node: fx.Node) -> fx.Node | None:
        """The global-context pool `node` is computed from, when every input-dependent input comes from it."""
        inputs = [n for n in node.all_input_nodes if n in self.variable]
        pools = {self.context.get(n) for n in inputs}
        return next(iter(pools)) if inputs and len(pools) == 1 and None not in pools else None

    # -- the pass
    def run(self) -> Analysis:
        for node in self.gm.graph.nodes:
            callee = _callee(node, self.modules)
            inputs = [self.values.get(n) for n in node.all_input_nodes]
            try:
                if node.op == "placeholder":
                    self.visit_placeholder(node)
                elif node.op == "output":
                    self.visit_output(node)
                elif (pool := self.context_pool(node)) is not None:
                    self.visit_context(node, callee, pool)
                elif any(isinstance(v, Vector) for v in inputs):
                    self.visit_vector(node, callee)
                elif any(isinstance(v, ChannelsLast) for v in inputs):
                    self.visit_channels_last(node, callee)
                else:
                    self.visit_kept(node, callee)
            except ConversionError:
                raise
            except Exception as e:  # a pattern fc2conv did not foresee: name the node, never a raw crash
                raise self.fail(node, callee, f"fc2conv failed to analyse it ({type(e).__name__}: {e}); please "
                                              "report this model") from e
            if any(n in self.head for n in node.all_input_nodes):
                self.head.add(node)
        notes = []
        if not any(d.op.startswith(("Linear", "F.linear")) and d.rule != "left alone" for d in self.decisions):
            notes.append("No Linear layer of the head to convert: the model is already convolutional.")
        if self.global_context and self.mode != "global":
            notes.append("Global pools that feed the backbone stay global: dense cells see image-level context.")
        (cut, window), = self.cuts.items() if len(self.cuts) == 1 else ((None, None),)
        return Analysis(self.mode, self.values, self.actions, Plan(self.decisions, notes), cut, window,
                        self.global_context, self.widened)

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
        if isinstance(value, ChannelsLast) and result in self.head and self.mode != "cam":
            return  # scores over the last dimension (N×1×K): the converted map has them first, N×K×L
        if self.mode == "cam" and isinstance(value, Vector):
            raise ConversionError(
                f"cam mode: the output '{result.name}' is not computed linearly from a global average pool "
                f"(the head starts at '{value.origin.name}'); use mode='dense' or mode='global'"
            )
        if value is None and shape is not None and len(shape) == len(self.input_shape) + 1 >= 3:
            return  # already a map of scores, N×K×(the input's spatial axes)
        what = value.describe() if isinstance(value, Vector) else shape
        raise ConversionError(
            f"the model's output '{result.name}' is {what}, not a vector of class scores per example "
            "(N×K) computed from conv features; fc2conv cannot give it as a map"
        )

    def visit_context(self, node: fx.Node, callee: Any, pool: fx.Node) -> None:
        """Squeeze-excitation and its kin: computed from a global-context pool alone, kept as it is."""
        self.context[node] = pool
        if _is_linear(callee):
            self.decisions.append(Decision(self.layer(node), _linear_op(node, callee)[0], "left alone", reason=(
                f"global context from '{pool.name}' (squeeze-excitation), not the head")))

    def visit_kept(self, node: fx.Node, callee: Any) -> None:
        pool = _match_pool(node, callee)
        if pool is not None:
            self.visit_pool(node, callee, pool)
        elif (_is_flatten(node, callee) and node.args[0] in self.variable
              and len(_shape(node.args[0])) == len(self.input_shape) + 1):  # a map like the input, not tokens
            features = node.args[0]
            _, channels, *spatial = _shape(features)
            self.actions[node] = Alias(features)
            self.values[node] = Vector(features, channels, tuple(spatial),
                                       origin=self.pool_origins.get(features, node))
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
                "transformers, whose attention mixes all positions) have no spatial map to slide over; fc2conv "
                "converts heads on convolutional feature maps"))
        elif (_is(callee, (), PERMUTES, PERMUTES) and (self.channels_last_linears or node.args[0] in self.head)
              and len(_shape(node.args[0]) or ()) >= 3
              and _permutation(node) == _channels_last(len(_shape(node.args[0])))):
            # Channels moved last, for Linears over them: ConvNeXt's blocks (on request), or a head that
            # permutes the pooled map (N×C×1 → N×1×C) before its Linear.
            self.actions[node] = Alias(node.args[0])
            self.values[node] = ChannelsLast(node.args[0])

    def is_global_pool(self, node: fx.Node) -> bool:
        pool = _match_pool(node, _callee(node, self.modules)) if node.op in ("call_module", "call_function",
                                                                             "call_method") else None
        return pool is not None and pool.is_global

    def global_pools_of(self, features: fx.Node) -> list[fx.Node]:
        """Every global pool of `features`, in graph order."""
        return [n for n in features.users
                if (pool := _match_pool(n, _callee(n, self.modules))) is not None and pool.is_global
                and n.args[0] is features]

    def pooled_again(self, node: fx.Node) -> bool:
        """Whether a global pool other than a fixed window is computed from `node`'s output further on."""
        seen, todo = set(), list(node.users)
        while todo:
            user = todo.pop()
            if user in seen:
                continue
            seen.add(user)
            pool = _match_pool(user, _callee(user, self.modules)) if user.op != "output" else None
            if pool is not None and pool.is_global and not pool.fixed:
                return True
            todo.extend(user.users)
        return False

    def visit_pool(self, node: fx.Node, callee: Any, pool: _Pool) -> None:
        if pool.fixed and self.pooled_again(node):
            return  # a window that happens to cover the map: the model's global pool comes later
        features = node.args[0]
        channels = _shape(features)[1]
        siblings = self.global_pools_of(features) if pool.is_global else [node]
        head = _feeds_only_head(siblings, self.gm.graph, self.variable, self.pooled)
        origin = self.pool_origins[node] = siblings[0]  # vectors pooled from one map may mix: one origin
        op = _describe(node, callee).split(" ", 1)[1].strip("()")
        ones = (1,) * len(pool.size_in)
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
                record("folded", f"averages {_times(pool.size_in)} to {_times(pool.size_out)}; folded into the "
                                 "next conv")
            else:
                raise self.fail(node, callee, (
                    f"an adaptive max pool from {_times(pool.size_in)} to {_times(pool.size_out)} is not a sliding "
                    f"window; use mode='global', or a reference size where the map is already "
                    f"{_times(pool.size_out)}"))
            return
        if not head:
            self.context[node] = node
            self.global_context = True
            record("kept global", "global context: its result rescales the features elsewhere")
            if pool.fixed:  # its kernel covered the map at the reference size: global at every size, as meant
                self.actions[node] = GlobalPoolKeepDims(features, pool.kind)
            return
        fixed_note = (" (its fixed kernel covered the whole map at the reference size; the converted model "
                      "pools the whole map at every size, where the original fails)") if pool.fixed else ""
        if self.mode == "dense" and pool.fixed:
            return  # a fixed window slides with its own stride, as in the original: kept as it is
        self.widened = pool.fixed
        if self.mode == "global":
            self.start_head(node, features)  # the head is what follows: a Linear on permuted maps converts
            record("kept global", "mode='global': the output stays one cell for every input size" + fixed_note)
        elif self.mode == "dense":
            self.start_head(node, features)
            self.actions[node] = GlobalToWindowPool(features, pool.kind, pool.size_in)
            record(f"window {pool.kind} pool", "stride 1: slides over larger inputs")
            if not pool.keepdim:
                self.values[node] = Vector(node, channels, ones, origin=origin)
            return
        elif self.mode == "cam":
            if pool.kind != "avg":
                raise self.fail(node, callee, "class activation maps need a global *average* pool")
            self.start_head(node, features)
            self.actions[node] = Alias(features)
            self.values[node] = Vector(features, channels, ones, origin=origin, mean=True)
            record("removed", "cam: the head runs at every location before averaging" + fixed_note)
            return
        if not pool.keepdim or pool.fixed:  # one cell at every size; vectors carried as 1×1 maps
            self.actions[node] = GlobalPoolKeepDims(features, pool.kind)
        if not pool.keepdim:
            self.values[node] = Vector(node, channels, ones, origin=origin)

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
            rule = "1×1 conv" if all(k == 1 for k in kernel) else "global conv"
            if vec.fold_from:
                rule += " (pool folded)"
            self.actions[node] = LinearToConv(node.args[0], vec.channels, vec.kernel, vec.fold_from)
            self.values[node] = Vector(node, out_features, (1,) * len(kernel), origin=vec.origin, mean=vec.mean)
            self.decisions.append(Decision(self.layer(node), op, rule, kernel, vec.channels, out_features))
            return
        if _is_reshape(callee) and shape_out is not None and node.args[0] in self.values:
            size = vec.channels * math.prod(vec.kernel)
            if vec.is_plain and not vec.mean and shape_out[1:] == (vec.channels, *vec.kernel):
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
            self.values[node] = Vector(node, sum(self.values[n].channels for n in parts), vec.kernel,
                                       origin=vec.origin, mean=vec.mean)
            return
        if isinstance(callee, nn.BatchNorm1d) and vec.is_plain and len(_shape(node.args[0])) == 2:
            self.actions[node] = BatchNormToMaps(node.args[0], len(vec.kernel))
            self.values[node] = follow()
            self.decisions.append(Decision(self.layer(node), "BatchNorm1d", f"BatchNorm{len(vec.kernel)}d",
                                           vec.kernel, vec.channels, vec.channels, "same statistics"))
            return
        if vec.mean:
            raise self.fail(node, callee, "it is not linear, so class maps would not average to the logits")
        if isinstance(callee, nn.LayerNorm) and vec.is_plain and tuple(callee.normalized_shape) == (vec.channels,):
            self.actions[node] = LayerNormToChannels(node.args[0])
            self.values[node] = follow()
            self.decisions.append(Decision(self.layer(node), "LayerNorm", "channel LayerNorm", vec.kernel,
                                           vec.channels, vec.channels))
            return
        softmax_log = _softmax(callee)
        over_classes = softmax_log is not None and _softmax_dim(node, callee) in (1, -1)
        if over_classes and vec.is_plain and len(shape_out or ()) == 2:
            self.actions[node] = SoftmaxOverChannels(node.args[0], softmax_log)
            self.values[node] = follow()
            return
        raise self.fail(node, callee, f"fc2conv does not know how to apply it to the head's vectors ({vec.describe()})")

    def visit_channels_last(self, node: fx.Node, callee: Any) -> None:
        value = next(v for n in node.all_input_nodes if isinstance(v := self.values.get(n), ChannelsLast))
        channels = _shape(node.args[0])[-1] if node.args and isinstance(node.args[0], fx.Node) else None
        if _is_linear(callee) and node.args[0] in self.values:
            op, in_features, out_features = _linear_op(node, callee)
            ones = (1,) * (len(_shape(node.args[0])) - 2)
            self.actions[node] = LinearToConv(node.args[0], in_features, ones, None)
            self.values[node] = ChannelsLast(node)
            self.decisions.append(Decision(self.layer(node), op, "1×1 conv", ones, in_features, out_features,
                                           "channels-last Linear"))
        elif isinstance(callee, nn.LayerNorm) and tuple(callee.normalized_shape) == (channels,):
            self.actions[node] = LayerNormToChannels(node.args[0])
            self.values[node] = ChannelsLast(node)
        elif _is(callee, POINTWISE_MODULES, POINTWISE_FUNCTIONS, POINTWISE_METHODS) and len(node.all_input_nodes) == 1:
            self.values[node] = ChannelsLast(node)
        elif (log := _softmax(callee)) is not None and _softmax_dim(node, callee) in (-1, len(_shape(node)) - 1):
            self.actions[node] = SoftmaxOverChannels(node.args[0], log)  # over the classes, which are now dim 1
            self.values[node] = ChannelsLast(node)
        elif _is(callee, (), PERMUTES, PERMUTES) and _permutation(node) == _channels_first(
                len(_shape(node.args[0]) or ())):
            self.actions[node] = Alias(value.source)
        # anything else gets the channels-last tensor back (the rewrite materialises the permute)


def _channels_last(rank: int) -> tuple[int, ...]:
    """The permutation that moves the channels of an N×C×(spatial) tensor last (ConvNeXt's blocks)."""
    return (0, *range(2, rank), 1)


def _channels_first(rank: int) -> tuple[int, ...]:
    """Its inverse: channels back after the batch."""
    return (0, rank - 1, *range(1, rank - 1))


def _permutation(node: fx.Node) -> tuple[int, ...] | None:
    """The permutation of a permute node, or of a transpose node (two dims swapped)."""
    rank = len(_shape(node) or ())
    if node.target in ("transpose", torch.transpose):
        a, b = _arg(node, 1, "dim0"), _arg(node, 2, "dim1")
        if not (isinstance(a, int) and isinstance(b, int) and rank):
            return None
        order = list(range(rank))
        order[a % rank], order[b % rank] = order[b % rank], order[a % rank]
        return tuple(order)
    dims = node.args[1:] if node.op == "call_method" else node.args[1:2]
    if len(dims) == 1 and isinstance(dims[0], list | tuple):
        dims = dims[0]
    dims = dims or node.kwargs.get("dims", ())
    if not all(isinstance(d, int) for d in dims):
        return None
    return tuple(d % rank for d in dims) if rank else tuple(dims)


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
