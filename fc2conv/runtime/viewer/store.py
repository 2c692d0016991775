"""A finished scan's store, read for `fc2conv view` as strictly as `fc2conv scan` reads its inputs.

A store is a folder anyone can edit, so `open_scan` checks every part of it the viewer uses before anything uses
it, and returns them as a `Scan` (nothing else of the store is reachable from it). A refusal names the store and the
field (`fc2conv.stride`, `probabilities: ome.multiscales[0].datasets[1].path`):

- no entry of the store, at any depth (its zarr.json files, the pyramid's levels, chunk folders and chunks), is a
  symbolic link that resolves outside it, nor anything but a folder or a regular file (a pipe would hang a read);
- `fc2conv` (the root's attributes): `complete` true; `labels` a non-empty list of plain text
  (`fc2conv.metadata.check_labels`); `stride` and `window` two positive whole numbers; `placement` its
  `level_scale` and `base_scale` two positive finite numbers, `level_translation` and `base_translation` two finite
  ones, `base_size` two positive whole numbers, `unit` absent or plain text, and the map's transforms it gives at
  every pyramid level finite; `source.path` an absolute path and `source.reader` one of the scanner's readers;
  `outputs.geojson`, when given, an absolute path. The two paths are data the file claims: the slide and the
  detections they name are checked when they are read (`fc2conv.viewer.slide`, `fc2conv.viewer.detections`);
- `probabilities`: `fc2conv.complete` true and `fc2conv.levels` the pyramid's shapes, level 0 halved (rounding up)
  down to 256 cells a side; its NGFF metadata read by the scanner's own OME-Zarr reader
  (`fc2conv.scan.zarr_source`: datasets inside the store, transforms positive and finite, one dimension per axis),
  with axes c, y, x in the placement's unit, one dataset per level, each a uint8 array of one channel per label
  and that level's shape, placed where `placement` puts that level (`fc2conv.scan.placement`);
- a masked scan's (`fc2conv.mask` present) `labels/mask/0`: uint8, one channel of the map's shape.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ScanError, translated
from ...metadata import check_labels, forged_character
from ..scanning import ngff
from ..scanning.outputs import class_colors
from ..scanning.placement import Placement
from ..scanning.source import OPENERS
from ..scanning.zarr_source import check_contained, read_levels

__all__ = ["Scan", "open_scan"]

_LARGEST = 2**53  # a whole number of pixels beyond this is no slide's, and floats stop counting exactly
_MAX_LEVELS = 64
_MISSING = object()


@dataclass(frozen=True)
class Scan:
    """A finished scan, every field checked: its store, labels and their colours, where the map lies on the slide,
    the probability pyramid (uint8 zarr arrays, classes × rows × columns, finest first), and the slide and GeoJSON
    the store says the scan read and wrote (paths as recorded: they may be gone, or lie)."""

    path: Path
    labels: list[str]
    colors: list[tuple[int, int, int]]
    placement: Placement
    pyramid: list[Any]
    slide: Path
    reader: str
    geojson: Path | None
    mask: Any | None = None  # a masked scan's cells' mask (uint8, 1 × rows × columns, 1: computed), else None


def open_scan(path: Path) -> Scan:
    """The scan at `path`, checked (see the module docstring); `ScanError` naming the store and the field
    otherwise."""
    import zarr

    path = Path(path)
    not_ours = f"{path} is not a scan written by fc2conv: give the OUT.zarr of `fc2conv scan`"
    if not path.is_dir():
        raise ScanError(not_ours)
    check_contained(path, path, "an entry", regular=True)
    try:
        attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    except Exception:  # not a zarr group: whatever zarr raises, the answer is the same
        raise ScanError(not_ours) from None
    fields = attrs.get("fc2conv")
    if not isinstance(fields, dict):
        raise ScanError(not_ours)
    if fields.get("complete") is not True:
        raise ScanError(f"{path} is an unfinished scan: finish it with `fc2conv scan … --out {path} --resume`")
    labels = _get(path, fields, "labels")
    if not isinstance(labels, list) or not labels:
        raise _wrong(path, "fc2conv.labels", "a non-empty list of class names", labels)
    check_labels(labels, source=f"{path}: fc2conv.labels")
    source = _object(path, fields, "source")
    slide = _absolute(path, "fc2conv.source.path", _get(path, source, "source.path"))
    reader = _get(path, source, "source.reader")
    if not isinstance(reader, str) or reader not in OPENERS:
        raise _wrong(path, "fc2conv.source.reader", f"one of {', '.join(OPENERS)}", reader)
    outputs = fields.get("outputs")
    if outputs is not None and not isinstance(outputs, dict):
        raise _wrong(path, "fc2conv.outputs", "an object", outputs)
    found = (outputs or {}).get("geojson")
    geojson = None if found is None else _absolute(path, "fc2conv.outputs.geojson", found)
    placement = _placement(path, fields)
    pyramid = _pyramid(path, labels, placement)
    mask = _mask(path, fields, tuple(pyramid[0].shape[1:])) if "mask" in fields else None
    return Scan(path, labels, class_colors(labels), placement, pyramid, slide, reader, geojson, mask)


def _mask(store: Path, fields: dict, shape: tuple[int, int]) -> Any:
    """The cells' mask of a masked scan (`fc2conv.mask` recorded): `labels/mask/0`, uint8, 1 × the map's shape."""
    import zarr

    try:
        array = zarr.open_array(str(store / ngff.MASK_LABEL / "0"), mode="r")
    except Exception:  # missing or not an array: whatever zarr raises, the answer is the same
        raise ScanError(f"{store}: fc2conv.mask says the scan was masked, but labels/mask/0 is not an "
                        "array") from None
    if array.dtype != np.uint8 or tuple(array.shape) != (1, *shape):
        raise ScanError(f"{store}: labels/mask/0 is {array.dtype} of shape {tuple(array.shape)}; a scan's "
                        f"cells' mask is uint8 of shape {(1, *shape)}")
    return array


def _placement(store: Path, fields: dict) -> Placement:
    """The placement the store records, each number checked (see the module docstring)."""
    stride = _pair(store, "fc2conv.stride", _get(store, fields, "stride"), "whole")
    window = _pair(store, "fc2conv.window", _get(store, fields, "window"), "whole")
    found = _object(store, fields, "placement")
    values = {key: _pair(store, f"fc2conv.placement.{key}", _get(store, found, f"placement.{key}"), kind)
              for key, kind in (("level_scale", "positive"), ("level_translation", "finite"),
                                ("base_scale", "positive"), ("base_translation", "finite"), ("base_size", "whole"))}
    unit = found.get("unit")
    if unit is not None and (not isinstance(unit, str) or not unit or len(unit) > 100 or forged_character(unit)):
        raise _wrong(store, "fc2conv.placement.unit", "absent, null or a unit's name in plain text", unit)
    far = [(n - 0.5) * s + t for n, s, t in zip(values["base_size"], values["base_scale"], values["base_translation"],
                                                 strict=True)]
    if not all(math.isfinite(v) for v in far):  # where --region and the slide's layer are placed
        raise ScanError(f"{store}: fc2conv.placement puts the slide's far corner at {_shown(far)}, beyond "
                        "floating point")
    return Placement(values["level_scale"], values["level_translation"], values["base_scale"],
                     values["base_translation"], stride, window, values["base_size"], unit)


def _pyramid(store: Path, labels: list[str], placement: Placement) -> list[Any]:
    """The probability pyramid's arrays, once its metadata, their shapes and types and their placement hold up."""
    import zarr


    folder = store / ngff.PROBABILITIES
    no_map = (f"{store} holds no OME-Zarr map (fc2conv wrote none before this version): add it with the same "
              "`fc2conv scan` command and --resume, which computes no tile again")
    if not folder.is_dir():
        raise ScanError(no_map)
    # zarr raises many types for metadata it cannot read
    with translated(ScanError, f"{folder}: cannot open it as a zarr group (", end=")", named=True):
        attrs = zarr.open_group(str(folder), mode="r").attrs.asdict()
    ours = attrs.get("fc2conv")
    if not isinstance(ours, dict) or ours.get("complete") is not True:
        raise ScanError(no_map)
    where = f"{folder}: fc2conv.levels"
    levels = ours.get("levels", _MISSING)
    if not isinstance(levels, list) or not 0 < len(levels) <= _MAX_LEVELS:
        raise ScanError(f"{where} must list the pyramid's levels as [rows, columns]; got {_shown(levels)}")
    shapes = [_pair(folder, f"fc2conv.levels[{m}]", level, "whole") for m, level in enumerate(levels)]
    expected = ngff.level_shapes(shapes[0])
    if shapes != expected:
        raise ScanError(f"{where} lists {len(shapes)} levels {_shown(shapes)}, but a map of "
                        f"{shapes[0][0]}×{shapes[0][1]} cells makes {len(expected)}: {_shown(expected)}")
    found = read_levels(str(folder))  # the scanner's own OME-Zarr reader, every field checked
    field = f"{folder}: ome.multiscales[0]"
    if found.axes != "CYX":
        raise ScanError(f"{field}.axes must be c, y, x; got {', '.join(found.axes.lower())}")
    multiscales = attrs["multiscales"] if "multiscales" in attrs else attrs["ome"]["multiscales"]  # as read above
    for a, axis in enumerate(multiscales[0]["axes"][1:], start=1):
        unit = axis.get("unit") if isinstance(axis, dict) else None
        if unit != placement.unit:
            raise ScanError(f"{field}.axes[{a}].unit is {_shown(unit)}, but fc2conv.placement.unit says "
                            f"{_shown(placement.unit)}: the map and the slide would be placed apart")
    if len(found.arrays) != len(shapes):
        raise ScanError(f"{field}.datasets lists {len(found.arrays)} levels, but fc2conv.levels {len(shapes)}")
    for m, (array, shape, transform) in enumerate(zip(found.arrays, shapes, found.transforms, strict=True)):
        where = f"{field}.datasets[{m}]"
        if np.dtype(array.dtype) != np.uint8 or tuple(array.shape) != (len(labels), *shape):
            raise ScanError(f"{where} is a {array.dtype} array of shape {tuple(array.shape)}, not uint8 of "
                            f"{(len(labels), *shape)}: one channel per label of fc2conv.labels")
        wanted = placement.map_transform(m)
        if not all(math.isfinite(v) for pair in wanted for v in pair):
            raise ScanError(f"{store}: fc2conv.placement with fc2conv.stride and fc2conv.window puts pyramid "
                            f"level {m} at {_shown(wanted)}, beyond floating point")
        if transform is None or not _close(transform, wanted):
            raise ScanError(f"{where}.coordinateTransformations place level {m} at {_shown(transform)} (scale, "
                            f"translation of y, x), but fc2conv.placement puts it at {_shown(wanted)}")
    return found.arrays


