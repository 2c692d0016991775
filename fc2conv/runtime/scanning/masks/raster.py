"""Masks that are images: a thumbnail `auto` computed, or a file (a binary image of any size, a zarr array or an
OME-Zarr label image), scaled to the slide. A nonzero pixel is inside.

A mask image of h × w pixels over a scanned level of H × W pixels stands for it scaled by (h / H, w / W): a cell is
inside when the mask pixel under its window centre is nonzero. So the image must have the slide's aspect ratio
(within one mask pixel and 1%): a mask of another shape was made for another slide or cropped, and scaling it
would put its regions in the wrong places. Files are read lazily, one box of mask pixels per tile, through the
scanner's own readers (`fc2conv.scan.source`), so a mask as large as the slide costs a tile's worth of memory; of a
pyramid, the coarsest level with at least as many pixels as the map has cells is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ....errors import ConversionError, ScanError
from ...files.paths import file_sha256
from ..readers import Source, SourceSpec
from . import CellGrid

__all__ = ["RasterMask", "file_mask"]

_ASPECT_TOLERANCE = 0.01


class RasterMask:
    """A mask image of `size` pixels, `scale` mask pixels per scanned pixel (y, x); `read(top, left, bottom, right)`
    gives a box of it (H×W, or H×W×C: nonzero in any channel is inside)."""

    def __init__(self, read: Callable[[int, int, int, int], np.ndarray], size: tuple[int, int],
                 scale: tuple[float, float], grid: CellGrid, description: dict[str, Any]):
        self._read, self.size, self.scale, self.grid, self.description = read, size, scale, grid, description

    def cells(self, box: tuple[int, int, int, int]) -> np.ndarray:
        top, left, bottom, right = box
        index = [np.floor(self.grid.centres(first, end, axis) * self.scale[axis]).astype(np.int64)
                 for axis, (first, end) in enumerate(((top, bottom), (left, right)))]
        inside = [(i >= 0) & (i < n) for i, n in zip(index, self.size, strict=True)]
        found = np.zeros((bottom - top, right - left), bool)
        if not inside[0].any() or not inside[1].any():
            return found
        rows, cols = index[0][inside[0]], index[1][inside[1]]
        block = np.asarray(self._read(int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1))
        block = block.any(axis=-1) if block.ndim == 3 else block != 0
        found[np.ix_(inside[0], inside[1])] = block[np.ix_(rows - rows.min(), cols - cols.min())]
        return found


def file_mask(path: Path, *, source: Source, grid: CellGrid, max_pixels: int | None) -> RasterMask:
    """The mask in the image or zarr file at `path` over the scanned level of `source`."""
    from ..source import OPENERS, detect_reader

    kind = detect_reader(path)
    stat = path.stat()
    spec = SourceSpec(str(path.resolve()), kind, 0, 1, (stat.st_size, stat.st_mtime_ns))
    try:
        levels = OPENERS[kind].levels(spec, max_pixels)
        level = _coarsest_fine_enough([size for size, _ in levels], source.size, grid)
        image = OPENERS[kind](dataclasses.replace(spec, level=level))
    except ConversionError as e:
        raise ScanError(f"mask={path}: {e}") from None
    if not (np.issubdtype(image.dtype, np.integer) or image.dtype == np.bool_ or
            np.issubdtype(image.dtype, np.floating)):
        raise ScanError(f"mask={path}: samples of type {image.dtype}; a mask holds numbers (nonzero: inside)")
    _check_aspect(path, image.size, source.size)
    scale = tuple(m / n for m, n in zip(image.size, source.size, strict=True))
    description = {"kind": "image" if kind != "zarr" else "zarr", "path": str(path.resolve()),
                   "sha256": file_sha256(path) if path.is_file() else None, "level": level,
                   "size": list(image.size)}
    return RasterMask(image.read, image.size, scale, grid, description)


def _coarsest_fine_enough(sizes: list[tuple[int, int]], image: tuple[int, int], grid: CellGrid) -> int:
    """The coarsest level (sizes finest first) with at least as many pixels as the map has cells on each axis, so
    that every cell has a mask pixel of its own; level 0 when none has."""
    cells = [max(1, (n - w) // s + 1) for n, s, w in zip(image, grid.stride, grid.window, strict=True)]
    fine = [i for i, size in enumerate(sizes) if all(m >= c for m, c in zip(size, cells, strict=True))]
    return max(fine) if fine else 0


def _check_aspect(path: Path, mask: tuple[int, int], image: tuple[int, int]) -> None:
    """`ScanError` when the mask's aspect ratio is not the slide's (within one mask pixel and 1%)."""
    ratio = (mask[0] / image[0]) / (mask[1] / image[1])
    slack = _ASPECT_TOLERANCE + 1 / min(mask)
    if abs(ratio - 1) > slack:
        raise ScanError(f"mask={path} is {mask[0]:,}×{mask[1]:,} pixels, but the scanned image is "
                        f"{image[0]:,}×{image[1]:,}: a mask image is scaled to the slide, so it needs the "
                        "slide's aspect ratio (this one was made for another image, or cropped)")
