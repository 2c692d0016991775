"""The data the digits CNN (`models/digits_cnn.py`) learns from and is shown on, without PyTorch.

The digits are scikit-learn's bundled 8×8 scans (16 gray levels, no download), upscaled 3× to 24×24 and
drawn light on black. The network sees a 32×32 window (a digit with a 4-pixel margin) and has 11 classes:
the ten digits and "background". It is trained on windows cut from canvases of many digits (see `windows`):

- a window is a digit when that digit sits at its centre, give or take `JITTER` pixels (half the map's
  stride, so every digit on a canvas has a cell that sees it centred);
- every other window is background: blank canvas, a digit off centre or cut by the window's border, the gap
  between two digits. Windows just off a digit's centre are drawn often, so the network learns to localise.

Kept apart from the model so that the demo's canvas and report steps start without importing PyTorch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BACKGROUND", "DIGIT", "JITTER", "LABELS", "MARGIN", "SEED", "STRIDE", "WINDOW", "centred", "compose",
           "load_split", "upscale", "window_label", "windows"]

SCALE = 3
DIGIT = 8 * SCALE  # 24: a digit's side on the canvas
MARGIN = 4
WINDOW = DIGIT + 2 * MARGIN  # 32: the network's input
STRIDE = 4  # of the dense map: the two 2×2 pools
JITTER = STRIDE // 2  # every digit on a canvas has a cell whose window centre is this close
LABELS = [str(d) for d in range(10)] + ["background"]
BACKGROUND = 10
SEED = 0


def load_split(seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, test images, train labels, test labels), as train_test_split orders them: 75/25 stratified,
    images uint8 24×24."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = upscale(data.images)
    return tuple(train_test_split(images, data.target, test_size=0.25, random_state=seed, stratify=data.target))


def upscale(scans: np.ndarray) -> np.ndarray:
    """N×8×8 scans with values 0–16 → N×24×24 uint8 (bilinear), ink light on black."""
    from PIL import Image

    gray = np.round(scans * (255 / 16)).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(g).resize((DIGIT, DIGIT), Image.BILINEAR)) for g in gray])


def compose(images: np.ndarray, labels: np.ndarray, size: tuple[int, int], count: int, rng: np.random.Generator,
            *, gap: int = 2, border: int = MARGIN, tries: int = 200) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """A black uint8 canvas of `size` with up to `count` of `images` at random places.

    Digits are at least `gap` pixels apart and `border` pixels from the edge. Returns the canvas and the
    placements as (label, top, left) of each 24×24 digit.
    """
    canvas = np.zeros(size, np.uint8)
    placed: list[tuple[int, int, int]] = []
    picks = rng.choice(len(images), size=count, replace=False)
    for index in picks:
        for _ in range(tries):
            top = int(rng.integers(border, size[0] - DIGIT - border + 1))
            left = int(rng.integers(border, size[1] - DIGIT - border + 1))
            if all(max(abs(top - t), abs(left - le)) >= DIGIT + gap for _, t, le in placed):
                canvas[top:top + DIGIT, left:left + DIGIT] = images[index]
                placed.append((int(labels[index]), top, left))
                break
    return canvas, placed


def window_label(top: int, left: int, placed: list[tuple[int, int, int]]) -> int:
    """The class of the window at (top, left): the digit centred in it within ±`JITTER` pixels, else background."""
    for label, t, le in placed:
        if max(abs(t - MARGIN - top), abs(le - MARGIN - left)) <= JITTER:
            return label
    return BACKGROUND


def windows(images: np.ndarray, labels: np.ndarray, canvases: int, rng: np.random.Generator,
            *, size: tuple[int, int] = (96, 96), per_digit: int = 3, random_windows: int = 6):
    """Training windows (N×32×32 uint8) and their classes, cut from `canvases` random canvases of digits.

    Each placed digit gives `per_digit` windows centred on it within ±`JITTER` and `per_digit` shifted by up
    to a quarter window (mostly background a localising network must reject); each canvas also gives
    `random_windows` windows anywhere. All are labelled by `window_label`.
    """
    crops, classes = [], []
    for _ in range(canvases):
        canvas, placed = compose(images, labels, size, int(rng.integers(2, 7)), rng, gap=int(rng.integers(0, 9)),
                                 border=0)
        centres = [(t - MARGIN, le - MARGIN) for _, t, le in placed for _ in range(per_digit)]
        near = rng.integers(-JITTER, JITTER + 1, size=(len(centres), 2))
        far = rng.integers(-WINDOW // 4, WINDOW // 4 + 1, size=(len(centres), 2))
        spots = [(t + int(dy), le + int(dx)) for shifts in (near, far)
                 for (t, le), (dy, dx) in zip(centres, shifts, strict=True)]
        spots += [(int(rng.integers(0, size[0] - WINDOW + 1)), int(rng.integers(0, size[1] - WINDOW + 1)))
                  for _ in range(random_windows)]
        for top, left in spots:
            if 0 <= top <= size[0] - WINDOW and 0 <= left <= size[1] - WINDOW:
                crops.append(canvas[top:top + WINDOW, left:left + WINDOW])
                classes.append(window_label(top, left, placed))
    return np.stack(crops), np.array(classes)


def centred(images: np.ndarray) -> np.ndarray:
    """Each 24×24 digit alone in the middle of a black 32×32 window."""
    return np.pad(images, ((0, 0), (MARGIN, MARGIN), (MARGIN, MARGIN)))
