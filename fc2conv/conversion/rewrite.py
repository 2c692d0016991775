"""Build the converted graph from an analysis, and the public `convert` and `plan`.

The rewrite copies the traced graph node by node into a new graph: kept nodes are copied, aliased
nodes take the value of the node they alias, and each replacement action emits the module `maths`
builds for it under the name of the layer it replaces. Then lint, dead-code elimination, recompile.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import singledispatchmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..analysis import (
    Alias,
    Analysis,
    BatchNormToMaps,
    ChannelsLast,
    ConcatOverChannels,
    GlobalPoolKeepDims,
    GlobalToWindowPool,
    LayerNormToChannels,
    LinearToConv,
    MoveChannelsFirst,
    Plan,
    SoftmaxOverChannels,
    analyze,
)
from ..errors import reported
from ..layers import SamePad
from ..runtime.metadata import MODES, REDUCES
from ..shapes import spatial_axes
from ..tracing.trace import TraceOptions, trace, traced_with
from . import maths
from .density import densify

__all__ = ["ConversionInfo", "convert", "plan"]


@dataclass(frozen=True)
class ConversionInfo:
    """What a converted model was made from; kept on it as `converted.fc2conv`."""

    input_shape: tuple[int, ...]
    mode: str
    trace_options: TraceOptions
    cut: str | None  # name of the traced node the dense head slides over
    window: tuple[int, ...] | None  # that node's spatial size at the reference input
    global_context: bool
    plan: Plan
    widened: bool = False  # a fixed pool of the original pools the whole map at every size here
    density: int = 1  # cells per original stride along each axis (fc2conv.conversion.density)
    reduce: str | None = None  # mode "pool": how the dense map is reduced
    cut_channels_last: bool = False  # the cut is N×(positions)×C: a backbone that works channels-last


def _fetch(module: nn.Module, target: str) -> Any:
    for part in target.split("."):
        module = getattr(module, part)
    return module


class _Emitter:
    def __init__(self, gm: fx.GraphModule, analysis: Analysis, rank: int):
        self.gm, self.analysis = gm, analysis
        self.rank = rank  # of the converted maps, N×C×(spatial axes), whatever rank the original's tensor had
        self.graph = fx.Graph()
        self.env: dict[fx.Node, fx.Node] = {}
        self.root: dict[str, Any] = {}
        self.channels_last: dict[fx.Node, fx.Node] = {}

    def value(self, node: fx.Node) -> fx.Node:
        """The converted value of `node` as the original code expects it."""
        if isinstance(self.analysis.values.get(node), ChannelsLast):
            if node not in self.channels_last:
                rank = len(node.meta["tensor_meta"].shape)
                self.channels_last[node] = self.graph.call_method("permute", (self.env[node], 0, *range(2, rank), 1))
            return self.channels_last[node]
        return self.env[node]

    def call(self, name: str, module: nn.Module, source: fx.Node, *, emitted: bool = False) -> fx.Node:
        """Call `module`, registered as `name`, on `source` (a node of the original graph, or of the new one when
        `emitted`)."""
        self.root[name] = module
        return self.graph.call_module(name, (source if emitted else self.env[source],))

    def run(self) -> fx.GraphModule:
        for node in self.gm.graph.nodes:
            action = self.analysis.actions.get(node)
            if node.op == "output":
                result = node.args[0]
                self.graph.output(self.env[result] if isinstance(result, fx.Node) else result)
            elif action is None:
                self.env[node] = self.copy(node)
            else:
                self.env[node] = self.emit(action, node)
        gm = fx.GraphModule(self.root, self.graph, class_name=type(self.gm).__name__)
        gm.graph.lint()
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
        return gm

    def copy(self, node: fx.Node) -> fx.Node:
        if node.op == "call_function" and node.target is getattr and node.args[1:] == ("data",):
            # `x.data` hides x from exporters, which then bake its sizes into the graph; `x.detach()` does not.
            return self.graph.call_method("detach", (self.value(node.args[0]),))
        if node.op in ("call_module", "get_attr"):
            self.root[node.target] = _fetch(self.gm, node.target)
        # A node that stays channels-last computes on the NCHW map; others get the permute they expect.
        stays_channels_last = isinstance(self.analysis.values.get(node), ChannelsLast)
        new = self.graph.node_copy(node, self.env.__getitem__ if stays_channels_last else self.value)
        new.meta = {}
        return new

    @singledispatchmethod
    def emit(self, action: Any, node: fx.Node) -> fx.Node:
        raise TypeError(f"no rewrite for {type(action).__name__}")

    @emit.register
    def _(self, action: Alias, node: fx.Node) -> fx.Node:
        return self.env[action.of]

    @emit.register
    def _(self, action: LinearToConv, node: fx.Node) -> fx.Node:
        if node.op == "call_module":
            linear, name = self.gm.get_submodule(node.target), node.target
            weight, bias = linear.weight, linear.bias
        else:  # F.linear(x, weight, bias) with parameters fetched by get_attr
            weight = _fetch(self.gm, node.args[1].target)
            bias_node = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
            bias = _fetch(self.gm, bias_node.target) if bias_node is not None else None
            name = f"{node.name}_conv"
        conv = maths.linear_to_conv(weight, bias, action.channels, action.kernel, fold_from=action.fold_from)
        return self.call(name, conv, action.input)

    @emit.register
    def _(self, action: BatchNormToMaps, node: fx.Node) -> fx.Node:
        bn = maths.batchnorm_to_maps(self.gm.get_submodule(node.target), action.spatial)
        return self.call(node.target, bn, action.input)

    @emit.register
    def _(self, action: LayerNormToChannels, node: fx.Node) -> fx.Node:
        if node.op == "call_module":
            return self.call(node.target, maths.layernorm_to_channels(self.gm.get_submodule(node.target)),
                             action.input)
        # F.layer_norm(x, (C,), weight, bias, eps) as written, on the channels moved last and back.
        # A permute, not movedim: the grid analysis (fc2conv.analysis.reach) follows permutes, and the TorchScript
        # ONNX exporter writes non-negative axes only when given them.
        rank = self.rank
        last = self.graph.call_method("permute", (self.env[action.input], (0, *range(2, rank), 1)))
        rest = tuple(self.env[a] if isinstance(a, fx.Node) else a for a in node.args[1:])
        kwargs = {k: self.env[v] if isinstance(v, fx.Node) else v for k, v in node.kwargs.items()}
        normed = self.graph.call_function(node.target, (last, *rest), kwargs)
        return self.graph.call_method("permute", (normed, (0, rank - 1, *range(1, rank - 1))))

    @emit.register
    def _(self, action: ConcatOverChannels, node: fx.Node) -> fx.Node:
        return self.graph.call_function(torch.cat, ([self.env[n] for n in action.inputs],), {"dim": 1})

    @emit.register
    def _(self, action: SoftmaxOverChannels, node: fx.Node) -> fx.Node:
        softmax = F.log_softmax if action.log else F.softmax
        return self.graph.call_function(softmax, (self.env[action.input],), {"dim": 1})

    @emit.register
    def _(self, action: GlobalToWindowPool, node: fx.Node) -> fx.Node:
        name = node.target if node.op == "call_module" else f"{node.name}_window"
        if action.channels_last:  # a pool over the positions of an N×(positions)×C map: over N×C×(positions)
            return self.call(name, maths.window_pool(action.kind, action.size), self._channels_first(action.input),
                             emitted=True)
        return self.call(name, maths.window_pool(action.kind, action.size), action.input)

    @emit.register
    def _(self, action: GlobalPoolKeepDims, node: fx.Node) -> fx.Node:
        reduce = torch.mean if action.kind == "avg" else torch.amax
        dims = tuple(range(2, len(action.input.meta["tensor_meta"].shape)))
        source = self._channels_first(action.input) if action.channels_last else self.env[action.input]
        return self.graph.call_function(reduce, (source, dims), {"keepdim": True})

    @emit.register
    def _(self, action: MoveChannelsFirst, node: fx.Node) -> fx.Node:
        return self._channels_first(action.input)

    def _channels_first(self, source: fx.Node) -> fx.Node:
        """The converted N×(positions)×C `source` permuted to N×C×(positions)."""
        rank = len(source.meta["tensor_meta"].shape)
        return self.graph.call_method("permute", (self.env[source], (0, rank - 1, *range(1, rank - 1))))


def _pools_channels_last(analysis: Analysis) -> bool:
    """Whether a pool of the analysis is over the positions of an N×(positions)×C map of the backbone."""
    return any(getattr(action, "channels_last", False) or isinstance(action, MoveChannelsFirst)
               for action in analysis.actions.values())


def _untouched_modules(gm: fx.GraphModule, analysis: Analysis) -> frozenset[str]:
    """Submodules with no node that the analysis acted on or gave a value: the converted model calls them whole.

    fx's generated code reaches every submodule it calls through a chain of `getattr`s, which cost about 10%
    of a MobileNet's eager latency when every layer is called that way.
    """
    touched = set()
    for node in gm.graph.nodes:
        if node in analysis.actions or node in analysis.values or _substituted(gm, node):
            touched.update(path for path, _ in node.meta.get("nn_module_stack", {}).values())
    return frozenset(name for name, _ in gm.named_modules() if name and name not in touched)


def _substituted(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A node tracing replaced by fc2conv's own layer (`fc2conv.tracing.padding`): a module calling it whole would
    lose it."""
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), SamePad)


