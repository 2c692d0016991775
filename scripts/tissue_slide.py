"""Synthetic slides with tissue on glass, for masked scans (tests, `bench.py --projection`, docs/scanning.md).

    python scripts/tissue_slide.py OUT.tif --size 8192 --fraction 0.4 [--grey] [--seed 0]

A brightfield slide is white glass (RGB about 236, with sensor noise) with tissue-like regions: blobs of a smoothed
random field, cut at the quantile that makes them cover `fraction` of the slide, stained pink and purple with
texture. `--grey` makes a fluorescence-like slide instead: one channel, bright foreground on a dark background. The
regions are laid out on blocks of `BLOCK` pixels (`layout` returns them), so a test knows which pixels are tissue.
Written as a tiled, pyramidal BigTIFF (levels halved down to 1024 pixels, as a scanner writes them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

BLOCK = 16
GLASS = 236


def layout(size: tuple[int, int], fraction: float, seed: int = 0, block: int = BLOCK) -> np.ndarray:
    """bool (H / block) × (W / block): which blocks are tissue, about `fraction` of them, in a few blobs."""
    from skimage.filters import gaussian

    rng = np.random.default_rng(seed)
    shape = tuple(-(-n // block) for n in size)
    field = gaussian(rng.standard_normal(shape), sigma=max(shape) / 24)
    return field > np.quantile(field, 1 - fraction)


def brightfield(size: tuple[int, int], fraction: float = 0.4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(H × W × 3 uint8 slide, its block layout): tissue darker and more saturated than glass."""
    blocks = layout(size, fraction, seed)
    tissue = _full(blocks, size)
    rng = np.random.default_rng(seed + 1)
    image = np.empty((*size, 3), np.uint8)
    for top in range(0, size[0], 1024):  # in strips: a float copy of a 16k² slide would take 6 GB
        rows = slice(top, min(top + 1024, size[0]))
        inside = tissue[rows]
        noise = rng.normal(0, 3, (*inside.shape, 3))
        texture = rng.normal(0, 18, inside.shape)[..., None]
        stain = np.where(rng.random(inside.shape)[..., None] < 0.3, (120, 60, 150), (200, 120, 170))
        values = np.where(inside[..., None], stain + texture, GLASS + noise)
        image[rows] = np.clip(values, 0, 255).astype(np.uint8)
    return image, blocks


def fluorescence(size: tuple[int, int], fraction: float = 0.4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(H × W uint8 slide, its block layout): bright foreground on a dark, noisy background."""
    blocks = layout(size, fraction, seed)
    tissue = _full(blocks, size)
    rng = np.random.default_rng(seed + 1)
    values = np.where(tissue, 150 + rng.normal(0, 25, size), 12 + rng.normal(0, 3, size))
    return np.clip(values, 0, 255).astype(np.uint8), blocks


def _full(blocks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.repeat(np.repeat(blocks, BLOCK, axis=0), BLOCK, axis=1)[:size[0], :size[1]]


def write_pyramid(path: Path, image: np.ndarray, *, tile: int = 256, smallest: int = 1024) -> None:
    """`image` as a tiled BigTIFF with reduced levels (each the one before, every second pixel) in SubIFDs."""
    import tifffile

    levels = [image]
    while max(levels[-1].shape[:2]) > smallest:
        levels.append(levels[-1][::2, ::2])
    photometric = "rgb" if image.ndim == 3 else "minisblack"
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for n, level in enumerate(levels):
            extra = {"subifds": len(levels) - 1} if n == 0 else {"subfiletype": 1}
            tif.write(level, tile=(tile, tile), photometric=photometric, **extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--fraction", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grey", action="store_true", help="a one-channel slide with bright foreground")
    args = parser.parse_args(argv)
    make = fluorescence if args.grey else brightfield
    image, blocks = make((args.size, args.size), args.fraction, args.seed)
    write_pyramid(args.out, image)
    print(f"wrote {args.out}: {args.size}×{args.size}, tissue on {blocks.mean():.1%} of it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
