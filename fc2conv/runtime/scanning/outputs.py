"""What a finished score map gives its reader: detections (CSV and GeoJSON), and the probabilities they and the
overview read.

Both read the store one chunk at a time, so their memory is bounded by a chunk (and the overview's
`size`×`size` pixels), not by the map. Probabilities are the softmax over all classes of each cell.

- Overview: `fc2conv.scan.overview`, the map over the slide's thumbnail, with a legend.
- Detections: a peak is a cell where a chosen class has probability ≥ `threshold` and no neighbour in its chunk
  has more (a missing cell, outside a scan's mask, is never one and never hides one). Peaks are then taken best
  first, and one is dropped when its window overlaps a window already taken, of any class (one class per window,
  as the softmax says), by an intersection over union above `iou`.
  This removes the duplicates a peak leaves on both sides of a chunk border (neighbouring cells' windows
  overlap by (W − S) / (W + S), 0.78 for the digits model). Boxes are the cells' windows in input pixels of
  the scanned level, clipped to the image; the CSV gives them so. The GeoJSON gives them in level-0 pixels (the
  scanned level's downsample applied, `fc2conv.scan.placement`) as QuPath objects: each feature has
  `objectType` "detection", a `classification` with the label's `name` and `color`, and the probability among
  its `measurements` (beside the label, class index, score and cell it always had).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError

__all__ = ["Detection", "choose_classes", "class_colors", "detections", "probability_chunks", "write_csv",
           "write_geojson"]

BACKGROUND = "background"
# One colour per class, the same in the GeoJSON, the OME-Zarr channels, the OME-TIFF and `fc2conv view`: matplotlib's
# "tab10" without its grey, which marks a class labelled background.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (188, 189, 34), (23, 190, 207), (255, 221, 0)]
GREY = (128, 128, 128)


@dataclass(frozen=True)
class Detection:
    """A peak of class `class_index` at map cell (row, col); `box` is (top, left, bottom, right) in pixels."""

    class_index: int
    label: str
    score: float
    cell: tuple[int, int]
    box: tuple[int, int, int, int]


def choose_classes(classes: list[str] | None, labels: list[str]) -> list[int]:
    """Class indices from names or indices; by default every class but one labelled "background"."""
    if classes is None:
        return [k for k, label in enumerate(labels) if label.lower() != BACKGROUND] or list(range(len(labels)))
    chosen = []
    for name in classes:
        if name in labels:
            chosen.append(labels.index(name))
        elif name.isdigit() and int(name) < len(labels):
            chosen.append(int(name))
        else:
            raise InputError(f"classes=: {name!r} is neither a label nor an index of the model's {len(labels)} "
                             f"classes ({', '.join(labels[:12])}{' …' if len(labels) > 12 else ''})")
    return sorted(set(chosen))


def class_colors(labels: list[str]) -> list[tuple[int, int, int]]:
    """(red, green, blue) of each class: grey for "background", the palette in turn for the others."""
    colors, others = [], iter(range(len(labels)))
    for label in labels:
        colors.append(GREY if label.lower() == BACKGROUND else PALETTE[next(others) % len(PALETTE)])
    return colors


def probability_chunks(scores: Any) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first row, first column, probabilities) of every chunk of the map, in row-major order."""
    _, rows, cols = scores.shape
    _, step_r, step_c = scores.chunks
    for top in range(0, rows, step_r):
        for left in range(0, cols, step_c):
            logits = np.asarray(scores[:, top:top + step_r, left:left + step_c], dtype=np.float32)
            shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
            yield top, left, shifted / shifted.sum(axis=0, keepdims=True)


def detections(scores: Any, classes: list[int], labels: list[str], *, stride: tuple[int, int],
               window: tuple[int, int], image: tuple[int, int], threshold: float = 0.5,
               iou: float = 0.3) -> list[Detection]:
    """Peaks of `classes` at or above `threshold`, best first, after suppression (see the module docstring)."""
    peaks = []
    for top, left, probabilities in probability_chunks(scores):
        for k in classes:
            value = np.nan_to_num(probabilities[k], nan=-np.inf)  # a missing cell is no peak, nor higher than one
            padded = np.pad(value, 1, constant_values=-np.inf)
            highest = np.ones(value.shape, bool)
            for dy in (0, 1, 2):
                for dx in (0, 1, 2):
                    if (dy, dx) != (1, 1):
                        highest &= value >= padded[dy:dy + value.shape[0], dx:dx + value.shape[1]]
            for i, j in zip(*np.nonzero(highest & (value >= threshold)), strict=True):
                peaks.append((-float(value[i, j]), k, top + int(i), left + int(j)))
    peaks.sort()
    kept: list[Detection] = []
    buckets: dict[tuple[int, int], list[tuple[int, int]]] = {}
    height, width = window
    for negative, k, i, j in peaks:
        y, x = i * stride[0], j * stride[1]
        key = (y // height, x // width)
        near = (b for dy in (-1, 0, 1) for dx in (-1, 0, 1) for b in buckets.get((key[0] + dy, key[1] + dx), ()))
        if any(_overlap(abs(y - oy), abs(x - ox), height, width) > iou for oy, ox in near):
            continue
        buckets.setdefault(key, []).append((y, x))
        box = (y, x, min(y + height, image[0]), min(x + width, image[1]))
        kept.append(Detection(k, labels[k], -negative, (i, j), box))
    return kept


def _overlap(dy: int, dx: int, height: int, width: int) -> float:
    """Intersection over union of two height×width boxes `dy`, `dx` apart."""
    inter = max(0, height - dy) * max(0, width - dx)
    return inter / (2 * height * width - inter)


def write_csv(found: list[Detection], path: Path) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["label", "class_index", "score", "row", "col", "top", "left", "bottom", "right"])
        for d in found:
            out.writerow([d.label, d.class_index, f"{d.score:.6f}", *d.cell, *d.box])


def write_geojson(found: list[Detection], path: Path, labels: list[str] | None = None,
                  to_base: Callable[[tuple[float, float]], tuple[float, float]] | None = None) -> None:
    """A FeatureCollection of box polygons in level-0 pixel coordinates (x = column, y = row, y down; `to_base`
    maps pixel-edge coordinates (y, x) of the scanned level there, default: they are level 0), each a QuPath
    detection classified by its label, coloured as in `class_colors(labels)`."""
    colors = class_colors(labels) if labels else PALETTE
    features = []
    for d in found:
        top, left, bottom, right = d.box
        place = to_base or (lambda point: point)
        (y0, x0), (y1, x1) = place((top, left)), place((bottom, right))
        x0, y0, x1, y1 = (_number(v) for v in (x0, y0, x1, y1))
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        color = list(colors[d.class_index % len(colors)])
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"objectType": "detection", "name": d.label,
                                        "classification": {"name": d.label, "color": color},
                                        "measurements": {"probability": round(d.score, 6)},
                                        "label": d.label, "class_index": d.class_index, "score": round(d.score, 6),
                                        "cell": list(d.cell)}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def _number(value: float) -> float | int:
    """A coordinate as an int where it is one (integer downsamples), else rounded to a thousandth of a pixel."""
    return round(value) if abs(value - round(value)) < 1e-9 else round(value, 3)
