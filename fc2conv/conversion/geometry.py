"""Where each cell of a converted model's output map comes from in the input, along every spatial axis.

In dense mode cell i (one index per spatial axis) is the original's head applied to the reference-size window,
whose first corner is i·stride, of the original's features of the whole input. `stride` is measured, not assumed:
the model is run on meta tensors (shapes only, no arithmetic) at growing input sizes, and the stride is the distance
between the sizes at which the output gains its second and its third cell along that axis. The first step may be
shorter, when the reference size leaves pixels the original never looks at.

The receptive field is derived from the graph (`fc2conv.analysis.reach`): how far beyond its window the input still
changes a cell, before and after it along each axis. Padding makes it larger than the window: a padded
layer's border cells see zeros where a larger input has pixels. Tiles read with that margin around the cells
they own stitch into exactly the one-pass map; `Geometry.influence` is a cell's window with that margin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..analysis.reach import Everywhere, Reach, Unknown, Value, reach_of
from ..errors import ConversionError, reported
from ..runtime.metadata import ONE_CELL
from ..shapes import influence_box, map_size, window_box
from ..tracing.trace import META_FAILURES, TraceOptions, meta_state, trace

__all__ = ["Geometry", "geometry"]

_SCAN_LIMIT = 257  # sizes tried one by one for a model that runs only at some: two strides of up to 128


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
    """

    stride: tuple[int, ...]
    window: tuple[int, ...]
    exact: bool | None = True
    receptive_field: tuple[tuple[int, int], ...] | None = None
    context: str = ""

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


def _spatial_output(model: nn.Module, channels: int, reference: tuple[int, ...]
                    ) -> Callable[[tuple[int, ...]], tuple[int, ...]]:
    """Output sizes for an input size, from shapes-only (meta) runs; from real runs on zeros for a model that does
    what meta tensors cannot (a leaf module with data-dependent control flow)."""
    state = meta_state(model)
    dtype = next(iter(state.values())).dtype if state else torch.float32

    def on_meta(size: tuple[int, ...]) -> torch.Tensor:
        x = torch.empty(1, channels, *size, device="meta", dtype=dtype)
        return torch.func.functional_call(model, state, (x,))

    def on_zeros(size: tuple[int, ...]) -> torch.Tensor:
        return model(torch.zeros(1, channels, *size, dtype=dtype))

    run = on_meta
    with torch.no_grad():
        try:
            on_meta(reference)
        except META_FAILURES:
            run = on_zeros

    def output(size: tuple[int, ...]) -> tuple[int, ...]:
        with torch.no_grad():
            return tuple(run(size).shape[2:])

    return output


def _step(count: Callable[[int], int], start: int) -> int:
    """The distance between the input sizes at which `count` first reaches +1 and +2 of count(start)."""
    base = count(start)

    def first_size(target: int) -> int:
        low, high = start, start + 1
        while count(high) < target:
            if high > start + 64 * max(start, 8):
                raise ConversionError("the output map does not grow with the input; no sliding geometry")
            low, high = high, start + 2 * (high - start)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if count(middle) >= target else (middle, high)
        return high

    return first_size(base + 2) - first_size(base + 1)


def _step_over_failures(count: Callable[[int], int], start: int, axis: int) -> int:
    """`_step` for a model that runs only at some sizes (branches that round differently meet in a sum or a
    concatenation): every size from `start` up is tried in turn, skipping those that fail."""
    counts: dict[int, int] = {}
    for size in range(start, start + _SCAN_LIMIT):
        try:
            counts[size] = count(size)
        except Exception:  # this size does not run, others may: the model's code decides what it raises
            continue
        base = counts.get(start)
        if base is None:
            break
        reached = [n for n, c in counts.items() if c >= base + 2]
        if reached:
            return min(reached) - min(n for n, c in counts.items() if c >= base + 1)
    runs = sorted(counts)
    raise ConversionError(
        f"the converted model runs along axis {axis} only at sizes {runs[:12] or 'none'} of {start}…"
        f"{start + _SCAN_LIMIT - 1}, too few to measure its stride; convert at a reference size where it runs and "
        "give it inputs of the sizes it takes")


def _measured_stride(converted: nn.Module, channels: int, reference: tuple[int, ...]) -> tuple[int, ...]:
    output = _spatial_output(converted, channels, reference)

    def along(axis: int) -> Callable[[int], int]:
        return lambda n: output((*reference[:axis], n, *reference[axis + 1:]))[axis]

    strides = []
    for axis in range(len(reference)):
        try:
            strides.append(_step(along(axis), reference[axis]))
        except ConversionError:
            raise
        except Exception:  # some size on the way fails (whatever the model's code raises): try them in turn
            strides.append(_step_over_failures(along(axis), reference[axis], axis))
    return tuple(strides)


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
    """
    info = getattr(converted, "fc2conv", None)
    if info is None:
        raise ValueError("geometry() needs a model returned by fc2conv.convert")
    cached = getattr(converted, "_fc2conv_geometry", None)
    if cached is not None:
        return cached
    if info.mode in ONE_CELL:
        raise ConversionError(f"a mode={info.mode!r} model gives one cell for the whole input: it has no geometry")
    channels, reference = info.input_shape[0], map_size(info.input_shape)
    value = _locality(converted, info.trace_options, (channels, *reference))
    try:
        stride = _measured_stride(converted, channels, reference)
    except ConversionError as e:
        if isinstance(value, Everywhere):  # attention with a fixed size, say: name it
            raise ConversionError(f"{e}. '{value.node}' sees the whole input ({value.why}), so a dense map cannot be "
                                  "made of it; mode='global' keeps the model's own function") from None
        raise
    window = reference if info.mode == "dense" else stride
    field, local, context = _receptive_field(value, stride, window)
    if info.global_context:
        local, context = False, context or "global pools inside the backbone (squeeze-excitation) see the whole input"
    result = Geometry(stride, window, exact=local, receptive_field=field, context=context)
    converted._fc2conv_geometry = result
    return result
