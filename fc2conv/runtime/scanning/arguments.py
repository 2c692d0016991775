"""The files of a scan, checked before any work (its flags were checked in `fc2conv.scan.options`): outputs that can
be written without touching an input or each other, a model file, a store that is the scan's own."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...errors import InputError, ScanError
from ..files.atomic import refuse_existing
from ..files.paths import check_apart, named
from . import stitch
from .masks import AUTO
from .options import ScanOptions

__all__ = ["check_arguments"]
# The outputs as the refusals name them: by their keywords (`fc2conv.runtime.files.paths.check_apart`).
_NAMES = {"overview": "overview=", "detections": "detections=", "geojson": "{} (the GeoJSON beside detections=)",
          "ome_tiff": "ome_tiff="}


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


def check_arguments(out: Path, model: Path, source: Path, options: ScanOptions) -> dict[str, Path]:
    """Check what the checked `options` leave to the files; returns the extra outputs by name (overview,
    detections, geojson, ome_tiff).

    Every output (`out`'s unfinished store and the GeoJSON beside the detections included) is apart from every
    other and from the inputs (`fc2conv.runtime.files.paths`), its folder can be written, and it does not exist yet
    unless `force` (or, for `out`, `resume`)."""
    resume, force, mask, detections = options.resume, options.force, options.mask, options.detections
    if not model.is_file():
        raise InputError(f"{model}: no such model file")
    targets = {"overview": options.overview, "detections": detections,
               "geojson": detections and detections.with_suffix(".geojson"), "ome_tiff": options.ome_tiff}
    targets = {name: Path(path) for name, path in targets.items() if path is not None}
    outputs = {"out=": out, "{} (the unfinished store of out=)": stitch.partial_path(out),
               **{_NAMES[name]: path for name, path in targets.items()}}
    inputs = {"image": source, "model=": model}
    if mask is not None and str(mask) not in AUTO:  # a mask file is an input no output may touch
        inputs["mask="] = Path(mask)
    check_apart(outputs, inputs)
    for path in outputs.values():
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK | os.X_OK):
            raise InputError(f"cannot write {path}: directory {path.parent} does not exist or is not writable")
    if not resume:
        refuse_existing(out, force=force)
    if out.exists() and not _is_store(out):  # even force=True replaces only a scan's own store
        raise ScanError(f"out={out} exists and is not the store of a scan; fc2conv replaces only its own "
                         "stores, even with force=True: name another output")
    partial = stitch.partial_path(out)
    if partial.exists() and not (resume or force):
        raise ScanError(f"an unfinished scan of {out} is at {partial}: pass resume=True to continue it or "
                         "force=True to start again")
    for name, path in targets.items():
        if path.is_dir():  # even force=True replaces only files here: a folder may hold anything
            raise InputError(f"{named(_NAMES[name], path)} is a directory; give a file name to write")
        refuse_existing(path, force=force)
    return targets

