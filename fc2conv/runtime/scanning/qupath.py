"""The probability map as an image QuPath can lay over the slide: a pyramidal OME-TIFF on the slide's own level-0
pixel grid.

QuPath places images, overlays and objects in level-0 pixels of the image open in its viewer; it does not read an
offset from a second image. So the map is written on the slide's level-0 grid: the same width, height and pixel
size, every pixel holding the probability (uint8, value / 255) of the cell whose square covers its centre (cell i's
square, from `fc2conv.scan.placement.Placement.cell_squares`, is one stride wide and centred on its window), 0
outside the map. One channel per chosen class, named by its label and coloured as everywhere else. Reduced levels
halve the size down to one tile; each samples the coarsest level of the OME-Zarr pyramid whose cells are no larger
than its pixels (so a peak survives every zoom, as the pyramid keeps each block's maximum). Tiles of 512 pixels,
deflate-compressed, written one at a time from a band of cells: memory follows the tile, not the slide.

How to open it in QuPath, and the GeoJSON detections with it, is in docs/scanning.md; QuPath itself was not run to
test this: the tests read the file back with tifffile and check its grid and values against the map.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .placement import Placement

__all__ = ["MAX_CHANNELS", "TILE", "levels", "write_ome_tiff"]

TILE = 512
MAX_CHANNELS = 32  # classes a scan writes to the OME-TIFF, each a plane as large as the slide's level 0
_BAND_BYTES = 2**24
_OME_UNITS = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm", "meter": "m"}


def levels(base_size: tuple[int, int]) -> list[tuple[int, int]]:
    """(height, width) of each level of the OME-TIFF: level 0's, halved until it fits one tile."""
    shapes = [tuple(base_size)]
    while max(shapes[-1]) > TILE:
        shapes.append(tuple(math.ceil(n / 2) for n in shapes[-1]))
    return shapes


def write_ome_tiff(pyramid: list[Any], placement: Placement, classes: list[int], labels: list[str],
                   colors: list[tuple[int, int, int]], path: Path) -> None:
    """Write the `classes` of the OME-Zarr probability `pyramid` (its zarr arrays, finest first) to `path`."""
    import tifffile

    shapes = levels(placement.base_size)
    options = {"tile": (TILE, TILE), "photometric": "minisblack", "compression": "zlib",
               "compressionargs": {"level": 1}, "dtype": np.uint8}  # deflate level 1: 2× faster, maps compress well
    metadata: dict[str, Any] = {"axes": "CYX", "Channel": {"Name": [labels[k] for k in classes],
                                                           "Color": [_ome_color(colors[k]) for k in classes]}}
    unit = _OME_UNITS.get(placement.unit or "")
    if unit:
        size_y, size_x = placement.base_scale
        metadata.update(PhysicalSizeY=size_y, PhysicalSizeYUnit=unit, PhysicalSizeX=size_x, PhysicalSizeXUnit=unit)
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:  # the staged name may not end in .ome.tif
        for n, shape in enumerate(shapes):
            extra = {"subifds": len(shapes) - 1, "metadata": metadata} if n == 0 else {"subfiletype": 1}
            if n == 0 and unit == "µm":  # for readers of plain TIFF tags, too
                extra.update(resolution=(1e4 / placement.base_scale[1], 1e4 / placement.base_scale[0]),
                             resolutionunit="CENTIMETER")
            tif.write(_tiles(pyramid, placement, classes, n, shape), shape=(len(classes), *shape), **options,
                      **extra)


def _tiles(pyramid: list[Any], placement: Placement, classes: list[int], n: int,
           shape: tuple[int, int]) -> Iterator[np.ndarray]:
    """The tiles of OME-TIFF level `n` (`shape`), channel by channel, row by row."""
    start, side = placement.cell_squares()
    m = _map_level(side, n, len(pyramid))
    cells = [_cells(length, 2**n, s0, sd, 2**m, extent) for length, s0, sd, extent in
             zip(shape, start, side, pyramid[0].shape[1:], strict=True)]
    array = pyramid[m]
    reach = max(1, _BAND_BYTES // array.shape[2])  # map rows read at once (zarr reads cost ~5 ms each)
    for k in classes:
        band, first = np.zeros((1, array.shape[2]), np.uint8), 0
        for top in range(0, shape[0], TILE):
            rows = cells[0][top:top + TILE]
            valid = rows[rows >= 0]
            if valid.size and not first <= valid.min() <= valid.max() < first + band.shape[0]:
                first = int(valid.min())
                band = np.asarray(array[k, first:max(int(valid.max()) + 1, first + reach), :])
            for left in range(0, shape[1], TILE):
                cols = cells[1][left:left + TILE]
                tile = band.take(np.clip(rows - first, 0, band.shape[0] - 1), axis=0).take(
                    np.clip(cols, 0, band.shape[1] - 1), axis=1)  # 5× faster than np.ix_ here
                if (rows < 0).any() or (cols < 0).any():
                    tile[(rows < 0)[:, None] | (cols < 0)[None, :]] = 0
                yield tile


def _map_level(side: tuple[float, float], n: int, available: int) -> int:
    """The coarsest map level whose pixels (side · 2^m level-0 pixels) are no larger than this level's (2^n)."""
    m = 0
    while m + 1 < available and max(side) * 2 ** (m + 1) <= 2**n + 1e-9:
        m += 1
    return m


def _cells(length: int, pixel: int, start: float, side: float, block: int, extent: int) -> np.ndarray:
    """For each of `length` pixels of `pixel` level-0 pixels, the row (or column) of the map level of `block` cells
    per pixel holding its centre; −1 where the centre lies outside the map's `extent` cells."""
    centres = (np.arange(length) + 0.5) * pixel
    u = np.floor((centres - start) / side).astype(np.int64)
    inside = (u >= 0) & (u < extent)
    return np.where(inside, u // block, -1)


def _ome_color(rgb: tuple[int, int, int]) -> int:
    """OME's Color: RGBA packed in a signed 32-bit integer, opaque."""
    value = (rgb[0] << 24) | (rgb[1] << 16) | (rgb[2] << 8) | 255
    return value - 2**32 if value >= 2**31 else value
