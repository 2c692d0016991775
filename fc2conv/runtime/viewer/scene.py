"""The scan in napari: `show` opens a checked `Request` (`fc2conv.viewer.request`) in a window or draws it to a
screenshot; `build` adds its layers (the slide, one heatmap per class, the detections) to a napari viewer. The
package's docstring (`fc2conv.viewer`) says what is shown and how everything is checked first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendError, ScanError, translated
from ..files.atomic import atomic_output
from .request import Request, prepare

__all__ = ["build", "show"]

_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.uint16): (0, 65535)}


def show(store: Path, *, slide: Path | None = None, classes: list[str] | None = None,
         detections: Path | None = None, screenshot: Path | None = None, region: tuple[int, ...] | None = None,
         size: tuple[int, int] = (800, 1200), force: bool = False,
         say: Callable[[str], None] | None = None) -> Path | None:
    """Open the scan `store` in napari (see the module docstring), or with `screenshot` draw it without a window
    (napari still needs a display: `xvfb-run` on a machine without one), save the canvas there and return its path.
    `slide`: default, the file the scan read, if it is still there. `detections`: a GeoJSON or CSV of the scan's
    (default: the GeoJSON the scan wrote, if it is still there). `region`: (top, left, bottom, right) in level-0
    pixels to frame. Without `classes`, the classes that occur are shown (`fc2conv.viewer.choice`), and `say` is
    given the line saying which, once napari and a display are found. Everything is checked before napari is
    imported (`fc2conv.viewer.request.prepare`): a store, slide or detections file that does not hold up, a
    screenshot that is an input, bad flags, no napari or no display raise `InputError`, `ScanError` or
    `BackendError` naming what is at fault, and nothing is written."""
    request = prepare(store, slide=slide, classes=classes, detections=detections, screenshot=screenshot,
                      region=region, size=size, force=force)
    napari = _napari()
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise BackendError("fc2conv view needs a display, and there is none (DISPLAY is not set); on a machine "
                           "without one, run it under xvfb-run (Debian's xvfb) with screenshot=")
    if request.note and say is not None:
        say(request.note)
    # Qt, OpenGL and napari fail in types of their own; the inputs were checked
    with translated(BackendError, f"napari could not draw {request.scan.path} (", end=")", named=True):
        picture = _draw(napari, request)
    if picture is None:
        return None
    from PIL import Image

    with atomic_output(request.screenshot, force=request.force) as tmp:
        Image.fromarray(np.asarray(picture)[:, :, :3]).save(tmp, format="PNG")
    return request.screenshot


def _draw(napari: Any, request: Request) -> np.ndarray | None:
    """Show the request in a napari window until it is closed (None), or draw it and return the canvas."""
    title = f"fc2conv view {request.scan.path}"
    if request.screenshot is None:
        viewer = napari.Viewer(title=title)
        build(viewer, request)
        _frame(viewer, request)
        napari.run()
        return None
    with _batch_quiet():
        viewer = napari.Viewer(title=title)  # shown: napari 0.9 draws nothing hidden
        try:
            build(viewer, request)
            viewer.window._qt_viewer.canvas.size = request.size  # private, but the only way to size the canvas
            _frame(viewer, request)
            return viewer.screenshot(canvas_only=True, flash=False)
        finally:
            viewer.close()


def build(viewer: Any, request: Request) -> None:
    """Add the slide, the heatmaps of the chosen classes and the detections of a checked `request` to a napari
    `viewer`."""
    from napari.utils.colormaps import Colormap

    scan, levels, chosen, boxes = request.scan, request.levels, request.chosen, request.detections
    placement = scan.placement
    if levels is not None:
        first = levels[0]
        rgb = first.ndim == 3 and first.shape[2] in (3, 4) and first.dtype == np.uint8
        limits = None if rgb else _RANGES.get(np.dtype(first.dtype), (0.0, 1.0))
        viewer.add_image(levels, multiscale=True, rgb=rgb, name="slide", scale=placement.base_scale,
                         translate=placement.base_translation, contrast_limits=limits,
                         **({} if rgb else {"colormap": "gray"}))
    scale, translation = placement.map_transform(0)
    for k in chosen:
        red, green, blue = (v / 255 for v in scan.colors[k])
        colormap = Colormap([[0, 0, 0, 0], [red, green, blue, 1]], name=f"fc2conv {scan.labels[k]}")
        channels = [_Channel(array, k, f"{scan.path}/probabilities/{m}") for m, array in enumerate(scan.pyramid)]
        viewer.add_image(channels, multiscale=True, name=f"p({scan.labels[k]})", scale=scale, translate=translation,
                         colormap=colormap, contrast_limits=(0, 255), opacity=0.8, blending="translucent")
    if scan.mask is not None:  # cells outside the scan's mask were not computed: shaded grey, not "probability 0"
        shade = Colormap([[0.5, 0.5, 0.5, 0.6], [0, 0, 0, 0]], name="fc2conv not scanned")
        viewer.add_image([_Channel(scan.mask, 0, f"{scan.path}/labels/mask/0")], multiscale=True, name="not scanned",
                         scale=scale, translate=translation, colormap=shade, contrast_limits=(0, 1),
                         blending="translucent")
    if boxes is not None:
        keep = [i for i, k in enumerate(boxes.classes) if k in chosen]
        if keep:
            rectangles = [boxes.boxes[i] for i in keep]
            colors = [[v / 255 for v in scan.colors[boxes.classes[i]]] + [1.0] for i in keep]
            viewer.add_shapes(rectangles, shape_type="rectangle", name="detections", edge_color=colors,
                              face_color=[0, 0, 0, 0], edge_width=float(min(placement.base_scale)),
                              features={"label": [boxes.labels[i] for i in keep],
                                        "probability": [boxes.scores[i] for i in keep]},
                              text={"string": "{label} {probability:.2f}", "color": "white", "size": 8,
                                    "anchor": "upper_left"})


class _Channel:
    """Class `k` of a classes × rows × columns zarr array, as a lazy rows × columns array."""

    def __init__(self, array: Any, k: int, name: str):
        self.array, self.k, self.name = array, k, name
        self.shape, self.dtype, self.ndim = tuple(array.shape[1:]), np.dtype(array.dtype), 2
        self.size = int(np.prod(self.shape))

    def __getitem__(self, key: Any) -> np.ndarray:
        # a chunk that does not decode: zarr and its codecs raise types of their own
        with translated(ScanError, f"{self.name}: cannot read class {self.k} (", end=")", named=True):
            return np.asarray(self.array[(self.k, *(key if isinstance(key, tuple) else (key,)))])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:, :]
        return whole.astype(dtype) if dtype is not None else whole


def _frame(viewer: Any, request: Request) -> None:
    """Fit the view to the request's region (top, left, bottom, right in level-0 pixels), or to everything."""
    viewer.reset_view()
    if request.region is None:
        return
    placement = request.scan.placement
    top, left, bottom, right = request.region
    corners = [[(e - 0.5) * s + t for e, s, t in zip(point, placement.base_scale, placement.base_translation,
                                                      strict=True)] for point in ((top, left), (bottom, right))]
    (y0, x0), (y1, x1) = corners
    height, width = viewer.window._qt_viewer.canvas.size
    viewer.camera.center = ((y0 + y1) / 2, (x0 + x1) / 2)
    viewer.camera.zoom = min(height / max(y1 - y0, 1e-9), width / max(x1 - x0, 1e-9))


