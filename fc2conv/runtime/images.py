"""Read an image as the pixels its owner sees, as float32 in [0, 1], with numpy and Pillow only (no torch).

- Bit depth: 8-bit samples are divided by 255 and 16-bit ones by 65535 (Pillow's own conversion to 8 bits
  clips 16-bit gray at 255). Pillow reads 16-bit colour PNGs at 8 bits, so those are decoded by pypng.
- Orientation: the EXIF orientation tag is applied (a phone photo stored sideways is classified upright).
- Size: the pixel count is read from the header and checked against a budget before anything is decoded;
  an image beyond it is refused with a pointer to tiled scanning, which holds one tile in memory at a time.
- Channels: gray ↔ RGB with Pillow's ITU-R 601-2 luma weights; alpha is dropped.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import Fc2convError, InputError

__all__ = ["MAX_PIXELS", "ImageLike", "load_image", "to_channels"]

ImageLike = str | os.PathLike | Image.Image | np.ndarray
# One pass over this many pixels is the default limit of `fc2conv run`: the dense pass holds every activation
# of the whole image at once (the digits CNN peaked at 10.9 GB on a 9500×9500 image).
MAX_PIXELS = 2**25
# Pillow's RGB → L weights (ITU-R 601-2), so arrays and PIL images turn gray alike.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_ORIENTATION = 0x0112
# The array operation that shows the picture upright, for each EXIF orientation (PIL's `exif_transpose`).
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def load_image(image: ImageLike, channels: int, *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """`image` as an H×W×`channels` float32 array in [0, 1] (see the module docstring).

    A path is read with its orientation applied; a PIL image or an array is taken as it is. Arrays may be
    H×W or H×W×C (C in 1, 3, 4), of uint8, uint16, bool or floats already in [0, 1]. `max_pixels` (None: no
    limit) bounds the pixels of a file read from disk. `InputError` names the file and the problem.
    """
    if isinstance(image, (str, os.PathLike)):
        image = _read_file(Path(image), max_pixels)
    elif isinstance(image, Image.Image):
        image = _pixels(image)
    return to_channels(_unit_range(np.asarray(image)), channels)


def to_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """An H×W or H×W×C float array as H×W×`channels` (gray ↔ RGB, alpha dropped)."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"an image array is H×W or H×W×C with C from 1 to 4; got shape {array.shape}")
    if array.shape[2] in (2, 4):
        array = array[:, :, :-1]  # alpha does not enter the classifier
    if array.shape[2] == channels:
        return array
    if array.shape[2] == 1:
        return np.repeat(array, channels, axis=2)
    if channels == 1:
        return (array @ _LUMA)[:, :, None]
    raise InputError(f"the model takes {channels} channels; cannot convert a {array.shape[2]}-channel image")


def _read_file(path: Path, max_pixels: int | None) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own budget decides
            with Image.open(path) as opened:
                width, height = opened.size
                _check_budget(path, width * height, max_pixels)
                orientation = opened.getexif().get(_EXIF_ORIENTATION, 1)
                pixels = _png16(path) if _is_png16(path) else _pixels(opened)
    except Image.DecompressionBombError as e:
        count = re.search(r"\((\d+) pixels\)", str(e))
        _check_budget(path, int(count.group(1)) if count else max_pixels + 1, max_pixels)
        raise InputError(f"{path}: {e}") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        if isinstance(e, Fc2convError):
            raise
        raise InputError(f"{path}: cannot read it as an image ({e})") from None
    upright = _UPRIGHT.get(orientation)
    return upright(pixels) if upright else pixels


def _check_budget(path: Path, pixels: int, max_pixels: int | None) -> None:
    if max_pixels is not None and pixels > max_pixels:
        raise InputError(
            f"{path} has {pixels:,} pixels, more than one pass may hold ({max_pixels:,}, max_pixels=): the dense "
            "map of the whole image would not fit in memory. Scan it tile by tile with `fc2conv scan`, which "
            "holds one tile at a time and stitches the same map, or raise max_pixels= if you have the memory"
        )


def _pixels(image: Image.Image) -> np.ndarray:
    """The samples of a PIL image at their own depth: uint8, uint16, bool or float32."""
    if image.mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
    if image.mode == "I":
        values = np.asarray(image)
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise InputError("a 32-bit integer image has no defined range; save it with 8 or 16 bits")
        return values.astype(np.uint16)
    if image.mode in ("1", "L", "LA", "RGB", "RGBA", "F"):
        return np.asarray(image)
    return np.asarray(image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB"))


def _is_png16(path: Path) -> bool:
    """A PNG with 16-bit colour samples, which Pillow would read at 8 bits (16-bit gray it reads exactly)."""
    with open(path, "rb") as f:
        header = f.read(26)
    return header.startswith(_PNG_SIGNATURE) and header[24] == 16 and header[25] in (2, 4, 6)


def _png16(path: Path) -> np.ndarray:
    import png

    try:
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        planes = info["planes"]
        return np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, planes)
    except png.Error as e:
        raise InputError(f"{path}: cannot read it as a 16-bit PNG ({e})") from None


def _unit_range(array: np.ndarray) -> np.ndarray:
    """Samples as float32 in [0, 1], scaled by the depth of their type."""
    if array.dtype in (np.uint8, np.uint16):
        values = array.astype(np.float32)
        values /= np.iinfo(array.dtype).max  # in place: the same numbers as `/`, without a second array
        return values
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    raise InputError(f"image arrays must be uint8, uint16, bool or float in [0, 1], not {array.dtype}")