def _close(found: tuple, wanted: tuple) -> bool:
    """Whether two (scale, translation) pairs agree within floating point rounding."""
    return all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9 * max(abs(s) for s in wanted[0]))
               for pair_a, pair_b in zip(found, wanted, strict=True) for a, b in zip(pair_a, pair_b, strict=True))


def _get(store: Path, fields: dict, key: str) -> Any:
    """The field `key` (dotted from `fc2conv`, e.g. "source.path") of `fields`, the object holding its last part."""
    value = fields.get(key.rpartition(".")[2], _MISSING)
    if value is _MISSING:
        raise ScanError(f"{store}: fc2conv.{key} is missing; fc2conv view needs it (a store of `fc2conv scan` "
                        "has it)")
    return value


def _object(store: Path, fields: dict, key: str) -> dict:
    value = _get(store, fields, key)
    if not isinstance(value, dict):
        raise _wrong(store, f"fc2conv.{key}", "an object", value)
    return value


def _pair(store: Path, field: str, value: Any, kind: str) -> tuple:
    """Two numbers (y, x): "whole" positive whole numbers, "positive" positive finite, "finite" finite ones."""
    def good(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if kind == "whole":
            return isinstance(v, int) and 0 < v <= _LARGEST
        return math.isfinite(v) and (kind == "finite" or v > 0)

    if not isinstance(value, list) or len(value) != 2 or not all(good(v) for v in value):
        wanted = {"whole": "positive whole numbers", "positive": "positive finite numbers",
                  "finite": "finite numbers"}[kind]
        raise _wrong(store, field, f"two {wanted} (y, x)", value)
    return tuple(value) if kind == "whole" else tuple(float(v) for v in value)


def _absolute(store: Path, field: str, value: Any) -> Path:
    """A path the store records: absolute text, without a character that would forge what a message shows."""
    if not isinstance(value, str) or not os.path.isabs(value) or "\0" in value or forged_character(value):
        raise _wrong(store, field, "an absolute path in plain text", value)
    return Path(value)


def _wrong(store: Path, field: str, wanted: str, value: Any) -> ScanError:
    return ScanError(f"{store}: {field} must be {wanted}; got {_shown(value)}")


def _shown(value: Any, limit: int = 80) -> str:
    """`value` as Python shows it (control characters escaped), cut short: a store can hold anything, and messages
    stay a line."""
    text = "nothing" if value is _MISSING else repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"
