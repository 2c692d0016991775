"""`--mask auto`: the slide's foreground, found on a thumbnail with scikit-image, as tissue detection in QuPath,
TIAToolbox or CLAM finds it.

1. The thumbnail (`fc2conv.scan.thumbnail`): the coarsest pyramid level at or below the scanned one whose longer
   side is at least `MIN_SIDE` pixels (or the scanned level, if smaller), averaged over k × k blocks to at most
   `TARGET` pixels a side. A slide without a pyramid is read whole for it, strip by strip.
2. A feature where the foreground is high: brightfield (`auto` on RGB, or `auto-dark`) looks for tissue darker or
   more saturated than glass, max(1 − grey, saturation); fluorescence and greyscale (`auto` on one channel, or
   `auto-bright`) for foreground brighter than the background, the intensity stretched between its 0.5th and 99.5th
   percentiles. Smoothed by a Gaussian of one thumbnail pixel.
3. Otsu's threshold, with a floor: brightfield foreground is at least `DARK_FLOOR` above the glass, the feature's
   1st percentile (at most `GLASS_AT_MOST`, for a slide that is all tissue), so clean glass alone is no
   foreground; bright foreground stands `SEPARATION` standard deviations of the background above it (so noise
   alone is none).
4. Cleaned: closed by a disk of 2 pixels, holes under `HOLES` of the thumbnail's area filled, specks under `SPECKS`
   removed, then grown by one thumbnail pixel so the tissue's edge is scanned.

A thumbnail with no foreground left is refused (exit 2): an empty slide gives no map worth writing, and a wrong
polarity is the likelier cause (`auto-dark` / `auto-bright` choose it).
"""

from __future__ import annotations

import numpy as np

from ....errors import ScanError
from ..readers import Source
from ..thumbnail import read_thumbnail
from . import CellGrid
from .raster import RasterMask

__all__ = ["DARK_FLOOR", "GLASS_AT_MOST", "MIN_SIDE", "SEPARATION", "TARGET", "auto_mask", "foreground"]

MIN_SIDE = 1024
TARGET = 2048
DARK_FLOOR = 0.08
GLASS_AT_MOST = 0.15
SEPARATION = 3.0
SPECKS = 1e-4
HOLES = 1e-3


def auto_mask(kind: str, source: Source, grid: CellGrid) -> RasterMask:
    """The foreground of `source`'s slide as a mask over its scanned level (see the module docstring)."""
    thumbnail, level, block, size = read_thumbnail(source, minimum=MIN_SIDE, target=TARGET)
    polarity = ("dark" if source.samples >= 3 else "bright") if kind == "auto" else kind.removeprefix("auto-")
    found, threshold = foreground(thumbnail, polarity)
    if not found.any():
        raise ScanError(
            f"mask={kind!r} found no foreground in {source.spec.path} (level {level}, a {thumbnail.shape[0]}×"
            f"{thumbnail.shape[1]} thumbnail, {polarity} foreground): the slide looks empty. Scan it without mask=, "
            f"or give the polarity ({'auto-bright' if polarity == 'dark' else 'auto-dark'}) or a mask file")
    scale = tuple(m / block / n for m, n in zip(size, source.size, strict=True))
    description = {"kind": kind, "polarity": polarity, "level": level, "block": block,
                   "thumbnail": list(found.shape), "threshold": round(float(threshold), 6),
                   "coverage": round(float(found.mean()), 6)}
    return RasterMask(lambda top, left, bottom, right: found[top:bottom, left:right], found.shape, scale, grid,
                      description)


def foreground(thumbnail: np.ndarray, polarity: str) -> tuple[np.ndarray, float]:
    """(cleaned foreground, threshold on the feature) of an H×W×C thumbnail of values in [0, 1]."""
    from skimage import color, filters, morphology

    if polarity == "dark":
        grey = color.rgb2gray(thumbnail[..., :3]) if thumbnail.shape[2] >= 3 else thumbnail[..., 0]
        feature = 1 - grey
        if thumbnail.shape[2] >= 3:
            feature = np.maximum(feature, color.rgb2hsv(thumbnail[..., :3])[..., 1])
    else:
        grey = color.rgb2gray(thumbnail[..., :3]) if thumbnail.shape[2] >= 3 else thumbnail[..., 0]
        low, high = np.percentile(grey, (0.5, 99.5))
        feature = np.clip((grey - low) / (high - low), 0, 1) if high > low else np.zeros_like(grey)
    feature = filters.gaussian(feature, sigma=1)
    if np.ptp(feature) == 0:
        return np.zeros(feature.shape, bool), float(feature.flat[0])
    threshold = float(filters.threshold_otsu(feature))
    if polarity == "dark":  # above the glass: the whitest pixels (or, on a slide all tissue, near-white)
        threshold = max(threshold, min(float(np.percentile(feature, 1)), GLASS_AT_MOST) + DARK_FLOOR)
    found = feature > threshold
    if polarity == "bright" and found.any() and not found.all():
        background = feature[~found]
        if feature[found].mean() - background.mean() < SEPARATION * max(background.std(), 1e-6):
            found[:] = False  # two halves of one noise, not a foreground
    area = found.size
    found = morphology.closing(found, morphology.disk(2))
    found = morphology.remove_small_holes(found, max_size=max(16, int(HOLES * area)))
    found = morphology.remove_small_objects(found, max_size=max(4, int(SPECKS * area)))
    return morphology.dilation(found, morphology.disk(1)), threshold