@contextlib.contextmanager
def _batch_quiet() -> Iterator[None]:
    """A screenshot prints only what fc2conv says. napari 0.9 on PyQt5 (the `view` extra) prints that PyQt5 is
    deprecated (a notice, held back by a flag of a private module, and a warning), and Qt that XDG_RUNTIME_DIR is
    unset under xvfb-run: nothing a batch run can act on. Qt gets a private runtime directory, removed afterwards."""
    try:
        from napari._qt import qt_main_window
    except ImportError:
        qt_main_window = None
    if hasattr(qt_main_window, "SHOW_QT_WARNING"):
        qt_main_window.SHOW_QT_WARNING = False
    runtime = None if os.environ.get("XDG_RUNTIME_DIR") else tempfile.mkdtemp(prefix="fc2conv-view-")  # mode 0700
    if runtime:
        os.environ["XDG_RUNTIME_DIR"] = runtime
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="System theme detection requires a Qt6 backend")
            yield
    finally:
        if runtime:
            os.environ.pop("XDG_RUNTIME_DIR", None)
            shutil.rmtree(runtime, ignore_errors=True)


def _napari() -> Any:
    try:
        import napari
    except ImportError as e:
        raise BackendError(f"fc2conv view needs napari: pip install 'fc2conv[view]' (napari with PyQt5; {e})"
                           ) from None
    return napari
