"""`fc2conv view`: a finished scan in napari, over the slide it was made from, everything placed by the scan's own
`fc2conv.scan.placement` in the slide's physical coordinates (µm where it records a pixel size, else pixels).

Layers, bottom to top: the slide, every level read lazily through the scan's readers (`viewer.slide.LevelArray`);
one heatmap per chosen class, the OME-Zarr probability pyramid (`probabilities/0`, `/1`, …) in the class's colour
from transparent (0) to opaque (1); the detections, as rectangles in their class's colour with the label and
probability as text. napari is an optional extra (`pip install 'fc2conv[view]'`); nothing here imports torch.

The files are inputs that can lie, so everything is checked before napari is imported (`viewer.request.prepare`):
the store field by field and link by link (`viewer.store`), the slide by the scanner's readers (`viewer.slide`), the
detections row by row (`viewer.detections`), and the screenshot apart from all of them. The napari side below
reaches the files only through the checked `Request`.

napari shows a pyramid's coarser levels as if each pixel were centred on the first full-resolution pixel it covers,
not on its block: when zoomed out far enough to show level m, a heatmap is drawn up to (2^m − 1)/2 cells up and
left of its place, less than one of the pixels shown. The files' metadata is exact (`fc2conv.scan.ngff`).
"""

from __future__ import annotations

from .detections import Detections, read_detections
from .request import MAX_LAYERS, Request, prepare
from .scene import build, show
from .store import Scan, open_scan

__all__ = ["MAX_LAYERS", "Detections", "Request", "Scan", "build", "open_scan", "prepare", "read_detections", "show"]
