"""The input shapes fc2conv takes, where a cell of a map lies in the input, and how sizes are written in its messages
(no torch, no numpy).

A reference input shape has no batch axis: (C, L) for a signal, (C, H, W) for an image, (C, D, H, W) for a volume or
a video clip, or (D,) for an MLP. A converted model always takes N×C×(spatial) maps; an MLP's vectors become a map of
vectors, N×D×H×W, whose every pixel the converted MLP scores on its own (1×1 convolutions), so at the reference size
an MLP's input is a 1×1 map. This module is that rule's one home: the converters, the verifier, the exporters, the
metadata and the runtime all ask it.

A cell's place in the input has two boxes, one rule for `fc2conv.geometry` and the torch-free runtime: its window
(`window_box`), the input the cell stands for, and its influence (`influence_box`), every input position that can
change the cell: the window widened by the receptive field, which padding makes larger than the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

__all__ = ["VECTOR_MAP", "as_map", "influence_box", "is_vector_input", "map_size", "spatial_axes", "times",
           "window_box"]

VECTOR_MAP = (1, 1)  # an MLP's (D,) input at the reference size: one vector, a 1×1 map
Array = TypeVar("Array")  # a torch tensor or a numpy array: both have .ndim, .shape and .reshape


def is_vector_input(input_shape: Sequence[int]) -> bool:
    """Whether `input_shape` (without the batch) is an MLP's (D,)."""
    return len(input_shape) == 1


def map_size(input_shape: Sequence[int]) -> tuple[int, ...]:
    """The spatial size of the converted model's reference input: the axes after the channels, or 1×1 for an MLP."""
    return VECTOR_MAP if is_vector_input(input_shape) else tuple(int(d) for d in input_shape[1:])


def spatial_axes(input_shape: Sequence[int]) -> int:
    """How many spatial axes the converted model's maps have: 1, 2 or 3, and 2 for an MLP."""
    return len(map_size(input_shape))


def as_map(x: Array) -> Array:
    """A batch as the converted model takes it: an MLP's N×D vectors become an N×D×1×1 map; maps stay as they are."""
    return x.reshape(*x.shape, *VECTOR_MAP) if x.ndim == 2 else x  # type: ignore[attr-defined]


def times(sizes: Sequence[int]) -> str:
    """Sizes as they are written in messages: 3×224×224."""
    return "×".join(map(str, sizes))


def window_box(cell: Sequence[int], stride: Sequence[int], window: Sequence[int]) -> tuple[int, ...]:
    """The window of `cell` (one index per spatial axis): its first positions, then its ends (exclusive); for a 2-D
    map (top, left, bottom, right). Cell i covers positions i·stride … i·stride + window − 1 along each axis."""
    if len(cell) != len(stride):
        raise ValueError(f"a cell has {len(stride)} indices here, got {tuple(cell)}")
    starts = tuple(i * s for i, s in zip(cell, stride, strict=True))
    return (*starts, *(b + w for b, w in zip(starts, window, strict=True)))


def influence_box(cell: Sequence[int], stride: Sequence[int], window: Sequence[int],
                  receptive_field: Sequence[Sequence[int]] | None, size: Sequence[int] | None = None
                  ) -> tuple[int, ...]:
    """Every input position that can change `cell`, as a box like `window_box`'s: the window widened by the
    receptive field's (before, after) margins along each axis. Unclipped, it may start below 0 or end past the
    input (where a padded layer sees zeros); given the input's `size`, it is clipped to the input. Without a
    receptive field (`None`: a cell sees the whole input, or fc2conv cannot follow an op) it is the whole input,
    which needs `size`."""
    box = window_box(cell, stride, window)
    if receptive_field is None:
        if size is None:
            raise ValueError("these cells have no receptive field (they may see the whole input): give the input's "
                             "size for the box of the whole input")
        return (*(0,) * len(stride), *map(int, size))
    axes = len(stride)
    starts = [b - before for b, (before, _) in zip(box[:axes], receptive_field, strict=True)]
    ends = [e + after for e, (_, after) in zip(box[axes:], receptive_field, strict=True)]
    if size is not None:
        starts = [min(max(b, 0), n) for b, n in zip(starts, size, strict=True)]
        ends = [min(max(e, 0), n) for e, n in zip(ends, size, strict=True)]
    return (*starts, *ends)
