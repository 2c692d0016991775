"""Masks: which cells of a scan's map are computed, so that a slide's glass is neither read nor computed.

`--mask` (`mask=` of `fc2conv.scan.scan`) takes:

- `auto`, `auto-dark` or `auto-bright`: foreground found on a thumbnail of the slide (`auto`);
- a GeoJSON file of polygons in level-0 pixels, as QuPath exports annotations (`regions`);
- a binary image of any size with the slide's aspect ratio (PNG, TIFF, …), or a zarr array / OME-Zarr label image,
  scaled to the slide: a nonzero pixel is inside (`raster`).

Every kind answers one question, `Mask.cells(box)`: which cells of a box of the map have the centre of their window
inside the mask. Cell (i, j)'s window centre is at pixel-edge coordinates (i·S + W/2, j·S + W/2) of the scanned level
(`CellGrid`). `selection` then skips the tiles with no such cell (never read, never computed), crops the others to
the box around their masked cells, and writes the cells' mask into the store, where the scan's cells outside it stay
missing (NaN).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ....errors import ScanError
from ..placement import Placement
from ..readers import Source

__all__ = ["AUTO", "CellGrid", "Mask", "open_mask"]

AUTO = ("auto", "auto-dark", "auto-bright")
_GEOJSON = (".geojson", ".json")


@dataclass(frozen=True)
class CellGrid:
    """The map's cells on the scanned level: stride and window in pixels (y, x)."""

    stride: tuple[int, int]
    window: tuple[int, int]

    def centres(self, first: int, end: int, axis: int) -> np.ndarray:
        """Pixel-edge coordinates of the window centres of cells `first` … `end` − 1 along `axis`."""
        return np.arange(first, end) * self.stride[axis] + self.window[axis] / 2

    def to_cells(self, edges: np.ndarray, axis: int) -> np.ndarray:
        """Pixel-edge coordinates along `axis` as (fractional) cell indices: cell i's centre is at index i."""
        return (np.asarray(edges, dtype=np.float64) - self.window[axis] / 2) / self.stride[axis]


class Mask(Protocol):
    """A mask over the map: `description` goes into the store's metadata."""

    description: dict[str, Any]

    def cells(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """bool rows × columns: which cells of `box` (top, left, bottom, right; ends exclusive) are inside."""


def open_mask(mask: str | os.PathLike, *, source: Source, placement: Placement, grid: CellGrid,
              max_pixels: int | None) -> Mask:
    """The mask `mask` names (see the module docstring) over `source`, the scanned level. `ScanError` names
    the file, field or flag at fault: a missing or unreadable file, a mask image of another aspect ratio than the
    slide, polygons that are not polygons or lie wholly outside it, a thumbnail with no foreground."""
    if str(mask) in AUTO:
        from .auto import auto_mask

        return auto_mask(str(mask), source, grid)
    path = Path(mask)
    if not path.exists():
        raise ScanError(f"mask={mask}: no such file or directory (a mask is {', '.join(AUTO)}, a GeoJSON "
                        "of polygons, a binary image or a zarr label image)")
    if path.suffix.lower() in _GEOJSON:
        from .regions import regions_mask

        return regions_mask(path, source=source, placement=placement, grid=grid)
    from .raster import file_mask

    return file_mask(path, source=source, grid=grid, max_pixels=max_pixels)
