"""The detections `fc2conv view` draws: the CSV or GeoJSON of `fc2conv scan --detections`, read as data that can lie.

`--detections`, or else the GeoJSON the store says the scan wrote (`fc2conv.outputs.geojson`; its absence is not an
error). Each is checked whole before anything is drawn, and a refusal names the file and the row or feature: a
regular file; GeoJSON `features` a list of objects whose `geometry.coordinates[0]` is a ring of (x, y) pairs of
finite numbers, CSV the columns of `fc2conv.scan.outputs.write_csv` with finite boxes (top ≤ bottom, left ≤ right);
each detection's `class_index` a class of the store, its `label` that class's label (plain text, checked by
`fc2conv.metadata.check_labels` first) and its `score` a probability in [0, 1]."""

from __future__ import annotations

import csv
import json
import math
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConversionError, ScanError, first_line
from ...metadata import check_labels
from ..files.paths import named as path_named
from .store import Scan

__all__ = ["Detections", "read_detections", "scan_detections"]

_BOX = ("top", "left", "bottom", "right")


@dataclass(frozen=True)
class Detections:
    """Boxes in physical coordinates ((top, left), (bottom, right) of each), with their labels, class indices and
    probabilities."""

    boxes: np.ndarray
    labels: list[str]
    classes: list[int]
    scores: list[float]


def scan_detections(scan: Scan, detections: Path | None = None) -> Detections | None:
    """`detections` (`detections=`), or else the GeoJSON the store records, when it is still there (None if not)."""
    if detections is not None:
        return read_detections(Path(detections), scan)
    if scan.geojson is None or not scan.geojson.exists():
        return None
    return read_detections(scan.geojson, scan, what=f"{scan.path}: fc2conv.outputs.geojson")


def read_detections(path: Path, scan: Scan, *, what: str = "detections=") -> Detections:
    """The detections of a scan's GeoJSON (level-0 pixels) or CSV (pixels of the scanned level), checked (see the
    module docstring); `what` names where the path came from in a refusal."""
    path = Path(path)
    named = path_named(what, path)
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise ScanError(f"{named}: {first_line(e)}") from None
    if not stat.S_ISREG(mode):
        raise ScanError(f"{named} is not a regular file: give the CSV or GeoJSON of `fc2conv scan --detections`")
    in_level_pixels = path.suffix.lower() == ".csv"  # the GeoJSON is in level-0 pixels
    try:
        rows = _csv_rows(path) if in_level_pixels else _geojson_rows(path)
        corners, labels, classes, scores = [], [], [], []
        for where, box, label, index, score in rows:
            corners.append(_checked(scan, where, box, label, index, score, level_pixels=in_level_pixels))
            labels.append(label)
            classes.append(index)
            scores.append(score)
    except (_Bad, ConversionError) as e:  # a field named by the checks below
        raise ScanError(f"{named}: {e}") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError, MemoryError,
            csv.Error) as e:  # a file that is not what it says: whatever the parsers raise, the answer is the same
        raise ScanError(f"{named}: not the CSV or GeoJSON of `fc2conv scan --detections` "
                        f"({first_line(e, named=True)})") from None
    placement = scan.placement
    scale, shift = np.asarray(placement.base_scale), np.asarray(placement.base_translation)
    with np.errstate(over="ignore", invalid="ignore"):  # refused just below, in a line of fc2conv's own
        boxes = (np.asarray(corners, float).reshape(-1, 2, 2) - 0.5) * scale + shift  # pixel edges → physical
    if not np.isfinite(boxes).all():
        raise ScanError(f"{named}: a box lies beyond floating point once placed on the slide")
    return Detections(boxes, labels, classes, scores)


class _Bad(ValueError):
    """A field of one detection that does not hold up (the message names it)."""


def _csv_rows(path: Path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [k for k in (*_BOX, "label", "class_index", "score") if k not in (reader.fieldnames or [])]
        if missing:
            raise _Bad(f"the columns {', '.join(missing)} are missing (found {reader.fieldnames!r:.80})")
        for n, row in enumerate(reader, start=2):  # line 1 is the header
            yield (f"line {n}", [_number(row[k], f"line {n}: {k}", text=True) for k in _BOX], row["label"],
                   _whole(row["class_index"], f"line {n}: class_index", text=True),
                   _number(row["score"], f"line {n}: score", text=True))


def _geojson_rows(path: Path):
    features = json.loads(path.read_text(encoding="utf-8"))["features"]
    if not isinstance(features, list):
        raise _Bad(f"features must be a list; got {type(features).__name__}")
    for i, feature in enumerate(features):
        where = f"features[{i}]"
        if not isinstance(feature, dict) or not isinstance(feature.get("properties"), dict):
            raise _Bad(f"{where} must be an object with properties")
        ring = feature["geometry"]["coordinates"][0]
        if not isinstance(ring, list) or not ring or not all(
                isinstance(p, list) and len(p) == 2 and all(_finite(v) for v in p) for p in ring):
            raise _Bad(f"{where}.geometry.coordinates[0] must be a ring of (x, y) pairs of finite numbers")
        xs, ys = [p[0] for p in ring], [p[1] for p in ring]
        props = feature["properties"]
        yield (where, [min(ys), min(xs), max(ys), max(xs)], props["label"],
               _whole(props["class_index"], f"{where}.properties.class_index"),
               _number(props["score"], f"{where}.properties.score"))


def _checked(scan: Scan, where: str, box: list[float], label: Any, index: int, score: float, *,
             level_pixels: bool) -> list[tuple[float, float]]:
    """The box's corners in level-0 pixel edges, once the detection is one of this scan's."""
    check_labels([label], source=where)
    if not 0 <= index < len(scan.labels) or label != scan.labels[index]:
        raise _Bad(f"{where}: class {index} labelled {label!r} is not a class of the scan (its labels: "
                   f"{', '.join(scan.labels[:12])}{' …' if len(scan.labels) > 12 else ''})")
    if not 0 <= score <= 1:
        raise _Bad(f"{where}: score {score} is not a probability in [0, 1]")
    top, left, bottom, right = box
    if top > bottom or left > right:
        raise _Bad(f"{where}: the box {tuple(box)} ends before it starts")
    if not level_pixels:  # the GeoJSON is in level-0 pixels already
        return [(top, left), (bottom, right)]
    to_base = scan.placement.level_edges_to_base
    return [to_base((top, left)), to_base((bottom, right))]


def _number(value: Any, where: str, *, text: bool = False) -> float:
    """A finite number; from a CSV (`text`), written as one."""
    number = float(value) if text and isinstance(value, str) else value
    if not _finite(number):
        raise _Bad(f"{where} must be a finite number; got {value!r:.40}")
    return float(number)


def _whole(value: Any, where: str, *, text: bool = False) -> int:
    """A whole number; from a CSV (`text`), written as one."""
    if text and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"{where} must be a whole number; got {value!r:.40}")
    return value


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
