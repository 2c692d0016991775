"""The tiles a masked scan computes, and the mask it stores.

A tile none of whose cells has its window centre in the mask is skipped: neither read nor computed; its done flag
is `SKIPPED` and its chunk of scores stays missing (NaN). Any other tile is cropped to the box around its masked
cells (`fc2conv.scan.tiles.TilePlan.cropped`): it reads and computes only those cells' windows and halo, and cells
of the box outside the mask are stored as missing. The cells' mask goes into the store as `labels/mask/0` (uint8, 1
inside, chunked as the scores), an NGFF label image (`fc2conv.scan.ngff`); its SHA-256, over every computed tile's
box and cells, is what a resumed scan compares (`--resume` refuses another mask).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..tiles import Tile, TilePlan
from . import Mask

__all__ = ["MASK", "SKIPPED", "Selection", "select", "write"]

MASK = "labels/mask/0"
SKIPPED = 2  # a done flag: the tile has no masked cell (1: computed)


@dataclass
class Selection:
    """The cropped tiles with masked cells, the indices of the tiles without, the count of masked cells and the
    mask's SHA-256."""

    tiles: list[Tile] = field(default_factory=list)
    skipped: list[tuple[int, int]] = field(default_factory=list)
    cells: int = 0
    sha256: str = ""


def select(plan: TilePlan, mask: Mask) -> Selection:
    """Which tiles of `plan` to compute, each cropped to its masked cells (see the module docstring)."""
    selection, digest = Selection(), hashlib.sha256()
    for tile in plan.tiles():
        inside = mask.cells(tile.cells)
        if not inside.any():
            selection.skipped.append(tile.index)
            continue
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        top, left = tile.cells[:2]
        box = (top + int(rows[0]), left + int(cols[0]), top + int(rows[-1]) + 1, left + int(cols[-1]) + 1)
        selection.tiles.append(plan.cropped(tile, box))
        selection.cells += int(inside.sum())
        digest.update(np.array([*tile.index, *box], np.int64).tobytes())
        digest.update(np.packbits(inside[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]).tobytes())
    selection.sha256 = digest.hexdigest()
    return selection


def write(store: Path, mask: Mask, selection: Selection) -> None:
    """Store the cells' mask of every computed tile and mark the skipped tiles done."""
    import zarr

    group = zarr.open_group(str(store), mode="r+")
    stored = group[MASK]
    for tile in selection.tiles:
        top, left, bottom, right = tile.cells
        stored[0, top:bottom, left:right] = mask.cells(tile.cells).astype(np.uint8)
    if selection.skipped:
        done = group["done"]
        flags = np.asarray(done[...])
        for index in selection.skipped:
            flags[index] = SKIPPED
        done[...] = flags
