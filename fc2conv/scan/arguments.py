"""The arguments of `fc2conv.scan.scan` that need no file read, checked before any work: flags in range, and
outputs that can be written without touching an input."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConversionError
from ..storage.atomic import refuse_existing
from . import dispatch, stitch

__all__ = ["DTYPES", "check_arguments"]

DTYPES = ("float32", "float16")
_FLAGS = {"overview": "--overview", "detections": "--detections", "geojson": "--detections' GeoJSON",
          "ome_tiff": "--ome-tiff"}


def check_arguments(out: Path, model: Path, source: Path, *, tile, workers, scheduler, overview, detections,
                     threshold, iou, dtype, resume, force, ome_tiff=None) -> dict[str, Path]:
    """Validate what needs no file read; returns the extra outputs by name (overview, detections, geojson,
    ome_tiff).

    No output (nor `out`'s unfinished store) may be an input, lie inside one or hold one, after following
    symbolic links."""
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype must be float32 or float16; got {dtype!r}")
    if not isinstance(tile, int) or tile < 1:
        raise ConversionError(f"--tile must be a positive number of pixels; got {tile!r}")
    if workers is not None and scheduler is not None:
        raise ConversionError("give --workers (a local cluster) or --scheduler (a running one), not both")
    if workers is not None and workers < 1:
        raise ConversionError(f"--workers must be at least 1; got {workers}")
    if scheduler is not None:
        dispatch.check_scheduler(scheduler)
    if not 0 < threshold <= 1 or not 0 < iou <= 1:
        raise ConversionError(f"--threshold and --iou must be in (0, 1]; got {threshold} and {iou}")
    if not model.is_file():
        raise ConversionError(f"{model}: no such model file")
    targets = {"overview": overview, "detections": detections,
               "geojson": detections and Path(detections).with_suffix(".geojson"), "ome_tiff": ome_tiff}
    targets = {name: Path(path) for name, path in targets.items() if path is not None}
    flags = {"--out": out, "--out's unfinished store": stitch.partial_path(out),
             **{_FLAGS[name]: path for name, path in targets.items()}}
    for flag, path in flags.items():
        _check_apart(flag, path, source=source, model=model)
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK | os.X_OK):
            raise ConversionError(f"cannot write {path}: directory {path.parent} does not exist or is not writable")
    if not resume:
        refuse_existing(out, force=force)
    partial = stitch.partial_path(out)
    if partial.exists() and not (resume or force):
        raise ConversionError(f"an unfinished scan of {out} is at {partial}: pass --resume to continue it or --force "
                              "to start again")
    for path in targets.values():
        refuse_existing(path, force=force)
    return targets


def _check_apart(flag: str, path: Path, *, source: Path, model: Path) -> None:
    """`ConversionError` if the output `path` is an input, lies inside one, or holds one, after following symbolic
    links (or is the same file under another name): writing it, or replacing it with --force, would destroy that
    input."""
    for given in (source, model):
        output, data = Path(os.path.realpath(path)), Path(os.path.realpath(given))
        if output == data or (path.exists() and given.exists() and path.samefile(given)):
            raise ConversionError(f"{flag} {path} is the input {given}; writing it would destroy that input: name "
                                  "another output")
        if data in output.parents:
            raise ConversionError(f"{flag} {path} lies inside the input {given}; fc2conv never writes into its "
                                  "inputs: name an output outside it")
        if output in data.parents:
            raise ConversionError(f"{flag} {path} holds the input {given}; replacing it would destroy that input: "
                                  "name another output")
