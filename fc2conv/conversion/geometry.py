"""Where each cell of a converted model's output map comes from in the input, along every spatial axis.

In dense mode cell i (one index per spatial axis) is the original's head applied to the reference-size window,
whose first corner is i·stride, of the original's features of the whole input. `stride` is measured, not assumed
(`fc2conv.conversion.stride`): the model is run on meta tensors (shapes only, no arithmetic) at other input sizes,
and the map must gain one cell every stride. A model whose cells are not windows on such a grid (it resizes its
map) is refused, never given a stride of 0; one that runs only at some sizes (it partitions its map into fixed
windows) gets them in `sizes`.

The receptive field is derived from the graph (`fc2conv.analysis.reach`): how far beyond its window the input still
changes a cell, before and after it along each axis. Padding makes it larger than the window: a padded
layer's border cells see zeros where a larger input has pixels. Tiles read with that margin around the cells
they own stitch into exactly the one-pass map; `Geometry.influence` is a cell's window with that margin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from ..analysis.reach import Everywhere, Reach, Unknown, Value, reach_of
from ..errors import ConversionError, reported
from ..metadata import ONE_CELL
from ..shapes import Sizes, influence_box, map_size, size_refusal, window_box
from ..tracing.trace import TraceOptions, trace
from .stride import measure

__all__ = ["Geometry", "geometry"]

_GLOBAL = " (mode='global' keeps the model's own function)"


@dataclass(frozen=True)
class Geometry:
    """Cell i covers input positions i·stride … i·stride + window − 1 along each spatial axis: its window (`box`),
    the input the cell stands for. `receptive_field` holds one (before, after) pair per axis: how far beyond its
    window the input still changes a cell (`influence` gives that box); None when a cell sees the whole input or
    fc2conv cannot follow an op.

    What `exact` promises. True: every cell is the original's head on the reference-size window of the original's
    features computed on the whole input, and depends on nothing outside its `influence` box. It is the original
    model run on the window's crop alone only when the receptive field is zero on every side (no padding): with
    padding, the pixels around the window, up to the influence box, change the cell (the crop would see the
    padding's zeros there). False: something inside the backbone sees the whole input (global pools of
    squeeze-excitation, norms over the map, attention), so every pixel changes every cell; None: fc2conv cannot
    tell (an op it cannot follow). `context` then names the layer.

    `sizes`: None when the model runs at every input size from its window up; else one entry per axis, None or the
    `fc2conv.shapes.Sizes` it runs at there (a window-partition model: multiples of its window). `refusal` says why
    an input size is not one of them.
    """

    stride: tuple[int, ...]
    window: tuple[int, ...]
    exact: bool | None = True
    receptive_field: tuple[tuple[int, int], ...] | None = None
    context: str = ""
    sizes: tuple[Sizes | None, ...] | None = None

    def refusal(self, size: tuple[int, ...]) -> str | None:
        """Why the model cannot take an input of spatial `size`, naming the sizes it takes; None when it can."""
        return size_refusal(size, self.sizes, self.window)

    def taken(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """The smallest input size at least `size` along every axis that the model takes (`size` itself when it
        runs at every size)."""
        if self.sizes is None:
            return tuple(size)
        return tuple(n if s is None else s.at_least(n) for s, n in zip(self.sizes, size, strict=True))

    def box(self, *cell: int) -> tuple[int, ...]:
        """The window of `cell` (one index per axis), the input the cell stands for: its first positions, then its
        ends (exclusive); for a 2-D map (top, left, bottom, right). Not every input it depends on: see `influence`."""
        return window_box(cell, self.stride, self.window)

    def influence(self, *cell: int, size: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """The box of input positions that can change `cell`, laid out as `box`'s: the window widened by the
        receptive field (padding reaches beyond the window). Unclipped, it may start below 0 or end past the input;
        given the input's spatial `size`, it is clipped to the input. When `exact` is not True, or there is no
        receptive field, any pixel may change any cell: the box is the whole input, which needs `size`."""
        field = self.receptive_field if self.exact else None
        if len(cell) != len(self.stride):
            raise ValueError(f"a cell has {len(self.stride)} indices here, got {cell}")
        if field is None and size is None:
            raise ValueError(f"any input position may change a cell here ({self.context or 'no receptive field'}): "
                             "give the input's size for the box of the whole input")
        return influence_box(cell, self.stride, self.window, field, size)

    def to_dict(self) -> dict:
        return asdict(self)


def _locality(converted: nn.Module, options: TraceOptions, shape: tuple[int, ...]) -> Value:
    """Where the output of `converted`, traced through, comes from in its input (`fc2conv.analysis.reach`)."""
    try:
        gm = trace(converted, shape, TraceOptions(options.leaf_modules, options.autowrap_functions))
    except ConversionError as e:
        return Unknown("the converted model", f"fc2conv could not trace it to follow its receptive field ({e})")
    return reach_of(gm, len(shape) - 1)[next(n for n in gm.graph.nodes if n.op == "output")]


def _receptive_field(value: Value, stride: tuple[int, ...], window: tuple[int, ...]
                     ) -> tuple[tuple[tuple[int, int], ...] | None, bool | None, str]:
    """(receptive field, exact, context) of cells on `stride` with `window`, from the output's `value`."""
    if isinstance(value, Everywhere):
        return None, False, f"'{value.node}' makes every cell see the whole input: {value.why}"
    if isinstance(value, Unknown):
        return None, None, f"no receptive field: '{value.node}': {value.why}"
    if not isinstance(value, Reach) or value.stride != stride:
        return None, None, "no receptive field: the graph's stride differs from the measured one"
    margins = tuple((max(0, -lo), max(0, hi - (w - 1))) for lo, hi, w in zip(value.lo, value.hi, window, strict=True))
    return margins, True, ""


