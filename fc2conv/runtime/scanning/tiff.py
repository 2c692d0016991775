"""TIFF and BigTIFF input: tiled or stripped, pyramidal (SubIFDs, reduced pages, SVS, OME, NDPI), read through
tifffile's zarr interface, so a read decodes only the file's tiles (or strips) it overlaps.

A TIFF's header can say anything: a 200 KB file may declare 2,000,000 × 2,000,000 pixels. Opening a level checks,
before any tile is computed, that the header describes the data: no page of the level is missing or in another
file (a multi-file OME-TIFF's XML may name any file), the level's shape is the pages' shapes together, each page
lists exactly the tiles (or strips) its declared size takes, every one of them lies inside the file (a file cut
short is named as truncated), and uncompressed pages store at least the bytes their samples take. tifffile's log
(a warning per damaged page, many thousands for a forged header) is silenced while it opens and reads the file;
these checks say what is wrong instead.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import numpy as np

from ...errors import ConversionError, InputError, first_line, translated
from ...shapes import times
from .quiet import silenced
from .readers import UNITS_UM, AxesView, Source, SourceSpec, downsample, positive, scaled

__all__ = ["TiffSource"]


class TiffSource(Source):
    def __init__(self, spec: SourceSpec):
        import zarr

        self.spec = spec
        with silenced("tifffile"):
            self._file = _open_tiff(spec.path)
            try:
                series = self._file.series[0]
                level = series.levels[spec.level]
                _check_level(spec.path, spec.level, level, self._file)
                view = AxesView(zarr.open(series.aszarr(level=spec.level), mode="r"), level.axes, spec.path)
                base = series.levels[0]
                self.base_size = tuple(base.shape[base.axes.index(a)] for a in "YX")
                self.downsample = downsample(spec.path, self.base_size, view.size, spec.level)
                self.pixel_size = scaled(_tiff_pixel_size(self._file), self.downsample)
                self.chunk_bytes = math.prod(level.keyframe.chunks) * np.dtype(level.dtype).itemsize
            except ConversionError:
                self._file.close()
                raise
            except Exception as e:  # tifffile raises many types for damaged files
                self._file.close()
                raise InputError(f"{spec.path}: cannot read level {spec.level} of it as a TIFF "
                                 f"({first_line(e, named=True)})") from None
        self._view, self.size, self.samples, self.dtype = view, view.size, view.samples, np.dtype(level.dtype)

    @staticmethod
    def levels(spec: SourceSpec, max_pixels: int | None) -> list:
        # tifffile parses the pyramid lazily and raises many types for damaged files
        with silenced("tifffile"), _open_tiff(spec.path) as tif, \
                translated(InputError, f"{spec.path}: cannot read its levels (", end=")", named=True):
            levels = [tuple(level.shape[level.axes.index(a)] for a in "YX") for level in tif.series[0].levels]
            pixel = _tiff_pixel_size(tif)
        return [(size, scaled(pixel, downsample(spec.path, levels[0], size, index)))
                for index, size in enumerate(levels)]

    def _read(self, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        with silenced("tifffile"):
            return self._view.read(top, left, bottom, right)


def _open_tiff(path: str) -> Any:
    import tifffile

    # tifffile raises many types for damaged files
    with translated(InputError, f"{path}: cannot read it as a TIFF (", end=")", named=True):
        tif = tifffile.TiffFile(path)
    try:
        holds_image = bool(tif.series) and "Y" in tif.series[0].axes and "X" in tif.series[0].axes
    except Exception as e:  # the series are parsed lazily, from metadata that may be damaged too
        tif.close()
        raise InputError(f"{path}: cannot read it as a TIFF ({first_line(e, named=True)})") from None
    if not holds_image:
        tif.close()
        raise InputError(f"{path}: cannot read it as a TIFF (it holds no image)")
    return tif


def _check_level(path: str, index: int, level: Any, tif: Any) -> None:
    """`InputError` unless the pages of pyramid level `index` are in the file `tif` itself and hold the image
    its header declares."""
    pages = list(level.pages)
    missing = sum(page is None for page in pages)
    if missing:
        raise InputError(f"{path}: {missing:,} of the {len(pages):,} pages of level {index} are missing")
    foreign = next((page.parent.filehandle.path for page in pages if page.parent is not tif), None)
    if foreign is not None:  # multi-file OME-TIFF: its XML names other files, even outside the folder
        raise InputError(f"{path}: its OME metadata takes pages of level {index} from another file, {foreign}; "
                         "fc2conv scans only the file it is given: write the image into one file")
    declared, held = math.prod(level.shape), sum(math.prod(page.shape) for page in pages)
    if declared != held:
        raise InputError(f"{path}: level {index} is declared {times(level.shape)} "
                         f"({declared:,} samples) but its pages hold {held:,}")
    end = os.path.getsize(path)
    for page in pages:
        _check_chunks(path, page, end)


def _check_chunks(path: str, page: Any, end: int) -> None:
    """`InputError` unless `page` lists the tiles (or strips) its declared size takes, all within the file's
    `end` bytes (tiles with offset or byte count 0 are declared empty, and read as zeros)."""
    key = page.keyframe
    needed = math.prod(key.chunked)
    kind = ("tile" if key.is_tiled else "strip") + ("s" if needed != 1 else "")
    offsets = np.asarray(page.dataoffsets, dtype=np.uint64)
    counts = np.asarray(page.databytecounts, dtype=np.uint64)
    if len(offsets) != needed or len(counts) != needed:
        raise InputError(f"{path}: its header declares a {key.imagelength:,}×{key.imagewidth:,} image, which "
                         f"takes {needed:,} {kind} of {times(key.chunks[:2])}, but it lists "
                         f"{min(len(offsets), len(counts)):,}: the header does not describe the data (a damaged "
                         "or forged file)")
    present = (offsets > 0) & (counts > 0)
    past = present & ((offsets > end) | (counts > end - np.minimum(offsets, np.uint64(end))))
    if past.any():
        raise InputError(f"{path} is truncated: {int(past.sum()):,} of its {needed:,} {kind} end past the "
                         f"file's {end:,} bytes")
    if key.compression == 1 and key.bitspersample % 8 == 0 and present.all():
        stored = float(counts.sum(dtype=np.float64))  # float: forged counts may add up past 2**64
        if stored < key.nbytes:
            raise InputError(f"{path}: its uncompressed {kind} ({stored:,.0f} bytes) cannot hold the "
                             f"{key.nbytes:,} bytes its declared {key.imagelength:,}×{key.imagewidth:,} image "
                             "takes")


def _tiff_pixel_size(tif: Any) -> tuple[float, float] | None:
    """Micrometres per pixel (y, x) of the first level: SVS `MPP`, OME physical size, or resolution tags; None when
    the file records none (or junk: zero, negative or not a number)."""
    page = tif.pages[0]
    if tif.is_svs:
        found = re.search(r"MPP\s*=\s*([0-9.eE+-]+)", page.description or "")
        if found and positive(found.group(1)):
            return positive(found.group(1)), positive(found.group(1))
    if tif.is_ome:
        ome = tif.ome_metadata or ""
        sizes = [re.search(rf'PhysicalSize{a}="([0-9.eE+-]+)"', ome) for a in "YX"]
        units = [re.search(rf'PhysicalSize{a}Unit="([^"]+)"', ome) for a in "YX"]
        if all(sizes):
            found = tuple(positive(s.group(1)) for s in sizes)
            if all(found):
                return tuple(f * UNITS_UM.get(u.group(1) if u else "µm", 1.0) for f, u in zip(found, units,
                                                                                               strict=True))
    tags = page.tags
    unit = {2: 25400.0, 3: 10000.0}.get(tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2)
    if unit is None or "XResolution" not in tags or "YResolution" not in tags:
        return None
    values = [tags[f"{a}Resolution"].value for a in "YX"]
    if any(not isinstance(v, tuple) or len(v) != 2 or v[0] == 0 or v[1] == 0 for v in values) or values[0] == (1, 1):
        return None  # (1, 1) is what writers put when they know nothing
    return tuple(unit * v[1] / v[0] for v in values)
