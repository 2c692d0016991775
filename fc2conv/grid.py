"""Where each cell of a converted model's output map comes from in the input image.

In dense mode cell (i, j) is the original classifier applied to the reference-size window whose top-left
corner is (i·sh, j·sw); `stride` is measured, not assumed: the model is run on meta tensors (shapes only,
no arithmetic) at growing input sizes, and the stride is the distance between the sizes at which the
output gains its second and its third row (column). The first step may be shorter, when the reference
size leaves pixels the original never looks at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .errors import ConversionError
from .trace import meta_state

__all__ = ["Geometry", "geometry"]


@dataclass(frozen=True)
class Geometry:
    """The input box of every output cell: cell (i, j) covers rows i·sh … i·sh+h−1, columns j·sw … j·sw+w−1.

    `exact` is False when global pools inside the backbone (squeeze-excitation) give every cell
    image-level context, so a cell is not the original on its window alone.
    """

    stride: tuple[int, int]
    window: tuple[int, int]
    exact: bool = True

    def box(self, i: int, j: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of cell (i, j) in input pixels, bottom and right exclusive."""
        top, left = i * self.stride[0], j * self.stride[1]
        return top, left, top + self.window[0], left + self.window[1]

    def to_dict(self) -> dict:
        return asdict(self)


def _spatial_output(
    model: nn.Module, channels: int, reference: tuple[int, int]
) -> Callable[[int, int], tuple[int, int]]:
    """Output height and width for an input size, from shapes-only (meta) runs; from real runs on zeros for
    a model that does what meta tensors cannot (a leaf module with data-dependent control flow)."""
    state = meta_state(model)
    dtype = next(iter(state.values())).dtype if state else torch.float32

    def on_meta(height: int, width: int) -> torch.Tensor:
        x = torch.empty(1, channels, height, width, device="meta", dtype=dtype)
        return torch.func.functional_call(model, state, (x,))

    def on_zeros(height: int, width: int) -> torch.Tensor:
        return model(torch.zeros(1, channels, height, width, dtype=dtype))

    run = on_meta
    with torch.no_grad():
        try:
            on_meta(*reference)
        except Exception:
            run = on_zeros

    def output(height: int, width: int) -> tuple[int, int]:
        with torch.no_grad():
            return tuple(run(height, width).shape[-2:])

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


def geometry(converted: nn.Module) -> Geometry:
    """The stride and window, in input pixels, of a model made by `fc2conv.convert` in dense or cam mode.

    Dense: the window is the reference input size. Cam: cells are feature locations and the window is
    one stride (the footprint of a cell). Global mode has one cell for the whole input and no geometry.
    """
    info = getattr(converted, "fc2conv", None)
    if info is None:
        raise ValueError("geometry() needs a model returned by fc2conv.convert")
    cached = getattr(converted, "_fc2conv_geometry", None)
    if cached is not None:
        return cached
    if info.mode == "global":
        raise ConversionError("a mode='global' model gives one cell for the whole input: it has no geometry")
    channels, *size = info.input_shape
    height, width = size or (1, 1)
    output = _spatial_output(converted, channels, (height, width))
    stride = (_step(lambda h: output(h, width)[0], height), _step(lambda w: output(height, w)[1], width))
    window = (height, width) if info.mode == "dense" else stride
    result = Geometry(stride, window, exact=not info.global_context)
    converted._fc2conv_geometry = result
    return result
