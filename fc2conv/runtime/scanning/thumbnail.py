"""A small picture of the scanned level: what `--mask auto` thresholds and what the overview draws the map over.

The coarsest pyramid level at or below the scanned one whose longer side is at least `minimum` pixels (or the
scanned level, if smaller) is read in strips of rows (memory stays a strip's, even for a slide without a pyramid,
which is then read whole) and averaged over k × k blocks, k chosen so the longer side is at most `target`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .readers import Source

__all__ = ["picture", "read_thumbnail", "unit"]

_STRIP_BYTES = 2**26


def read_thumbnail(source: Source, *, minimum: int, target: int) -> tuple[np.ndarray, int, int, tuple[int, int]]:
    """(float32 H×W×C thumbnail in [0, 1], its level, its block k, that level's size)."""
    level, image = _level(source, minimum)
    block = max(1, math.ceil(max(image.size) / target))
    return _averaged(image, block), level, block, image.size


def picture(source: Source, shape: tuple[int, int]) -> np.ndarray:
    """The scanned level as an RGB uint8 picture of `shape` (rows, columns): grey for one channel (or two, or more
    than four: the first), colour for three or four (alpha dropped)."""
    from PIL import Image

    thumbnail, *_ = read_thumbnail(source, minimum=max(shape), target=max(shape))
    channels = thumbnail[..., :3] if thumbnail.shape[2] in (3, 4) else np.repeat(thumbnail[..., :1], 3, axis=2)
    rgb = Image.fromarray(np.rint(channels * 255).astype(np.uint8))
    return np.asarray(rgb.resize((shape[1], shape[0]), Image.BILINEAR))


def _level(source: Source, minimum: int) -> tuple[int, Source]:
    """(level, its source): the coarsest level at or below the scanned one with a side of at least `minimum`."""
    from .source import OPENERS

    opener = OPENERS[source.spec.reader]
    sizes = [size for size, _ in opener.levels(source.spec, None)]
    scanned = source.spec.level
    enough = min(minimum, max(source.size))
    candidates = [i for i in range(scanned, len(sizes)) if max(sizes[i]) >= enough]
    level = max(candidates) if candidates else scanned
    return level, source if level == scanned else opener(dataclasses.replace(source.spec, level=level))


def _averaged(image: Source, block: int) -> np.ndarray:
    """The level `image` averaged over `block` × `block` pixels, as float32 H×W×C in [0, 1], read in strips."""
    from skimage.measure import block_reduce

    height, width = image.size
    row_bytes = width * image.samples * 4
    rows = max(block, _STRIP_BYTES // max(row_bytes, 1) // block * block)
    strips = []
    for top in range(0, height, rows):
        strip = unit(image.read(top, 0, min(top + rows, height), width))
        # Blocks past the image's end are padded with NaN, which nanmean leaves out: each is its pixels' mean.
        strips.append(block_reduce(strip, (block, block, 1), np.nanmean, cval=np.nan) if block > 1 else strip)
    return np.concatenate(strips, axis=0)


def unit(samples: np.ndarray) -> np.ndarray:
    """Samples as float32 H×W×C values in [0, 1] (integers by their type's range, bool as 0 or 1)."""
    samples = samples if samples.ndim == 3 else samples[..., None]
    if samples.dtype == np.bool_:
        return samples.astype(np.float32)
    if np.issubdtype(samples.dtype, np.integer):
        return samples.astype(np.float32) / np.iinfo(samples.dtype).max
    return np.clip(np.nan_to_num(samples.astype(np.float32)), 0, 1)
