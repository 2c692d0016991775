"""The public `convert` and `plan`: trace, analyse, emit the converted graph (`fc2conv.conversion.emit`), then
densify or reduce it as the options say; `ConversionInfo` is what a converted model records of how it was made.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import fx, nn

from ..analysis import (
    Analysis,
    MoveChannelsFirst,
    Plan,
    analyze,
)
from ..errors import reported
from ..layers import SamePad
from ..shapes import spatial_axes
from ..tracing.trace import TraceOptions, trace, traced_with
from .density import densify
from .emit import Emitter
from .options import ConversionOptions

__all__ = ["ConversionInfo", "convert", "convert_with", "plan"]


@dataclass(frozen=True)
class ConversionInfo:
    """What a converted model was made from; kept on it as `converted.fc2conv`."""

    input_shape: tuple[int, ...]
    options: ConversionOptions  # as given, with the modules tracing kept whole
    cut: str | None  # name of the traced node the dense head slides over
    window: tuple[int, ...] | None  # that node's spatial size at the reference input
    global_context: bool
    plan: Plan
    widened: bool = False  # a fixed pool of the original pools the whole map at every size here
    cut_channels_last: bool = False  # the cut is N×(positions)×C: a backbone that works channels-last

    @property
    def mode(self) -> str:
        return self.options.mode

    @property
    def density(self) -> int:
        """Cells per original stride along each axis (`fc2conv.conversion.density`)."""
        return self.options.density

    @property
    def reduce(self) -> str | None:
        """How mode "pool" reduces the dense map; None in the other modes."""
        return self.options.reduce if self.options.mode == "pool" else None

    @property
    def trace_options(self) -> TraceOptions:
        return self.options.trace


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
            stacklevel=4,  # the caller of convert() or convert_with(), past the guard of errors.reported
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
    options = ConversionOptions(mode=mode, channels_last_linears=channels_last_linears,
                                trace=TraceOptions(tuple(leaf_modules), tuple(autowrap_functions), concrete_args))
    shape = _input_shape(input_shape)
    gm = trace(model, shape, options.trace)
    found = analyze(gm, shape, options.cells, channels_last_linears=options.channels_last_linears).plan
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
    options = ConversionOptions(mode, density, reduce, channels_last_linears,
                                TraceOptions(tuple(leaf_modules), tuple(autowrap_functions), concrete_args))
    shape = _input_shape(input_shape)
    return _convert(_prepare(model, inplace), shape, options, inplace)


@reported("converting the model")
def convert_with(model: nn.Module, input_shape: Sequence[int], options: ConversionOptions, *,
                 inplace: bool = False) -> fx.GraphModule:
    """`convert` with its options as one checked object (what `Recipe` and verification pass on whole)."""
    shape = _input_shape(input_shape)
    return _convert(_prepare(model, inplace), shape, options, inplace)


def _convert(model: nn.Module, shape: tuple[int, ...], options: ConversionOptions, inplace: bool) -> fx.GraphModule:
    """`model` (prepared: the caller's own when `inplace`, else a copy) converted at the checked `shape`."""
    gm = trace(model, shape, options.trace)
    traced = traced_with(gm).options  # with what tracing kept whole, for every later trace of this model
    cells, channels_last = options.cells, options.channels_last_linears
    analysis = analyze(gm, shape, cells, channels_last_linears=channels_last)
    full = analysis  # its plan lists what calling modules whole hides: squeeze-excitation pools kept global
    full.plan.notes.extend(traced_with(gm).notes)
    # A backbone that works channels-last is recognised node by node up to its pool: it is traced through.
    untouched = (_untouched_modules(gm, analysis) if options.density == 1 and not _pools_channels_last(analysis)
                 else frozenset())
    if untouched:  # trace again with them whole: every node with an action is still there, so are the actions
        traced = replace(traced, leaf_names=untouched)
        gm = trace(model, shape, traced)
        analysis = analyze(gm, shape, cells, channels_last_linears=channels_last)
    converted = Emitter(gm, analysis, 2 + spatial_axes(shape)).run().eval()
    if options.density != 1:
        converted, rarefied = densify(converted, options.density, shape, traced)
        converted.eval()
        full.plan.notes.append(f"density {options.density}: {len(rarefied)} layers, '{rarefied[0]}' and those after "
                               f"it, run on a grid {options.density} times finer (stride 1, dilation and padding "
                               "scaled)")
    if options.mode == "pool":
        _reduce_output(converted, options.reduce, spatial_axes(shape))
    if inplace:
        model.eval()
    converted.fc2conv = ConversionInfo(
        shape, replace(options, trace=traced), analysis.cut.name if analysis.cut is not None else None,
        analysis.window, full.global_context, full.plan, full.widened, analysis.cut_channels_last,
    )
    return converted


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
