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

Some models run only at some sizes: a window-partition model (MaxViT, HaloNet) reshapes its map into fixed windows,
so it runs only where the map divides into them. `Sizes` says which, along one axis, as `fc2conv.geometry`
measures it and the ONNX metadata carries it; `size_refusal` names them for an input of another size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["VECTOR_MAP", "Sizes", "as_map", "axis_names", "influence_box", "is_vector_input", "map_size",
           "size_refusal", "sizes_from_json", "sizes_taken", "spatial_axes", "times", "window_box"]

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


def axis_names(spatial: int) -> tuple[str, ...]:
    """The names of the spatial axes, for dynamic dimensions and messages: length; height, width; depth, height,
    width."""
    return {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}[spatial]


@dataclass(frozen=True)
class Sizes:
    """The input sizes along one spatial axis at which a model runs: n with n mod `period` inside one of the
    inclusive `residues` ranges (lo, hi), 0 ≤ lo ≤ hi < period, in order. A model that partitions a map of stride s
    into windows of w cells runs at multiples of s·w: period s·w, residues ((0, 0),)."""

    period: int
    residues: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        ends = [v for pair in self.residues for v in pair]
        if self.period < 1 or not self.residues or ends != sorted(ends) or ends[0] < 0 or ends[-1] >= self.period:
            raise ValueError(f"not a set of sizes: period {self.period}, residues {self.residues}")

    def allows(self, n: int) -> bool:
        """Whether the model runs at size `n` along this axis."""
        r = n % self.period
        return any(lo <= r <= hi for lo, hi in self.residues)

    def at_least(self, n: int) -> int:
        """The smallest size ≥ `n` the model runs at."""
        return next(m for m in range(n, n + self.period) if self.allows(m))

    def at_most(self, n: int) -> int:
        """The largest size ≤ `n` the model runs at (it may be below 1)."""
        return next(m for m in range(n, n - self.period, -1) if self.allows(m))

    def __str__(self) -> str:
        """'multiples of 256', '64·k + 3', '256·k − 15 … 256·k': the rule, k any whole number."""
        p, ranges = self.period, list(self.residues)
        if len(ranges) > 1 and ranges[0][0] == 0 and ranges[-1][1] == p - 1:  # one range across the multiples
            ranges = [(ranges[-1][0] - p, ranges[0][1]), *ranges[1:-1]]
        if ranges == [(0, 0)]:
            return f"multiples of {p}"

        def term(v: int) -> str:
            return f"{p}·k" if v == 0 else f"{p}·k + {v}" if v > 0 else f"{p}·k − {-v}"

        return " or ".join(term(lo) if lo == hi else f"{term(lo)} … {term(hi)}" for lo, hi in ranges)

    def examples(self, start: int, count: int = 3) -> str:
        """The first `count` runs of sizes from `start` up: '256, 512, 768, …' or '256, 497–512, 753–768, …'."""
        shown, n = [], self.at_least(start)
        while len(shown) < count:
            end = n
            while self.allows(end + 1) and end + 1 - n < self.period:
                end += 1
            shown.append(str(n) if end == n else f"{n}–{end}")
            n = self.at_least(end + 2)
        return ", ".join(shown) + ", …"

    def to_json(self) -> dict[str, Any]:
        return {"period": self.period, "residues": [list(pair) for pair in self.residues]}


def sizes_from_json(value: Any) -> tuple[Sizes | None, ...] | None:
    """The metadata's `sizes` (null, or one entry per axis: null for every size, or {"period", "residues"}) as
    `Sizes`; ValueError for anything else."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError("not a list")
    axes = []
    for entry in value:
        if entry is None:
            axes.append(None)
            continue
        if not isinstance(entry, dict) or set(entry) != {"period", "residues"}:
            raise ValueError("each axis must be null or an object with period and residues")
        period, residues = entry["period"], entry["residues"]
        pairs = residues if isinstance(residues, list) else None
        if not _whole(period) or not pairs or not all(isinstance(r, list) and len(r) == 2 and all(map(_whole, r))
                                                      for r in pairs):
            raise ValueError("period must be a whole number and residues a list of [lo, hi] pairs")
        axes.append(Sizes(period, tuple((lo, hi) for lo, hi in pairs)))
    return tuple(axes)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def sizes_taken(sizes: Sequence[Sizes | None], window: Sequence[int]) -> str:
    """The sizes a model takes along the axes where it runs only at some, from its `window` up: 'height 256, 512,
    768, … (multiples of 256) and width 256, 512, 768, … (multiples of 256)'."""
    names = axis_names(len(sizes))
    return " and ".join(f"{name} {s.examples(w)} ({s})" for name, s, w in zip(names, sizes, window, strict=True) if s)


def size_refusal(size: Sequence[int], sizes: Sequence[Sizes | None] | None, window: Sequence[int]) -> str | None:
    """Why a model that runs only at `sizes` (one entry per axis, None for every size) cannot take an input of
    spatial `size`, naming the sizes it takes and the nearest ones at least `window`; None when it can."""
    if sizes is None or all(s is None or s.allows(n) for s, n in zip(sizes, size, strict=True)):
        return None
    below = [n if s is None else s.at_most(n) for s, n in zip(sizes, size, strict=True)]
    above = [n if s is None else s.at_least(n) for s, n in zip(sizes, size, strict=True)]
    nearest = ([times(below)] if all(b >= w for b, w in zip(below, window, strict=True)) else []) + [times(above)]
    return (f"the model runs only at {sizes_taken(sizes, window)}; the nearest sizes it takes are "
            f"{' and '.join(nearest)}: crop or pad the input to one of them")
