"""Which classes `fc2conv view` shows when `--classes` is not given: those that occur in the scan, not all of them.

A 1000-class model would make 1000 heatmap layers (more than `MAX_LAYERS`, and no picture a person looks at), so by
default the view ranks the classes by how much of the scan they take:

- by detections, when the scan's detections hold any: the classes with the most detections first (the scan wrote
  them for the classes it was asked for, above its threshold);
- else by area: the cells of the probability pyramid's coarsest level (at most 256 a side; each cell the largest
  probability of each class over its block of the map) where the class is the most probable, with a probability of
  at least `FLOOR`. A cell where a class labelled "background" wins counts for no class, and that class is never
  shown by default;
- when no class reaches `FLOOR` anywhere (a model with random weights), by the largest probability anywhere.

At most `DEFAULT_LAYERS` classes are shown, and `Choice.note` says which and how they were chosen. The coarsest
level is read a block of classes at a time, so the memory stays that of a few levels of one class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..scanning.outputs import BACKGROUND
from .detections import Detections
from .store import Scan

__all__ = ["DEFAULT_LAYERS", "FLOOR", "Choice", "occurring"]

DEFAULT_LAYERS = 10
"""The most heatmap layers shown without --classes: every class of a ten-class model (digits, CIFAR-10), and few
enough colours to tell apart."""
FLOOR = 0.5
"""The smallest probability with which a class counts as occurring in a cell (the scan's default --threshold)."""
_BLOCK = 64  # classes read from the coarsest level at a time


@dataclass(frozen=True)
class Choice:
    """The classes to show (indices, ranked) and one line saying which and how they were chosen (None: every class
    there is but background, so nothing to say)."""

    chosen: list[int]
    note: str | None


def occurring(scan: Scan, detections: Detections | None, *, most: int = DEFAULT_LAYERS) -> Choice:
    """The classes of `scan` to show by default, at most `most` (see the module docstring)."""
    labels = scan.labels
    skipped = {k for k, label in enumerate(labels) if label.lower() == BACKGROUND}
    candidates = [k for k in range(len(labels)) if k not in skipped] or list(range(len(labels)))
    area, peak = _area(scan.pyramid[-1], skipped if len(candidates) < len(labels) else set())
    detected = [k for k in (detections.classes if detections else []) if k in candidates]
    counts = np.bincount(np.asarray(detected, np.int64), minlength=len(labels))
    if counts.any():
        ranked = sorted((k for k in candidates if counts[k]), key=lambda k: (-counts[k], -area[k], k))
        how = "those with the most detections"
    elif area[candidates].any():
        ranked = sorted((k for k in candidates if area[k]), key=lambda k: (-area[k], k))
        how = f"those most probable (at least {FLOOR:g}) over the most cells"
    else:
        ranked = sorted(candidates, key=lambda k: (-peak[k], k))
        how = f"no class reaches a probability of {FLOOR:g} anywhere: those with the highest probability"
    chosen = ranked[:most]
    if len(chosen) == len(candidates):
        return Choice(sorted(chosen), None)
    names = ", ".join(labels[k] for k in chosen)
    return Choice(chosen, f"showing {len(chosen)} of {len(labels)} classes, {how}: {names}; --classes to choose")


def _area(level, background: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """(cells where each class is the most probable with at least `FLOOR`, each class's largest probability) on the
    uint8 pyramid level `level` (classes × rows × columns); a cell a `background` class wins counts for no class."""
    classes = level.shape[0]
    best = np.zeros(level.shape[1:], np.uint8)
    winner = np.zeros(level.shape[1:], np.int64)
    peak = np.zeros(classes, np.int64)
    for first in range(0, classes, _BLOCK):
        block = np.asarray(level[first:first + _BLOCK])
        peak[first:first + len(block)] = block.reshape(len(block), -1).max(axis=1)
        top, where = block.max(axis=0), block.argmax(axis=0) + first
        better = top > best  # ties go to the class of the lowest index, as argmax's do
        best[better], winner[better] = top[better], where[better]
    counted = (best >= round(FLOOR * 255)) & ~np.isin(winner, list(background))
    return np.bincount(winner[counted], minlength=classes), peak
