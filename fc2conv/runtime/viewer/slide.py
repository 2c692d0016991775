"""The slide under a scan, for `fc2conv view`: every level read lazily through the scanner's own readers, which check
the file as a scan does (`fc2conv.scan.source.open_source`: a TIFF's header against its data, OME-Zarr metadata field
by field, sample types, block sizes, Pillow's pixel budget).

The slide is `--slide`, or else the file the store says the scan read (`fc2conv.source.path`): a path a store can lie
about, so it is checked as `--slide` is (a file, or a folder for zarr, that can be read; no pipe or device, which
would hang a read; level 0 of the scanned size) and only its absence is not an error (the slide was moved: the view
shows the map alone)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConversionError, InputError, first_line
from ..files.paths import named
from ..images import MAX_PIXELS
from ..scanning.source import OPENERS, open_source
from .store import Scan

__all__ = ["LevelArray", "slide_levels"]


class LevelArray:
    """One level of a slide as a lazy array for napari: (H, W) or (H, W, samples); indexing reads only the region
    asked for, through the scan's own readers (`fc2conv.scan.source`)."""

    def __init__(self, source: Any):
        self.source = source
        self.shape = (*source.size, source.samples) if source.samples > 1 else tuple(source.size)
        self.dtype, self.ndim, self.size = source.dtype, len(self.shape), int(np.prod(self.shape))

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        spans, picks = [], []
        for index, length in zip(key[:2], self.shape[:2], strict=True):
            if isinstance(index, slice):
                start, stop, step = index.indices(length)
                spans.append((start, max(stop, start)))
                picks.append(slice(None, None, step))
            else:
                index = int(index) % length
                spans.append((index, index + 1))
                picks.append(0)
        (top, bottom), (left, right) = spans
        block = self.source.read(top, left, bottom, right) if bottom > top and right > left else \
            np.zeros((bottom - top, right - left, self.source.samples), self.dtype)
        return block[(*picks, key[2] if self.ndim == 3 else 0)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:, :]
        return whole.astype(dtype) if dtype is not None else whole


def slide_levels(scan: Scan, slide: Path | None = None) -> list[LevelArray] | None:
    """Every level of `slide` (default: the file the scan read, or None when it is no longer there), finest first;
    `InputError` naming `slide=` or the store's field for a file that is not a readable slide of the scanned
    size."""
    if slide is None:
        path, what = scan.slide, f"{scan.path}: fc2conv.source.path"
        if not path.exists():
            return None
    else:
        path, what = Path(slide), "slide="
        if not path.exists():
            raise InputError(f"slide={path}: no such file or directory")
    reader = scan.reader if _same_file(path, scan.slide) else "auto"
    _check_readable(path, what, reader)
    try:
        first = open_source(path, channels=3, reader=reader)
        kind = first.spec.reader
        count = len(OPENERS[kind].levels(first.spec, MAX_PIXELS))
        sources = [first, *(open_source(path, channels=3, reader=kind, level=m) for m in range(1, count))]
    except ConversionError as e:
        raise InputError(f"{what}: {e}") from None
    except Exception as e:  # the readers' libraries (tifffile, zarr, OpenSlide, Pillow) raise types of their own
        raise InputError(f"{named(what, path)}: cannot read it as a slide ({first_line(e, named=True)})") from None
    expected = tuple(scan.placement.base_size)
    if tuple(first.size) != expected:
        raise InputError(f"{named(what, path)} is {first.size[0]}×{first.size[1]} pixels at level 0, but the scan's "
                         f"source ({scan.slide}) was {expected[0]}×{expected[1]}: give the slide that was "
                         "scanned")
    return [LevelArray(source) for source in sources]


def _check_readable(path: Path, what: str, reader: str) -> None:
    """A regular file, or a folder for the zarr reader, that this process may read."""
    mode = path.stat().st_mode
    folder = stat.S_ISDIR(mode) and reader in ("auto", "zarr")
    if not (folder or stat.S_ISREG(mode)):
        kind = "a folder" if stat.S_ISDIR(mode) else "neither a file nor a folder (a pipe, socket or device)"
        raise InputError(f"{named(what, path)} is {kind}, not a slide the {reader} reader reads")
    if not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
        raise InputError(f"{named(what, path)} cannot be read: permission denied")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False
