"""The input shapes fc2conv takes, and how sizes are written in its messages (no torch, no numpy).

A reference input shape has no batch axis: (C, L) for a signal, (C, H, W) for an image, (C, D, H, W) for a volume or
a video clip, or (D,) for an MLP. A converted model always takes N×C×(spatial) maps; an MLP's vectors become a map of
vectors, N×D×H×W, whose every pixel the converted MLP scores on its own (1×1 convolutions), so at the reference size
an MLP's input is a 1×1 map. This module is that rule's one home: the converters, the verifier, the exporters, the
metadata and the runtime all ask it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

__all__ = ["VECTOR_MAP", "as_map", "is_vector_input", "map_size", "spatial_axes", "times"]

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
