"""The tile plan: which cells of the score map each tile owns, and which input pixels it reads to compute them.

The maths, along each spatial axis (stride S, window W, receptive-field margins b before and a after, in input
pixels, from the model's metadata):

- cell i is the classifier's window i·S … i·S + W − 1, and the input still changes it from i·S − b to
  i·S + W − 1 + a (padding carries pixels beyond the window into it, layer after layer);
- the halo is those margins in whole strides, hb = ⌈b / S⌉ and ha = ⌈a / S⌉ cells;
- a tile owns cells c0 … c1 − 1 (`tile // S` of them; the last tile of a row or column fewer) and reads the
  input from r0 = (c0 − hb)·S to r1 = (c1 − 1 + ha)·S + W, both clipped to the image.

r0 is on the stride grid, so the grid of every layer inside the tile is the one-pass grid shifted by a whole
number of its own steps. An owned cell then sees, through every layer, either real pixels inside the tile or
the image's own border, where the one-pass map pads in the same places: the owned cells equal the one-pass
cells, up to float rounding. With one stride less of halo the padding at a tile's edge reaches the border
cells, and they differ (tested).

The one-pass map's length M is not always (H − W) // S + 1: a padded model has cells whose windows run past the
image's end. Every layer's output length is ⌊(n + e) / s⌋ + 1 for its input length n, so shortening the input by
r pixels on the stride grid removes exactly r / S cells: M(H) = r / S + M(H − r), and M(H − r) is measured on a
short strip (`probe_start` says where it starts; `fc2conv.scan.infer.map_length` runs it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConversionError

__all__ = ["Tile", "TilePlan", "halo_cells", "make_plan", "probe_start"]

Pair = tuple[int, int]


@dataclass(frozen=True)
class Tile:
    """Tile `index` (row, column) of the plan's grid: it owns `cells` (top, left, bottom, right; ends exclusive),
    reads the input box `read` (same order, in pixels), and its owned cells start at cell `offset` of the map
    it computes. `pixels` is the area of the image its cells stand for: their strides, and the image's last
    pixels for the last tiles (all tiles' `pixels` add up to the image; for throughput)."""

    index: Pair
    cells: tuple[int, int, int, int]
    read: tuple[int, int, int, int]
    offset: Pair
    pixels: int


@dataclass(frozen=True)
class TilePlan:
    """How an `image`-sized input is cut: `cells` is the one-pass map's size, `tile_cells` the cells a tile owns
    along each axis (and the zarr chunk), `halo` the (before, after) halo in cells along each axis."""

    image: Pair
    stride: Pair
    window: Pair
    halo: tuple[Pair, Pair]
    cells: Pair
    tile_cells: Pair

    @property
    def grid(self) -> Pair:
        return tuple(math.ceil(c / n) for c, n in zip(self.cells, self.tile_cells, strict=True))

    def tile(self, row: int, col: int) -> Tile:
        spans = [self._span(axis, index) for axis, index in enumerate((row, col))]
        (c0, c1, r0, r1, o0, p0), (d0, d1, q0, q1, o1, p1) = spans
        return Tile((row, col), (c0, d0, c1, d1), (r0, q0, r1, q1), (o0, o1), p0 * p1)

    def tiles(self) -> list[Tile]:
        rows, cols = self.grid
        return [self.tile(r, c) for r in range(rows) for c in range(cols)]

    def read_pixels(self) -> int:
        """Input pixels all tiles read together: the image plus every halo (the tiled scan's extra work)."""
        total = 1
        for axis in range(2):
            total *= sum(r1 - r0 for _, _, r0, r1, _, _ in (self._span(axis, i) for i in range(self.grid[axis])))
        return total

    def _span(self, axis: int, index: int) -> tuple[int, int, int, int, int, int]:
        """(first cell, end cell, first pixel read, end pixel read, offset of the first cell, owned pixels)."""
        size, stride, window = self.image[axis], self.stride[axis], self.window[axis]
        before, after = self.halo[axis]
        first = index * self.tile_cells[axis]
        end = min(first + self.tile_cells[axis], self.cells[axis])
        start = max(0, (first - before) * stride)
        start = min(start, max(0, (size - window) // stride * stride))  # read at least one window
        stop = min(size, (end - 1 + after) * stride + window)
        last = size if end == self.cells[axis] else min(size, end * stride)  # the last tile owns the image's end
        return first, end, start, stop, first - start // stride, last - min(size, first * stride)


def halo_cells(margins: list[list[int]] | tuple[Pair, ...], stride: Pair) -> tuple[Pair, Pair]:
    """The receptive-field margins (before, after) in input pixels, per axis, as whole strides (rounded up)."""
    return tuple((math.ceil(b / s), math.ceil(a / s)) for (b, a), s in zip(margins, stride, strict=True))


def probe_start(length: int, *, stride: int, window: int, halo: Pair) -> int:
    """Where the strip that measures the map's end starts: the last point on the stride grid that leaves one
    window and a halo on each side before the image ends (0 for a short image)."""
    return max(0, (length - window - (halo[0] + halo[1] + 1) * stride) // stride * stride)


def make_plan(image: Pair, *, stride: Pair, window: Pair, halo: tuple[Pair, Pair], tile: int, cells: Pair) -> TilePlan:
    """The plan for an `image`-sized input with `tile`-pixel tiles (rounded down to whole strides).

    `ConversionError` for an image smaller than one window or a tile that cannot hold one window.
    """
    if image[0] < window[0] or image[1] < window[1]:
        raise ConversionError(f"the image is {image[0]}×{image[1]}, smaller than the model's {window[0]}×{window[1]} "
                              "window")
    if tile < max(window):
        raise ConversionError(f"--tile {tile} is smaller than the model's {window[0]}×{window[1]} window: a tile "
                              "must hold at least one window")
    return TilePlan(image, stride, window, halo, cells, tuple(tile // s for s in stride))
