"""What `fc2conv view` shows, read without napari: a finished scan's store and map pyramid, the slide's levels as
lazy arrays, and the detections, all in the slide's physical coordinates (`fc2conv.scan.placement`)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConversionError
from ..scan import ngff
from ..scan.outputs import class_colors
from ..scan.placement import Placement

__all__ = ["Detections", "LevelArray", "Scan", "open_scan", "read_detections", "slide_levels"]


@dataclass(frozen=True)
class Scan:
    """A finished scan: its store, metadata, placement, labels and colours, and the probability pyramid (zarr
    arrays, finest first)."""

    path: Path
    attrs: dict[str, Any]
    placement: Placement
    labels: list[str]
    colors: list[tuple[int, int, int]]
    pyramid: list[Any]


def open_scan(path: Path) -> Scan:
    """The scan at `path`; `ConversionError` naming it if it is not a finished fc2conv scan with its OME-Zarr map."""
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = group.attrs.asdict()["fc2conv"]
        labels = list(attrs["labels"])
    except Exception:  # not a zarr group, or not ours: whatever zarr raises, the answer is the same
        raise ConversionError(f"{path} is not a scan written by fc2conv: give the OUT.zarr of `fc2conv scan`") from None
    if not attrs.get("complete"):
        raise ConversionError(f"{path} is an unfinished scan: finish it with `fc2conv scan … --out {path} --resume`")
    if not ngff.finished(group):
        raise ConversionError(f"{path} holds no OME-Zarr map (fc2conv wrote none before this version): add it with "
                              f"the same `fc2conv scan` command and --resume, which computes no tile again")
    levels = group[ngff.PROBABILITIES].attrs["fc2conv"]["levels"]
    pyramid = [group[f"{ngff.PROBABILITIES}/{m}"] for m in range(len(levels))]
    return Scan(Path(path), attrs, Placement.from_attrs(attrs), labels, class_colors(labels), pyramid)


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


def slide_levels(path: Path, scan: Scan) -> list[LevelArray]:
    """Every level of the slide at `path`, finest first, after checking that its level 0 is the scan's source's
    (`ConversionError` naming --slide and both sizes otherwise)."""
    from ..scan.source import OPENERS, SourceSpec, _detect

    if not path.exists():
        raise ConversionError(f"--slide {path}: no such file or directory")
    kind = scan.attrs["source"].get("reader") if path.resolve() == Path(scan.attrs["source"]["path"]) else None
    kind = kind or _detect(path)
    spec = SourceSpec(str(path.resolve()), kind, 0, 3)
    sizes = [size for size, _ in OPENERS[kind].levels(spec, None)]
    expected = tuple(scan.placement.base_size)
    if tuple(sizes[0]) != expected:
        raise ConversionError(f"--slide {path} is {sizes[0][0]}×{sizes[0][1]} pixels at level 0, but the scan's source "
                              f"({scan.attrs['source']['path']}) was {expected[0]}×{expected[1]}: give the slide that "
                              "was scanned")
    return [LevelArray(OPENERS[kind](SourceSpec(spec.path, kind, level, 3))) for level in range(len(sizes))]


@dataclass(frozen=True)
class Detections:
    """Boxes in physical coordinates ((top, left), (bottom, right) of each), with their labels, class indices and
    probabilities."""

    boxes: np.ndarray
    labels: list[str]
    classes: list[int]
    scores: list[float]


def read_detections(path: Path, scan: Scan) -> Detections:
    """The detections of a scan's GeoJSON (level-0 pixels) or CSV (pixels of the scanned level)."""
    placement, corners, labels, classes, scores = scan.placement, [], [], [], []
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    box = [float(row[k]) for k in ("top", "left", "bottom", "right")]
                    corners.append([placement.level_edges_to_base(tuple(box[:2])),
                                    placement.level_edges_to_base(tuple(box[2:]))])
                    labels.append(row["label"])
                    classes.append(int(row["class_index"]))
                    scores.append(float(row["score"]))
        else:
            for feature in json.loads(path.read_text())["features"]:
                ring = np.asarray(feature["geometry"]["coordinates"][0], float)
                corners.append([(ring[:, 1].min(), ring[:, 0].min()), (ring[:, 1].max(), ring[:, 0].max())])
                props = feature["properties"]
                labels.append(props["label"])
                classes.append(int(props["class_index"]))
                scores.append(float(props["score"]))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise ConversionError(f"--detections {path}: not the CSV or GeoJSON of `fc2conv scan --detections` ({e})"
                              ) from None
    scale, shift = np.asarray(placement.base_scale), np.asarray(placement.base_translation)
    boxes = (np.asarray(corners, float).reshape(-1, 2, 2) - 0.5) * scale + shift  # pixel edges → physical
    return Detections(boxes, labels, classes, scores)
