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
short strip (`probe_start` says where it starts; `fc2conv.scan.worker.map_length` runs it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import ScanError

__all__ = ["MAX_TILES", "TILE_MEMORY_BUDGET", "Tile", "TilePlan", "check_memory", "halo_cells", "make_plan",
           "probe_start", "tile_bytes"]

Pair = tuple[int, int]

TILE_MEMORY_BUDGET = 4 * 2**30
"""Bytes the buffers of one tile may take, per process: the samples it reads (owned pixels and halo) as read, as
float32 and normalised, its float32 score map and its owned cells as stored. A --tile that needs more is refused
before anything is written. The model's own activations come on top (onnxruntime's; for a wide first layer
several times the tile's input), so the budget is deliberately a fraction of a usual machine's memory."""

MAX_TILES = 2**20
"""The most tiles a plan may have: the scan keeps a little for each (its place in the plan, its done flag, on Dask
a task), so an image that declares terapixels (a zarr array's shape costs nothing to write) is refused with a
message naming --tile instead of filling memory with bookkeeping."""


@dataclass(frozen=True)
class Tile:
    """Tile `index` (row, column) of the plan's grid: it owns `cells` (top, left, bottom, right; ends exclusive),
    reads the input box `read` (same order, in pixels), and its owned cells start at cell `offset` of the map
    it computes. `owns` is the box of the image its cells stand for: their strides, and the image's last pixels
    for the last tiles (the tiles' boxes divide the image; for throughput and for counting samples once)."""

    index: Pair
    cells: tuple[int, int, int, int]
    read: tuple[int, int, int, int]
    offset: Pair
    owns: tuple[int, int, int, int]

    @property
    def pixels(self) -> int:
        top, left, bottom, right = self.owns
        return (bottom - top) * (right - left)


@dataclass(frozen=True)
class TilePlan:
    """How an `image`-sized input is cut: `cells` is the one-pass map's size, `tile_cells` the cells a tile owns
    along each axis (the zarr chunk, `chunk_cells`, unless the map is smaller), `halo` the (before, after) halo in
    cells along each axis."""

    image: Pair
    stride: Pair
    window: Pair
    halo: tuple[Pair, Pair]
    cells: Pair
    tile_cells: Pair

    @property
    def chunk_cells(self) -> Pair:
        """The most cells one tile owns along each axis (`tile_cells`, or the whole map where a tile is larger): the
        score map's zarr chunk, so that each tile writes one chunk and no chunk is larger than the map."""
        return tuple(min(n, c) for n, c in zip(self.tile_cells, self.cells, strict=True))

    @property
    def grid(self) -> Pair:
        return tuple(math.ceil(c / n) for c, n in zip(self.cells, self.tile_cells, strict=True))

    def tile(self, row: int, col: int) -> Tile:
        spans = [self._span(axis, index) for axis, index in enumerate((row, col))]
        (c0, c1, r0, r1, o0, a0, a1), (d0, d1, q0, q1, o1, b0, b1) = spans
        return Tile((row, col), (c0, d0, c1, d1), (r0, q0, r1, q1), (o0, o1), (a0, b0, a1, b1))

    def cropped(self, tile: Tile, cells: tuple[int, int, int, int]) -> Tile:
        """`tile` owning only `cells` (top, left, bottom, right; a box inside its own), reading only their windows
        and halo: a masked scan computes just the box around a tile's masked cells. Its first cell is still on the
        stride grid, so the cells equal one pass as every tile's do."""
        spans = [self._span(axis, tile.index[axis], (cells[axis], cells[axis + 2])) for axis in range(2)]
        (c0, c1, r0, r1, o0, a0, a1), (d0, d1, q0, q1, o1, b0, b1) = spans
        return Tile(tile.index, (c0, d0, c1, d1), (r0, q0, r1, q1), (o0, o1), (a0, b0, a1, b1))

    def covering(self, cells: tuple[int, int, int, int]) -> Tile:
        """A tile of no index owning the box `cells` of the map (any box, across tiles), reading their windows and
        halo as the plan's tiles do: one pass over it is what an approximate scan's seams are measured against."""
        return self.cropped(Tile((-1, -1), cells, cells, (0, 0), cells), cells)

    def tiles(self) -> list[Tile]:
        rows, cols = self.grid
        return [self.tile(r, c) for r in range(rows) for c in range(cols)]

    def read_pixels(self) -> int:
        """Input pixels all tiles read together: the image plus every halo (the tiled scan's extra work)."""
        total = 1
        for axis in range(2):
            total *= sum(span[3] - span[2] for span in (self._span(axis, i) for i in range(self.grid[axis])))
        return total

    def largest_read(self) -> Pair:
        """The most input pixels one tile reads along each axis: its owned cells' windows and the halo."""
        return tuple(min(size, (cells - 1 + before + after) * stride + window) for size, cells, (before, after), stride,
                     window in zip(self.image, self.chunk_cells, self.halo, self.stride, self.window, strict=True))

    def _span(self, axis: int, index: int, box: Pair | None = None) -> tuple[int, int, int, int, int, int, int]:
        """(first cell, end cell, first pixel read, end pixel read, offset of the first cell, first and end pixel
        owned) of tile `index` along `axis`, or of the cells `box` (first, end) inside it."""
        size, stride, window = self.image[axis], self.stride[axis], self.window[axis]
        before, after = self.halo[axis]
        first = index * self.tile_cells[axis]
        end = min(first + self.tile_cells[axis], self.cells[axis])
        if box is not None:
            first, end = box
        start = max(0, (first - before) * stride)
        start = min(start, max(0, (size - window) // stride * stride))  # read at least one window
        stop = min(size, (end - 1 + after) * stride + window)
        last = size if end == self.cells[axis] else min(size, end * stride)  # the last tile owns the image's end
        return first, end, start, stop, first - start // stride, min(size, first * stride), last


def halo_cells(margins: list[list[int]] | tuple[Pair, ...], stride: Pair) -> tuple[Pair, Pair]:
    """The receptive-field margins (before, after) in input pixels, per axis, as whole strides (rounded up)."""
    return tuple((math.ceil(b / s), math.ceil(a / s)) for (b, a), s in zip(margins, stride, strict=True))


def probe_start(length: int, *, stride: int, window: int, halo: Pair) -> int:
    """Where the strip that measures the map's end starts: the last point on the stride grid that leaves one
    window and a halo on each side before the image ends (0 for a short image)."""
    return max(0, (length - window - (halo[0] + halo[1] + 1) * stride) // stride * stride)


def make_plan(image: Pair, *, stride: Pair, window: Pair, halo: tuple[Pair, Pair], tile: int, cells: Pair) -> TilePlan:
    """The plan for an `image`-sized input with `tile`-pixel tiles (rounded down to whole strides).

    `ScanError` for an image smaller than one window, a tile that cannot hold one window, or more than
    `MAX_TILES` tiles.
    """
    if image[0] < window[0] or image[1] < window[1]:
        raise ScanError(f"the image is {image[0]}×{image[1]}, smaller than the model's {window[0]}×{window[1]} "
                        "window")
    if tile < max(window):
        raise ScanError(f"tile={tile} is smaller than the model's {window[0]}×{window[1]} window: a tile "
                        "must hold at least one window")
    plan = TilePlan(image, stride, window, halo, cells, tuple(tile // s for s in stride))
    count = plan.grid[0] * plan.grid[1]
    if count > MAX_TILES:
        raise ScanError(f"tile={tile} cuts the {image[0]:,}×{image[1]:,} image into {count:,} tiles, more than "
                        f"the {MAX_TILES:,} fc2conv plans (fc2conv.scan.tiles.MAX_TILES); give a larger tile= "
                        "or scan a coarser level=")
    return plan


def check_memory(plan: TilePlan, tile: int | str, *, samples: int, sample_bytes: int, channels: int, classes: int,
                 score_bytes: int, decode_bytes: int = 0, budget: int = TILE_MEMORY_BUDGET) -> None:
    """`ScanError` naming `tile` if one tile's own buffers (see `TILE_MEMORY_BUDGET`) exceed `budget` bytes:
    the samples as read (`samples` per pixel of `sample_bytes`), as float32 and normalised (`channels`, the
    model's), its float32 map of `classes` scores, its owned cells as stored (`score_bytes` each), and a block of
    the file being decoded (`decode_bytes`)."""
    rows, cols = plan.largest_read()
    need = tile_bytes((rows, cols), plan.stride, plan.chunk_cells, samples=samples, sample_bytes=sample_bytes,
                      channels=channels, classes=classes, score_bytes=score_bytes, decode_bytes=decode_bytes)
    if need > budget:
        raise ScanError(f"tile={tile} needs about {need / 2**30:.1f} GiB for one tile ({rows:,}×{cols:,} "
                        f"pixels read with the halo, {classes} scores per cell), more than the budget of "
                        f"{budget / 2**30:g} GiB (fc2conv.scan.TILE_MEMORY_BUDGET); give a smaller tile= "
                        "(2048 is the default)")


def tile_bytes(read: Pair, stride: Pair, owned: Pair, *, samples: int, sample_bytes: int, channels: int, classes: int,
               score_bytes: int, decode_bytes: int = 0) -> int:
    """The bytes of one tile's own buffers (see `check_memory`) when it reads `read` pixels and owns `owned` cells
    (rows, columns each)."""
    rows, cols = read
    read_cells = (rows // stride[0] + 1) * (cols // stride[1] + 1)
    return (rows * cols * (samples * sample_bytes + 2 * 4 * channels) + read_cells * classes * 4
            + owned[0] * owned[1] * classes * (4 + score_bytes) + decode_bytes)
