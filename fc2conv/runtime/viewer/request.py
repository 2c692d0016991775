"""What `fc2conv view` is asked to show, checked whole before napari is imported or a display looked for: a bad
store, slide, detections file or flag is named the same on a machine with a display and on one without.

Order: the keywords that need no file (`classes` as text, `region` and `size` as numbers), the store
(`fc2conv.viewer.store`), the classes given, the region against the slide, the slide (`fc2conv.viewer.slide`), the
detections (`fc2conv.viewer.detections`), the classes shown by default (`fc2conv.viewer.choice`: those that occur),
then `screenshot`: never an input (the store or anything inside it, the
slide and the detections, given or the defaults the store names), nor inside one, nor holding one, even with
`force` (`fc2conv.runtime.files.paths.check_apart`); not a folder; not an existing file without `force`; in a
folder that can be written."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ...errors import InputError
from ..files.atomic import refuse_existing
from ..files.paths import check_apart
from ..scanning.outputs import choose_classes
from .choice import occurring
from .detections import Detections, scan_detections
from .slide import LevelArray, slide_levels
from .store import Scan, open_scan

__all__ = ["MAX_CANVAS", "MAX_LAYERS", "Request", "prepare"]

MAX_LAYERS = 32
MAX_CANVAS = 8192  # pixels a side of --screenshot: an OpenGL canvas beyond this fails in the driver, not here


@dataclass(frozen=True)
class Request:
    """A checked request: the scan, the classes to show as heatmaps, the slide's levels and the detections (None
    when there are none to show), the box of level-0 pixels to frame (top, left, bottom, right; None: everything),
    the canvas size of a screenshot, and where to save it (None: a window); `note`, without `classes`, which classes
    were chosen and how, when not every class but background is shown (`fc2conv.viewer.choice`)."""

    scan: Scan
    chosen: list[int]
    levels: list[LevelArray] | None
    detections: Detections | None
    region: tuple[int, int, int, int] | None
    size: tuple[int, int]
    screenshot: Path | None
    force: bool
    note: str | None = None


def prepare(store: Path, *, slide: Path | None = None, classes: list[str] | None = None,
            detections: Path | None = None, screenshot: Path | None = None,
            region: tuple[int, ...] | None = None, size: tuple[int, int] = (800, 1200),
            force: bool = False) -> Request:
    """Check everything `fc2conv.viewer.show` is given and everything it will read (see the module docstring);
    `InputError` naming the keyword, file or field at fault (the command shows the flag)."""
    if classes is not None and (not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes)):
        raise InputError(f"classes= takes labels or indices as text; got {classes!r:.80}")
    _check_numbers(region, "region=", 4, minimum=0)
    _check_numbers(size, "size=", 2, minimum=1, maximum=MAX_CANVAS)
    scan = open_scan(Path(store))
    chosen = None if classes is None else choose_classes(list(classes), scan.labels)
    if chosen is not None and len(chosen) > MAX_LAYERS:
        raise InputError(f"classes=: {len(chosen)} classes would make {len(chosen)} heatmap layers; choose at "
                         f"most {MAX_LAYERS}")
    if region is not None:
        _check_region(tuple(region), scan)
    levels = slide_levels(scan, None if slide is None else Path(slide))
    boxes = scan_detections(scan, None if detections is None else Path(detections))
    note = None
    if chosen is None:  # the classes that occur, ranked, at most DEFAULT_LAYERS (≤ MAX_LAYERS)
        choice = occurring(scan, boxes)
        chosen, note = choice.chosen, choice.note
    if screenshot is not None:
        screenshot = Path(screenshot)
        inputs = {"OUT.zarr": scan.path, "slide=": slide, "fc2conv.source.path": scan.slide,
                  "detections=": detections, "fc2conv.outputs.geojson": scan.geojson}
        _check_screenshot(screenshot, {what: Path(p) for what, p in inputs.items() if p is not None}, force=force)
    return Request(scan, chosen, levels, boxes, None if region is None else tuple(region), tuple(size), screenshot,
                   force, note)


def _check_screenshot(screenshot: Path, inputs: dict[str, Path], *, force: bool) -> None:
    """Apart from every input (whether or not it is read: a default the store names is an input too), a file, new
    unless `force`, in a folder that can be written."""
    check_apart({"screenshot=": screenshot}, inputs)
    if screenshot.is_dir():
        raise InputError(f"screenshot={screenshot} is a directory; give a file name to write")
    refuse_existing(screenshot, force=force)
    if not screenshot.parent.is_dir() or not os.access(screenshot.parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write screenshot={screenshot}: directory {screenshot.parent} does not "
                         "exist or is not writable")


def _check_numbers(values: tuple[int, ...] | None, keyword: str, count: int, *, minimum: int,
                   maximum: int | None = None) -> None:
    if values is None:
        return
    good = isinstance(values, (tuple, list)) and len(values) == count and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum and (maximum is None or v <= maximum)
        for v in values)
    if not good:
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
        raise InputError(f"{keyword} takes {count} whole numbers {bounds}; got {values!r:.80}")


def _check_region(region: tuple[int, ...], scan: Scan) -> None:
    """A box of level-0 pixels of the slide, not empty."""
    top, left, bottom, right = region
    height, width = scan.placement.base_size
    if not (top < bottom <= height and left < right <= width):
        raise InputError(f"region= is not a box of the slide's level-0 pixels (TOP < BOTTOM ≤ {height}, LEFT < "
                         f"RIGHT ≤ {width}); got {region!r}")
