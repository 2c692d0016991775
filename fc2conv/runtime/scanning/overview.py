"""The overview PNG: the map a person looks at, drawn over the slide at a readable size, with a legend.

- Size: the scanned level scaled so its longer side is `size` pixels at most and `smallest` at least (a small image
  is enlarged, pixels kept square), plus a legend band below.
- Under the map: the slide's thumbnail (`fc2conv.scan.thumbnail.picture`), or white when it cannot be read.
- The map: each picture pixel takes the cell whose square (one stride, centred on its window:
  `fc2conv.scan.placement`) covers it; where the map has more cells than the picture pixels, f × f cells are one
  block, and the block keeps its most probable chosen class (the maximum over its cells, so a peak a few cells
  wide stays visible). The pixel is painted in that class's colour with an opacity of its probability: a sure cell
  hides the slide, an unsure one lets it show. Where a cell spans fewer than 5 pixels, each pixel takes the most
  probable cell within a few pixels, so a peak one cell wide still shows as a dot.
- Missing cells (outside a scan's mask) are veiled: the slide shows through a half-white veil, unpainted.
- The legend lists the chosen classes that the map paints, by the area they cover (at most `LEGEND` of them, with a
  count of the rest), and the veil when there are missing cells.

Reads the store one chunk at a time: memory follows the picture and a chunk, not the map.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ...errors import ConversionError

__all__ = ["LEGEND", "class_map", "overview"]

LEGEND = 12
_VEIL = 0.55  # the share of white over a missing cell's slide
_ROW = 22  # legend row height in pixels
_VISIBLE = 5  # pixels a cell must span to show: smaller cells are grown (a peak a few cells wide is still a dot)


def class_map(scores: Any, chosen: list[int], factor: int) -> tuple[np.ndarray, np.ndarray]:
    """(probability, class) per block of `factor` × `factor` cells: the largest probability among the `chosen`
    classes over the block's cells and the class it belongs to (an index into `chosen`); NaN and 0 where every cell
    of the block is missing."""
    from .outputs import probability_chunks

    _, rows, cols = scores.shape
    best = np.full((math.ceil(rows / factor), math.ceil(cols / factor)), np.nan, np.float32)
    which = np.zeros(best.shape, np.int32)
    for top, left, probabilities in probability_chunks(scores):
        values = probabilities[chosen]
        for axis, first in ((1, top), (2, left)):  # the block maximum per class, blocks across chunk borders
            end = first + values.shape[axis]
            starts = [max(b * factor, first) - first for b in range(first // factor, (end - 1) // factor + 1)]
            values = np.fmax.reduceat(values, starts, axis=axis)
        found = np.nan_to_num(values, nan=-1.0)
        k, p = found.argmax(axis=0), found.max(axis=0)
        p = np.where(p < 0, np.nan, p).astype(np.float32)
        r, c = top // factor, left // factor
        here = (slice(r, r + p.shape[0]), slice(c, c + p.shape[1]))
        better = np.nan_to_num(p, nan=-1.0) > np.nan_to_num(best[here], nan=-1.0)
        best[here] = np.where(better, p, best[here])
        which[here] = np.where(better, k, which[here])
    return best, which


def overview(scores: Any, chosen: list[int], path: Path, *, labels: list[str], colors: list[tuple[int, int, int]],
             stride: tuple[int, int], window: tuple[int, int], image: tuple[int, int],
             thumbnail: Callable[[tuple[int, int]], np.ndarray] | None = None, size: int = 2048,
             smallest: int = 1024) -> tuple[int, int]:
    """Write the overview of `chosen` to `path` (see the module docstring); returns its (height, width) in pixels,
    legend included. `thumbnail(shape)` gives the slide as RGB uint8 of that shape."""
    _, rows, cols = scores.shape
    longest = min(size, max(smallest, max(image)))
    scale = longest / max(image)
    shape = (max(1, round(image[0] * scale)), max(1, round(image[1] * scale)))
    factor = max(1, math.ceil(max(rows / shape[0], cols / shape[1])))
    best, which = class_map(scores, chosen, factor)
    index = [_cells(n, scale, s, w, count, factor) for n, s, w, count in
             zip(shape, stride, window, (rows, cols), strict=True)]
    inside = (index[0] >= 0)[:, None] & (index[1] >= 0)[None, :]
    p = best[np.ix_(np.maximum(index[0], 0), np.maximum(index[1], 0))]
    k = which[np.ix_(np.maximum(index[0], 0), np.maximum(index[1], 0))]
    missing = inside & np.isnan(p)
    painted = inside & ~missing
    cell = min(scale * s for s in stride)
    if cell < _VISIBLE:  # cells smaller than a few pixels: grow each sure cell so a peak shows as a dot
        p, k = _grown(np.where(painted, np.nan_to_num(p), 0), k, len(chosen), math.ceil((_VISIBLE - cell) / 2))
    base = _slide(thumbnail, shape)
    palette = np.array([colors[c] for c in chosen], np.float32)
    alpha = np.where(painted, np.nan_to_num(p), 0)[..., None]
    picture = base * (1 - alpha) + palette[k] * alpha
    picture[missing] = picture[missing] * (1 - _VEIL) + 255 * _VEIL
    areas = np.bincount(k[painted & (np.nan_to_num(p) >= 0.5)], minlength=len(chosen))
    legend = _legend(shape[1], [(labels[c], colors[c], int(a)) for c, a in zip(chosen, areas, strict=True)],
                     bool(missing.any()))
    Image.fromarray(np.concatenate([np.rint(picture).astype(np.uint8), legend])).save(path, format="PNG")
    return shape[0] + legend.shape[0], shape[1]


def _grown(p: np.ndarray, k: np.ndarray, classes: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel takes the most probable (probability, class) within `radius` pixels: small peaks become dots."""
    from scipy import ndimage

    code = np.floor(p * 1000).astype(np.int64) * classes + k  # one number orders by probability, keeps the class
    grown = ndimage.grey_dilation(code, footprint=np.ones((2 * radius + 1,) * 2, bool))
    return (grown // classes / 1000).astype(np.float32), grown % classes


def _cells(length: int, scale: float, stride: int, window: int, count: int, factor: int) -> np.ndarray:
    """For each of `length` picture pixels along an axis, the block of cells whose square covers its centre; −1
    outside the map."""
    centres = (np.arange(length) + 0.5) / scale
    cell = np.floor((centres - (window - stride) / 2) / stride).astype(np.int64)
    return np.where((cell >= 0) & (cell < count), cell // factor, -1)


def _slide(thumbnail: Callable[[tuple[int, int]], np.ndarray] | None, shape: tuple[int, int]) -> np.ndarray:
    if thumbnail is not None:
        try:
            return thumbnail(shape).astype(np.float32)
        except ConversionError:  # the slide read for the tiles but not at a coarser level: the map alone, on white
            pass
    return np.full((*shape, 3), 255, np.float32)


def _legend(width: int, entries: list[tuple[str, tuple[int, int, int], int]], veiled: bool) -> np.ndarray:
    """The legend band: a swatch and the label of each painted class by area (at most `LEGEND`), the rest counted,
    the veil of missing cells, and how to read the colours."""
    shown = sorted((e for e in entries if e[2] > 0), key=lambda e: -e[2])
    rest = len(shown) - LEGEND
    items = [(label, color) for label, color, _ in shown[:LEGEND]]
    if rest > 0:
        items.append((f"+{rest} more", None))
    if veiled:
        items.append(("not scanned (outside the mask)", (235, 235, 235)))
    font = ImageFont.load_default(size=14)
    note = "colour: the most probable chosen class; opacity: its probability" + ("" if shown else " (none above 0.5)")
    widths = [28 + int(font.getlength(label)) + 18 for label, _ in items]
    per_row, lines, used = [], [[]], 8
    for item, w in zip(items, widths, strict=True):
        if lines[-1] and used + w > width:
            lines.append([])
            used = 8
        lines[-1].append((item, used))
        used += w
    per_row = lines if items else []
    band = Image.new("RGB", (width, _ROW * (len(per_row) + 1) + 8), "white")
    draw = ImageDraw.Draw(band)
    for row, line in enumerate(per_row):
        y = 4 + row * _ROW
        for (label, color), x in line:
            if color is not None:
                draw.rectangle([x, y + 3, x + 18, y + 17], fill=tuple(color), outline=(80, 80, 80))
            draw.text((x + 24 if color is not None else x, y + 2), label, fill=(0, 0, 0), font=font)
    draw.text((8, 4 + len(per_row) * _ROW + 2), note, fill=(90, 90, 90), font=font)
    return np.asarray(band)
