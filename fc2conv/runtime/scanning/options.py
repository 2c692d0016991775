"""How to scan (`ScanOptions`): every setting of a scan but its image, its model and its store, built and checked
once (flags in range, without reading a file) where it is made: by `fc2conv.runtime.scan` from its keywords, by the
CLI from its flags. The scan then passes it whole: to the file checks (`fc2conv.scan.arguments`), to where the tiles
run, and to the settings a resumed store must share (`resume_settings`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ...errors import InputError
from ..backends import check_backend
from ..images import MAX_PIXELS
from . import dispatch

__all__ = ["DTYPES", "ScanOptions"]

DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class ScanOptions:
    """A scan's settings (the keywords of `fc2conv.runtime.scan`).

    `tile`: input pixels per tile side, without the halo (rounded down to whole strides; at least one window; a
    tile larger than the image is the image; refused when one tile's buffers exceed `TILE_MEMORY_BUDGET`).
    `workers` / `scheduler`: a local Dask cluster of that many processes, or a running one; neither: this process.
    `level` / `mpp`: the pyramid level, by index or by pixel size in µm. `reader`: auto, tiff, zarr, openslide
    or image. `classes`: labels or indices for the overview and detections (default: all but "background").
    `overview`: a PNG path; `detections`: a CSV path (a GeoJSON of QuPath detections in level-0 pixels is written
    beside it), peaks with probability ≥ `threshold`, suppressed above `iou`; `ome_tiff`: a path for the chosen
    classes' probabilities as a pyramidal OME-TIFF on the slide's level-0 grid (`fc2conv.scan.qupath`). `resume`:
    continue a partial (or finished) store; `force`: replace existing outputs. `dtype`: float32 or float16 scores.
    `threads`: the backend's threads per process (default: its own in this process; on a cluster, the cores of each
    worker's machine over its workers' task slots: `fc2conv.scan.dispatch`). `progress`: a progress bar (None: when
    the output is a terminal). `max_pixels`: the budget for PNG/JPEG inputs, which are decoded whole. `backend` /
    `precision`: onnxruntime (fp32) or OpenVINO (fp32, bf16, fp16), or precision "auto", the same in every process
    (`fc2conv.runtime.backends`). `mask`: "auto" (or "auto-dark", "auto-bright": the foreground of a thumbnail), a
    GeoJSON of polygons in level-0 pixels, or a binary image or zarr label image scaled to the slide
    (`fc2conv.scan.masks`). `approximate` / `context`: scan a model whose cells see the whole input, with `context`
    pixels added to each side of the halo of one window (rounded up to whole strides; `fc2conv.scan.seams`).

    `InputError` naming the keyword for a value out of range or settings that do not go together.
    """

    tile: int = 2048
    workers: int | None = None
    scheduler: str | None = None
    level: int | None = None
    mpp: float | None = None
    reader: str = "auto"
    classes: tuple[str, ...] | None = None
    overview: Path | None = None
    detections: Path | None = None
    threshold: float = 0.5
    iou: float = 0.3
    resume: bool = False
    force: bool = False
    dtype: str = "float32"
    approximate: bool = False
    threads: int | None = None
    progress: bool | None = None
    max_pixels: int | None = MAX_PIXELS
    backend: str = "onnxruntime"
    precision: str = "fp32"
    ome_tiff: Path | None = None
    mask: str | Path | None = None
    context: int | None = None

    def __post_init__(self) -> None:
        for name in ("overview", "detections", "ome_tiff"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if isinstance(self.mask, os.PathLike):
            object.__setattr__(self, "mask", str(self.mask))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))
        check_backend(self.backend, self.precision)
        if self.dtype not in DTYPES:
            raise InputError(f"dtype= must be float32 or float16; got {self.dtype!r}")
        if not isinstance(self.tile, int) or isinstance(self.tile, bool) or self.tile < 1:
            raise InputError(f"tile= must be a positive number of pixels; got {self.tile!r}")
        if self.context is not None and (isinstance(self.context, bool) or not isinstance(self.context, int)
                                         or self.context < 0):
            raise InputError(f"context= must be a whole number of pixels, 0 or more; got {self.context!r}")
        if self.context is not None and not self.approximate:
            raise InputError(f"context={self.context} widens the halo of an approximate=True scan; without "
                             "approximate=True each tile's halo is the model's receptive field: drop context= or "
                             "pass approximate=True")
        if self.workers is not None and self.scheduler is not None:
            raise InputError("give workers= (a local cluster) or scheduler= (a running one), not both")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"workers= must be at least 1; got {self.workers}")
        if self.scheduler is not None:
            dispatch.check_scheduler(self.scheduler)
        if not 0 < self.threshold <= 1 or not 0 < self.iou <= 1:
            raise InputError(f"threshold= and iou= must be in (0, 1]; got {self.threshold} and {self.iou}")

    @property
    def here(self) -> bool:
        """Whether the tiles run in this process (no local cluster, no running one)."""
        return self.workers is None and self.scheduler is None