def _prepare(model: nn.Module, inplace: bool) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if model.training:
        import warnings

        warnings.warn(
            f"{type(model).__name__} is in training mode; fc2conv converts its eval behaviour "
            "(dropout off, batch norm with running statistics)",
            stacklevel=4,  # the caller of convert(), past the guard of errors.reported
        )
    return model if inplace else copy.deepcopy(model)


def _input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not 1 <= len(shape) <= 4 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ValueError(
            f"input_shape must be (C, H, W) for an image model, (C, L) for a signal, (C, D, H, W) for a volume or "
            f"video clip, or (D,) for an MLP, without the batch dimension, in positive integers; got {input_shape!r}"
        )
    return shape


@reported("planning the conversion")
def plan(
    model: nn.Module,
    input_shape: Sequence[int] = (3, 224, 224),
    *,
    mode: str = "dense",
    channels_last_linears: bool = False,
    leaf_modules: Sequence[type[nn.Module]] = (),
    autowrap_functions: Sequence[Any] = (),
    concrete_args: dict[str, Any] | None = None,
) -> Plan:
    """What `convert` would do, without doing it: one `Decision` per Linear, pool and norm it touches.

    Every Linear of the traced model appears, converted or with the reason it is left alone. `str(plan)`
    prints a table. Raises `ConversionError` exactly when `convert` would.
    """
    options = TraceOptions(tuple(leaf_modules), tuple(autowrap_functions), concrete_args)
    gm = trace(model, _input_shape(input_shape), options)
    found = analyze(gm, _input_shape(input_shape), mode, channels_last_linears=channels_last_linears).plan
    found.notes.extend(traced_with(gm).notes)
    return found