@reported("measuring the geometry")
def geometry(converted: nn.Module) -> Geometry:
    """The stride, window and receptive field, in input positions, of a model made by `fc2conv.convert` in dense
    or cam mode.

    Dense: the window is the reference input size. Cam: cells are feature locations and the window is one
    stride (the footprint of a cell). Global mode has one cell for the whole input and no geometry.
    `ConversionError` saying why for a model whose cells are not windows on a grid, or whose stride cannot be
    measured: a geometry is never a guess.
    """
    info = getattr(converted, "fc2conv", None)
    if info is None:
        raise ValueError("geometry() needs a model returned by fc2conv.convert")
    cached = getattr(converted, "_fc2conv_geometry", None)
    if isinstance(cached, str):  # refused before: measuring again would take as long and say the same
        raise ConversionError(cached)
    if cached is not None:
        return cached
    if info.mode in ONE_CELL:
        raise ConversionError(f"a mode={info.mode!r} model gives one cell for the whole input: it has no geometry")
    channels, reference = info.input_shape[0], map_size(info.input_shape)
    value = _locality(converted, info.trace_options, (channels, *reference))
    try:
        stride, sizes = measure(converted, channels, reference)
    except ConversionError as e:
        why = str(e)
        if isinstance(value, Everywhere) and value.attention:  # attention sized for one map: the reason, first
            why = (f"'{value.node}' sees the whole input ({value.why}), so a dense map cannot be made of it; fc2conv "
                   f"converts heads on convolutional feature maps{_GLOBAL if 'mode=' not in why else ''}: {why}")
        elif isinstance(value, Everywhere):  # global context: say it, after why the stride cannot be measured
            why += (f". '{value.node}' sees the whole input ({value.why}), so a dense map cannot be made of it"
                    + ("" if "mode='global'" in why else "; mode='global' keeps the model's own function"))
        converted._fc2conv_geometry = why
        raise ConversionError(why) from None
    window = reference if info.mode == "dense" else stride
    field, local, context = _receptive_field(value, stride, window)
    if info.global_context:
        local, context = False, context or "global pools inside the backbone (squeeze-excitation) see the whole input"
    result = Geometry(stride, window, exact=local, receptive_field=field, context=context, sizes=sizes)
    converted._fc2conv_geometry = result
    return result
