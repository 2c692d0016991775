"""The input of a scan: which reader opens it, and which level of it is scanned.

`open_source` picks the reader (a directory or `.zarr` → zarr; TIFF or BigTIFF by its first bytes → tifffile;
what OpenSlide recognises → OpenSlide; anything else → Pillow, whole) unless `reader` says, then the level:
`level` by index, or `mpp`, the level whose pixel size is within 10% of it. It checks up front what would
otherwise fail mid-scan: a TIFF whose header does not describe its data, OME-Zarr metadata that does not hold
up, a missing level or pixel size, samples with no defined range, file chunks too large to decode within the
memory budget. The readers themselves are in `fc2conv.scan.readers`, `.tiff` and `.zarr_source`.

A `Source` is one level: its size, samples per pixel, sample type, downsample from level 0 and pixel size in
micrometres where the file records one; `read(top, left, bottom, right)` gives H×W×C samples of the file's own
type. `SourceSpec` is the picklable description a worker reopens (`reopen` keeps one open source per process);
its `stamp` (size and modification time) lets a resumed scan notice that the input changed.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..images import MAX_PIXELS
from .readers import ImageSource, SlideSource, Source, SourceSpec
from .tiff import TiffSource
from .tiles import TILE_MEMORY_BUDGET
from .zarr_source import ZarrSource

__all__ = ["OPENERS", "READERS", "Source", "SourceSpec", "detect_reader", "open_source", "reopen"]

OPENERS: dict[str, type[Source]] = {"tiff": TiffSource, "zarr": ZarrSource, "openslide": SlideSource,
                                    "image": ImageSource}

READERS = ("auto", "tiff", "zarr", "openslide", "image")
_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
_SAMPLE_TYPES = (np.uint8, np.uint16, np.bool_, np.float16, np.float32, np.float64)
_MPP_TOLERANCE = 0.1


def open_source(path: str | os.PathLike, *, channels: int, reader: str = "auto", level: int | None = None,
                mpp: float | None = None, max_pixels: int | None = MAX_PIXELS) -> Source:
    """The chosen level of `path` (`level`, or the one whose pixel size is within 10% of `mpp` µm; default 0).

    `InputError` names the file (and field) and the reason: a file no reader understands, a TIFF whose
    header does not describe its data, OME-Zarr metadata that does not hold up, a level the file does not have, a
    pixel size it does not record, samples of a type with no defined range, a file chunk that takes more than
    `TILE_MEMORY_BUDGET` to decode, or (for Pillow's formats) more than `max_pixels` pixels.
    """
    if reader not in READERS:
        raise InputError(f"reader must be one of {', '.join(READERS)}; got {reader!r}")
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    kind = detect_reader(path) if reader == "auto" else reader
    stat = path.stat()
    spec = SourceSpec(str(path.resolve()), kind, 0, channels, (stat.st_size, stat.st_mtime_ns))
    opener = OPENERS[kind]
    levels = opener.levels(spec, max_pixels)
    chosen = _choose_level(path, levels, level, mpp)
    source = opener(SourceSpec(spec.path, kind, chosen, channels, spec.stamp))
    if source.dtype.type not in _SAMPLE_TYPES:
        raise InputError(f"{path}: samples of type {source.dtype} have no defined range; fc2conv scans uint8, "
                         "uint16, bool or float samples in [0, 1]")
    if source.chunk_bytes > TILE_MEMORY_BUDGET:
        raise InputError(f"{path} stores its image in blocks that take {source.chunk_bytes / 2**30:,.1f} GiB "
                         f"each to decode, more than the memory budget of {TILE_MEMORY_BUDGET / 2**30:g} GiB "
                         "(fc2conv.scan.TILE_MEMORY_BUDGET); rewrite it in smaller tiles or chunks (e.g. `vips "
                         "tiffsave IN OUT.tif --tile --pyramid --bigtiff`)")
    return source


@functools.lru_cache(maxsize=2)
def reopen(spec: SourceSpec) -> Source:
    """The source `spec` describes, opened once per process (workers keep it for every tile they read)."""
    return OPENERS[spec.reader](spec)


def detect_reader(path: Path) -> str:
    """The reader for `path`: zarr for a folder or `.zarr`, tiff by its first bytes, openslide for what OpenSlide
    recognises, else image (Pillow)."""
    if path.is_dir() or path.suffix == ".zarr":
        return "zarr"
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic in _TIFF_MAGIC:
        return "tiff"
    try:
        import openslide
    except ImportError:
        openslide = None
    if openslide is not None and openslide.OpenSlide.detect_format(str(path)) is not None:
        return "openslide"
    return "image"


def _choose_level(path: Path, levels: list[tuple[tuple[int, int], tuple[float, float] | None]],
                  level: int | None, mpp: float | None) -> int:
    """`levels` lists (size, pixel size in µm or None) from the finest level down."""
    if level is not None and mpp is not None:
        raise InputError("give level= or mpp=, not both")
    if level is not None:
        if not 0 <= level < len(levels):
            raise InputError(f"{path} has levels 0 … {len(levels) - 1}; got level={level}")
        return level
    if mpp is None:
        return 0
    if mpp <= 0:
        raise InputError(f"mpp= must be a positive pixel size in micrometres; got {mpp}")
    sizes = [(i, math.sqrt(p[0] * p[1])) for i, (_, p) in enumerate(levels) if p is not None]
    if not sizes:
        raise InputError(f"{path} records no pixel size, so mpp= cannot choose a level; use level=")
    best, found = min(sizes, key=lambda item: abs(math.log(item[1] / mpp)))
    if abs(found / mpp - 1) > _MPP_TOLERANCE:
        listed = ", ".join(f"level {i}: {p:.4g} µm" for i, p in sizes)
        raise InputError(f"{path} has no level within 10% of {mpp} µm per pixel ({listed})")
    return best
