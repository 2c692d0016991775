"""Where tiles meet: the halo each tile reads, and, in an approximate scan, how large the seams it leaves are.

A model whose metadata gives a receptive field is scanned with that field's halo, and its tiles meet without a
seam (`fc2conv.scan.tiles`). A model with global context (squeeze-excitation and its kin: every cell sees the
whole input) or without a known field can only be scanned approximately: each tile reads a halo of one window plus
`context` pixels on each side (rounded up to whole strides), and its cells see that much of the slide instead of all
of it. Where two tiles meet, the cells on either side saw different pixels, and the map shows a seam.

`measure` says how large: it chooses the tile corner nearest the middle of the map (in a masked scan, among the
corners with the most computed tiles around them), takes the box of cells of the 2×2 tiles that meet there (on a
map one tile high or wide, 2×1; shrunk about the corner until one pass over it fits `TILE_MEMORY_BUDGET`), runs
one pass of the model over it as a tile owning it would read it (its windows and the halo, so the box's own edge
cells see as far as a tile's do), and compares: max |stitched − one pass| / max |one pass| over the box's computed
cells (a masked scan's others are NaN). A wider `context` makes each tile see more, and the seams smaller: on
MobileNetV3-small (random weights) with tiles of 128 pixels on a 512×480 image, 12.5% without context, 0.14% with
64 pixels, 0.004% with 128, and 0 once every tile's halo reaches the whole image.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ScanError
from ...metadata import ONE_CELL
from ...shapes import sizes_from_json, sizes_taken
from . import tiles
from .source import SourceSpec
from .tiles import TILE_MEMORY_BUDGET, Tile, TilePlan, tile_bytes
from .worker import ModelSpec, evaluate

__all__ = ["halo", "measure"]


def halo(metadata: dict[str, Any], model: str, approximate: bool, context: int | None = None
         ) -> tuple[tuple, Any, bool]:
    """(halo in cells per axis, receptive field, whether the map is approximate): the receptive field's halo when
    the metadata has one, else, if `approximate`, a window plus `context` pixels, else `ScanError` saying
    why."""
    if metadata["mode"] in ONE_CELL or len(metadata["input_shape"]) != 3:
        raise ScanError(f"{model} is not a dense map of images (mode {metadata['mode']}, input "
                        f"{metadata['input_shape']}); export a 2-D model in dense mode to scan")
    sizes = sizes_from_json(metadata.get("sizes"))
    if sizes is not None:  # tiles are cut to the slide's edges and to the stride grid: not to such sizes
        raise ScanError(f"{model} runs only at {sizes_taken(sizes, metadata['window'])}, and a scan's tiles "
                        "are cut to the slide's edges, so it cannot be scanned; run it on images of those sizes "
                        "with fc2conv run")
    field, why_context = metadata.get("receptive_field"), metadata.get("context")
    why = (f"its cells see the whole input (global context: {why_context or 'e.g. squeeze-excitation pools'})"
           if metadata.get("exact", True) is False else
           f"its metadata records no receptive field ({why_context or 'fc2conv could not follow the graph'}), so no "
           "halo is known" if field is None else None)
    if why is None:
        if context:
            raise ScanError(f"context={context}: {model} scans exactly (its receptive field gives each tile's "
                            "halo), so there are no seams to narrow; drop context=")
        return tiles.halo_cells(field, metadata["stride"]), field, False
    if not approximate:
        raise ScanError(f"{model} cannot be scanned in tiles exactly: {why}. Pass approximate=True "
                        "to scan with a halo of one window; the output is marked approximate")
    margins = [[w + (context or 0)] * 2 for w in metadata["window"]]
    return tiles.halo_cells(margins, metadata["stride"]), field, True


def measure(plan: TilePlan, computed: list[Tile], model: ModelSpec, source: SourceSpec, store: Path,
            **sizes: int) -> dict[str, Any]:
    """The seams of the approximate scan `plan` whose `computed` tiles are in `store` (see the module docstring):
    {"region": [top, left, bottom, right] cells, "tiles": [rows, columns] meeting there, "value": the relative
    difference} or, when nothing can be measured, {"region": None, "value": None, "reason": why}. `sizes`: what
    `tiles.tile_bytes` takes but the read and the cells."""
    import zarr

    indices = {t.index for t in computed}
    corner = _corner(plan, indices)
    if corner is None:
        return _unmeasured("one tile, so no seams" if plan.grid == (1, 1) else "no computed tile meets another")
    spans = [_span(plan, axis, corner[axis]) for axis in range(2)]
    while True:
        box = (spans[0][0], spans[1][0], spans[0][1], spans[1][1])
        tile = plan.covering(box)
        read = (tile.read[2] - tile.read[0], tile.read[3] - tile.read[1])
        owned = (box[2] - box[0], box[3] - box[1])
        if tile_bytes(read, plan.stride, owned, **sizes) <= TILE_MEMORY_BUDGET:
            break
        shrunk = [_shrink(span, corner_cell, plan.halo[axis])
                  for axis, (span, corner_cell) in enumerate(zip(spans, _corner_cells(plan, corner), strict=True))]
        if shrunk == spans:
            return _unmeasured("one pass over the smallest region around a tile corner exceeds the memory budget")
        spans = shrunk
    one_pass, _ = evaluate(model, source, tile)
    stitched = np.asarray(zarr.open_array(str(store / "scores"), mode="r")[:, box[0]:box[2], box[1]:box[3]],
                          dtype=np.float32)
    keep = np.isfinite(stitched).all(axis=0)  # cells outside a mask are NaN: not computed
    if not keep.any():
        return _unmeasured("no computed cell in the region around a tile corner")
    expected, found = one_pass[:, keep], stitched[:, keep]
    value = float(np.abs(found - expected).max() / max(float(np.abs(expected).max()), np.finfo(np.float32).tiny))
    meeting = [2 if plan.grid[axis] > 1 else 1 for axis in range(2)]
    return {"region": list(box), "tiles": meeting, "value": value}


def _unmeasured(reason: str) -> dict[str, Any]:
    return {"region": None, "value": None, "reason": reason}


def _corner(plan: TilePlan, computed: set[tuple[int, int]]) -> tuple[int | None, int | None] | None:
    """The tile corner (index of the tile row and column after it; None along an axis of one tile) with the most
    computed tiles around it, then nearest the middle of the map; None if no two tiles meet or none is computed."""
    if plan.grid == (1, 1):
        return None
    rows, cols = ([None] if n == 1 else list(range(1, n)) for n in plan.grid)
    ranked = []
    for r in rows:
        for c in cols:
            around = {(i, j) for i in ((0,) if r is None else (r - 1, r)) for j in ((0,) if c is None else (c - 1, c))}
            far = sum(0 if x is None else abs(x - n / 2) for x, n in zip((r, c), plan.grid, strict=True))
            ranked.append((len(around & computed), -far, (r, c)))
    count, _, corner = max(ranked, key=lambda found: found[:2])
    return corner if count else None


def _corner_cells(plan: TilePlan, corner: tuple[int | None, int | None]) -> list[int]:
    """The map cell of the corner along each axis: where tile `index` begins, or the middle of a one-tile axis."""
    return [plan.cells[axis] // 2 if index is None else index * plan.tile_cells[axis]
            for axis, index in enumerate(corner)]


def _span(plan: TilePlan, axis: int, index: int | None) -> tuple[int, int]:
    """(first, end) cells along `axis` of the two tiles that meet at `index`, or of the whole map along it."""
    if index is None:
        return 0, plan.cells[axis]
    step = plan.tile_cells[axis]
    return max(0, (index - 1) * step), min(plan.cells[axis], (index + 1) * step)


def _shrink(span: tuple[int, int], middle: int, halo: tuple[int, int]) -> tuple[int, int]:
    """`span` halved about `middle`, keeping at least one cell beyond the halo on each side where it can."""
    first, end = span
    before = max(min(middle - first, halo[0] + 1), math.ceil((middle - first) / 2))
    after = max(min(end - middle, halo[1] + 1), math.ceil((end - middle) / 2))
    return middle - before, middle + after