@reported("converting the model")
def convert(
    model: nn.Module,
    input_shape: Sequence[int] = (3, 224, 224),
    *,
    mode: str = "dense",
    density: int = 1,
    reduce: str = "avg",
    inplace: bool = False,
    channels_last_linears: bool = False,
    leaf_modules: Sequence[type[nn.Module]] = (),
    autowrap_functions: Sequence[Any] = (),
    concrete_args: dict[str, Any] | None = None,
) -> fx.GraphModule:
    """The fully convolutional equivalent of `model`, an `fx.GraphModule` in eval mode.

    `input_shape` is the reference input without the batch dimension: (C, H, W) for images, (C, L) for
    signals, (C, D, H, W) for volumes and video clips, or (D,) for an MLP, whose converted form takes N×D×H×W
    maps. The result returns an N×K×(spatial) map, with as many spatial axes as the input (H'×W' below):

    - ``mode="dense"``: the OverFeat/FCN network. At `input_shape`, H' = W' = 1 and ``out.flatten(1)``
      equals the original logits; on a larger input, cell (i, j) is the original head applied to the
      reference-size window of the features at (i, j) (see `geometry` for its place in pixels).
    - ``mode="global"``: pools are kept, so ``out.flatten(1)`` equals the original at every input size; a
      pool whose fixed kernel covered the whole map at the reference size pools the whole map at every size.
    - ``mode="cam"``: for heads linear from a global average pool to the output, class activation maps at
      feature resolution whose spatial mean equals the original logits.
    - ``mode="pool"``: test-time pooling, the dense map reduced over its cells by `reduce` ("avg", "max" or
      "avgmax", the mean of both): one N×K×1×…×1 prediction per input from every window it contains; at
      `input_shape` the original logits.

    ``density=r`` (dense mode) scores windows r times closer along every axis in one pass, by filter
    rarefaction (`fc2conv.conversion.density`): the geometry's stride becomes S / r with the same window. r must be a
    product of the network's last strides; a `ConversionError` lists the allowed values.

    Every Linear becomes a convolution with as many spatial axes as the input (`LinearConv1d`, `LinearConv2d`
    or `LinearConv3d`: an `nn.Conv1d/2d/3d` that runs at GEMM speed in eager mode). With
    ``inplace=False`` the caller's model is deep-copied first and never changed; with ``inplace=True`` the
    result shares `model`'s modules and parameters (conv weights are views of the Linear weights) and
    `model` is left in eval mode. Raises `ConversionError`, naming the node and the reason, for models it
    cannot make convolutional, `ValueError` for bad arguments.
    """
    shape = _input_shape(input_shape)
    _check_mode(mode, density, reduce)
    cells = "dense" if mode == "pool" else mode  # pooling reduces the dense map
    options = TraceOptions(tuple(leaf_modules), tuple(autowrap_functions), concrete_args)
    model = _prepare(model, inplace)
    gm = trace(model, shape, options)
    options = traced_with(gm).options  # with what tracing kept whole, for every later trace of this model
    analysis = analyze(gm, shape, cells, channels_last_linears=channels_last_linears)
    full = analysis  # its plan lists what calling modules whole hides: squeeze-excitation pools kept global
    full.plan.notes.extend(traced_with(gm).notes)
    # A backbone that works channels-last is recognised node by node up to its pool: it is traced through.
    untouched = _untouched_modules(gm, analysis) if density == 1 and not _pools_channels_last(analysis) else frozenset()
    if untouched:  # trace again with them whole: every node with an action is still there, so are the actions
        options = replace(options, leaf_names=untouched)
        gm = trace(model, shape, options)
        analysis = analyze(gm, shape, cells, channels_last_linears=channels_last_linears)
    converted = _Emitter(gm, analysis, 2 + spatial_axes(shape)).run().eval()
    if density != 1:
        converted, rarefied = densify(converted, density, shape, options)
        converted.eval()
        full.plan.notes.append(f"density {density}: {len(rarefied)} layers, '{rarefied[0]}' and those after it, "
                               f"run on a grid {density} times finer (stride 1, dilation and padding scaled)")
    if mode == "pool":
        _reduce_output(converted, reduce, spatial_axes(shape))
    if inplace:
        model.eval()
    converted.fc2conv = ConversionInfo(
        shape, mode, options, analysis.cut.name if analysis.cut is not None else None, analysis.window,
        full.global_context, full.plan, full.widened, density, reduce if mode == "pool" else None,
        analysis.cut_channels_last,
    )
    return converted


def _check_mode(mode: str, density: int, reduce: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if not isinstance(density, int) or isinstance(density, bool) or density < 1:
        raise ValueError(f"density must be a positive integer, not {density!r}")
    if density != 1 and mode != "dense":
        raise ValueError(f"density applies to the dense map (mode='dense'), not mode={mode!r}")
    if reduce not in REDUCES:
        raise ValueError(f"reduce must be one of {', '.join(REDUCES)}, not {reduce!r}")


def _reduce_output(gm: fx.GraphModule, reduce: str, spatial: int) -> None:
    """Test-time pooling: the output map reduced over all its `spatial` axes, kept as a 1×…×1 map."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    scores = output.args[0]
    dims = tuple(range(2, 2 + spatial))
    with gm.graph.inserting_before(output):
        mean = gm.graph.call_function(torch.mean, (scores, dims), {"keepdim": True})
        peak = gm.graph.call_function(torch.amax, (scores, dims), {"keepdim": True})
        result = {"avg": mean, "max": peak}.get(reduce) or gm.graph.call_function(
            operator.mul, (gm.graph.call_function(operator.add, (mean, peak)), 0.5))
    output.args = (result,)
    gm.graph.eliminate_dead_code()
    gm.recompile()
