"""The area a masked scan of a large synthetic slide computes, counted by fc2conv's own tile plan and mask selection
(for `bench.py --projection`), without writing the slide.

The mask is `tissue_slide.layout` of the slide (the blocks that are tissue, as the measured slides are drawn from),
given to `fc2conv.scan.masks.selection.select` as a `RasterMask` scaled to the slide, as `--mask auto` gives its
thumbnail: a cell is inside when the layout block under its window centre is tissue. The plan is the scan's own
(`fc2conv.scan.tiles.make_plan`): the model's stride and window, its halo from the receptive field in its metadata
(`fc2conv.scan.seams.halo`), the map's length measured on a strip at the image's end as a scan measures it. A
tile with no tissue cell is skipped; any other is cropped to the box around its tissue cells, and counts the pixels
its cells stand for (`Tile.pixels`, what a scan's "MP computed" adds up) and the pixels it reads with its halo.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class MaskedArea:
    """What a masked scan of a `size`² slide would compute: its plan's geometry and the selection's counts."""

    size: int
    tile: int
    stride: tuple[int, int]
    window: tuple[int, int]
    halo: tuple[tuple[int, int], tuple[int, int]]
    planned: int
    computed: int
    skipped: int
    pixels: int  # the image pixels the computed tiles' cells stand for
    read: int  # the pixels the computed tiles read, halo included
    tissue: float  # the layout's fraction of tissue blocks

    @property
    def megapixels(self) -> float:
        return self.pixels / 1e6

    @property
    def read_megapixels(self) -> float:
        return self.read / 1e6


def geometry(model: Path, size: int) -> tuple[tuple, tuple, tuple, tuple]:
    """(stride, window, halo in cells, map size in cells) of `model` over a `size`² image, as `scan` finds them."""
    from fc2conv.scan import seams
    from fc2conv.scan.driver import _map_length
    from fc2conv.scan.worker import ModelSpec, file_sha256, load

    dense = load(ModelSpec(str(model.resolve()), file_sha256(model)))
    halo, _, _ = seams.halo(dense.metadata, str(model), False)
    stride, window = tuple(dense.metadata["stride"]), tuple(dense.metadata["window"])
    cells = tuple(_map_length(dense, axis, size, stride, window, halo) for axis in range(2))
    return stride, window, halo, cells


def layout_mask(blocks: np.ndarray, size: int, grid):
    """`blocks` (tissue_slide.layout's, one per `BLOCK` pixels) as a mask over a `size`² image on the cells `grid`."""
    from tissue_slide import BLOCK

    from fc2conv.scan.masks.raster import RasterMask

    scale = (1 / BLOCK, 1 / BLOCK)  # block i covers pixels i·BLOCK … (i + 1)·BLOCK − 1
    return RasterMask(lambda top, left, bottom, right: blocks[top:bottom, left:right], blocks.shape, scale, grid,
                      {"kind": "layout", "size": size})


def masked_area(size: int, fraction: float, *, model: Path, tile: int, seed: int = 0,
                blocks: np.ndarray | None = None) -> MaskedArea:
    """Plan a `size`² scan of `model` with `tile`-pixel tiles and select its tiles with the layout of a `size`²
    slide with `fraction` tissue (`tissue_slide.layout`, `seed`; or `blocks`, that layout computed already)."""
    from tissue_slide import layout

    from fc2conv.scan import tiles
    from fc2conv.scan.masks import CellGrid, selection

    stride, window, halo, cells = geometry(model, size)
    tile = min(tile, size)  # as `scan` takes a tile larger than the image
    plan = tiles.make_plan((size, size), stride=stride, window=window, halo=halo, tile=tile, cells=cells)
    if blocks is None:
        blocks = layout((size, size), fraction, seed)
    chosen = selection.select(plan, layout_mask(blocks, size, CellGrid(stride, window)))
    read = sum((t.read[2] - t.read[0]) * (t.read[3] - t.read[1]) for t in chosen.tiles)
    planned = plan.grid[0] * plan.grid[1]
    return MaskedArea(size, tile, stride, window, halo, planned, len(chosen.tiles), len(chosen.skipped),
                      sum(t.pixels for t in chosen.tiles), read, float(blocks.mean()))
