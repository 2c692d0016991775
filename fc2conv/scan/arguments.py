"""The arguments of `fc2conv.scan.scan` that need no file read, checked before any work: flags in range, and
outputs that can be written without touching an input or each other."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InputError, ScanError
from ..storage.atomic import refuse_existing
from ..storage.paths import check_apart
from . import dispatch, stitch
from .masks import AUTO

__all__ = ["DTYPES", "check_arguments"]

DTYPES = ("float32", "float16")
_FLAGS = {"overview": "--overview", "detections": "--detections", "geojson": "--detections' GeoJSON",
          "ome_tiff": "--ome-tiff"}


def _is_store(path: Path) -> bool:
    """Whether `path` is a folder holding a zarr group whose attributes are a scan's (read as JSON, without zarr)."""
    try:
        if (path / "zarr.json").stat().st_size > 2**26:  # a scan's is a few KB: this is no store of ours
            return False
        with open(path / "zarr.json", encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested too deep to be ours
        return False
    return isinstance(found, dict) and isinstance(found.get("attributes"), dict) and \
        isinstance(found["attributes"].get(stitch.ATTRS), dict)


def check_arguments(out: Path, model: Path, source: Path, *, tile, workers, scheduler, overview, detections,
                     threshold, iou, dtype, resume, force, ome_tiff=None, mask=None, context=None,
                     approximate=False) -> dict[str, Path]:
    """Validate what needs no file read; returns the extra outputs by name (overview, detections, geojson,
    ome_tiff).

    Every output (`out`'s unfinished store and the GeoJSON beside the detections included) is apart from every
    other and from the inputs (`fc2conv.storage.paths`), its folder can be written, and it does not exist yet unless
    `force` (or, for `out`, `resume`)."""
    if dtype not in DTYPES:
        raise InputError(f"--dtype must be float32 or float16; got {dtype!r}")
    if not isinstance(tile, int) or tile < 1:
        raise InputError(f"--tile must be a positive number of pixels; got {tile!r}")
    if context is not None and (isinstance(context, bool) or not isinstance(context, int) or context < 0):
        raise InputError(f"--context must be a whole number of pixels, 0 or more; got {context!r}")
    if context is not None and not approximate:
        raise InputError(f"--context {context} widens the halo of an --approximate scan; without --approximate "
                         "each tile's halo is the model's receptive field: drop --context or pass --approximate")
    if workers is not None and scheduler is not None:
        raise InputError("give --workers (a local cluster) or --scheduler (a running one), not both")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1; got {workers}")
    if scheduler is not None:
        dispatch.check_scheduler(scheduler)
    if not 0 < threshold <= 1 or not 0 < iou <= 1:
        raise InputError(f"--threshold and --iou must be in (0, 1]; got {threshold} and {iou}")
    if not model.is_file():
        raise InputError(f"{model}: no such model file")
    targets = {"overview": overview, "detections": detections,
               "geojson": detections and Path(detections).with_suffix(".geojson"), "ome_tiff": ome_tiff}
    targets = {name: Path(path) for name, path in targets.items() if path is not None}
    flags = {"--out": out, "--out's unfinished store": stitch.partial_path(out),
             **{_FLAGS[name]: path for name, path in targets.items()}}
    inputs = {"image": source, "--model": model}
    if mask is not None and str(mask) not in AUTO:  # a mask file is an input no output may touch
        inputs["--mask"] = Path(mask)
    check_apart(flags, inputs)
    for path in flags.values():
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK | os.X_OK):
            raise InputError(f"cannot write {path}: directory {path.parent} does not exist or is not writable")
    if not resume:
        refuse_existing(out, force=force)
    if out.exists() and not _is_store(out):  # even --force replaces only a scan's own store: a folder may hold anything
        raise ScanError(f"--out {out} exists and is not the store of a scan; fc2conv replaces only its own "
                         "stores, even with --force: name another output")
    partial = stitch.partial_path(out)
    if partial.exists() and not (resume or force):
        raise ScanError(f"an unfinished scan of {out} is at {partial}: pass --resume to continue it or --force "
                         "to start again")
    for name, path in targets.items():
        if path.is_dir():  # even --force replaces only files here: a folder may hold anything
            raise InputError(f"{_FLAGS[name]} {path} is a directory; give a file name to write")
        refuse_existing(path, force=force)
    return targets

