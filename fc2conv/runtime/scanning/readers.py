"""What every reader of `fc2conv.scan.source` shares (`Source`, `SourceSpec`, `AxesView`), and the two small readers.

The readers, one class per kind of input, each giving H×W×C regions of one level:

- `fc2conv.scan.tiff.TiffSource`: TIFF and BigTIFF through tifffile, its header checked against its data;
- `fc2conv.scan.zarr_source.ZarrSource`: a zarr array or an OME-Zarr group, its metadata checked;
- `SlideSource` (here): OpenSlide; reads are placed in level-0 pixels (exact at integer downsamples), and
  transparent pixels take the slide's background colour;
- `ImageSource` (here): PNG, JPEG and the rest of Pillow's formats, decoded whole by
`fc2conv.runtime.images.load_image`.

Each class also lists the (size, pixel size in µm or None) of every level of its file (`levels`), without
reading pixels. A read that fails names the file and the region: `BadInput` for data that cannot be decoded (a
resumed scan would meet it again), a plain `InputError` for an operating-system error (which may pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendError, ConversionError, InputError, first_line, translated
from ..images import load_image
from .placement import Placement
from .samples import BadInput

__all__ = ["UNITS_UM", "AxesView", "ImageSource", "SlideSource", "Source", "SourceSpec", "downsample", "positive",
           "scaled"]

UNITS_UM = {"micrometer": 1.0, "micron": 1.0, "µm": 1.0, "um": 1.0, "nanometer": 1e-3, "millimeter": 1e3,
            "centimeter": 1e4, "meter": 1e6}


@dataclass(frozen=True)
class SourceSpec:
    """Everything a worker needs to reopen the same level of the same input."""

    path: str
    reader: str
    level: int
    channels: int  # the model's: only the `image` reader, which decodes through `load_image`, uses it
    stamp: tuple[int, int] = (0, 0)  # the file's size and modification time in ns


class Source:
    """One level of an input. `read(top, left, bottom, right)` gives H×W×C samples of the file's own type."""

    spec: SourceSpec
    size: tuple[int, int]
    samples: int
    dtype: np.dtype
    downsample: tuple[float, float] = (1.0, 1.0)  # level 0 pixels per pixel of this level (y, x)
    pixel_size: tuple[float, float] | None = None  # micrometres (y, x) at this level
    chunk_bytes: int = 0  # the largest block the reader decodes whole (a file's tile, strip or chunk); 0: small
    base_size: tuple[int, int] | None = None  # level 0's (height, width); None: this level is level 0

    def read(self, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        try:
            return self._read(top, left, bottom, right)
        except ConversionError:
            raise
        except OSError as e:
            raise InputError(f"{self.spec.path}: cannot read rows {top}…{bottom - 1}, columns {left}…{right - 1}"
                             f" ({first_line(e, named=True)})") from None
        except Exception as e:  # decoders (imagecodecs, numcodecs, OpenSlide) raise types of their own on bad data
            raise BadInput(f"{self.spec.path}: cannot decode rows {top}…{bottom - 1}, columns {left}…{right - 1} "
                           f"({first_line(e, named=True)})") from None

    def _read(self, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        raise NotImplementedError

    def placement(self, stride: tuple[int, int], window: tuple[int, int]) -> Placement:
        """Where this level's pixels, and so a map of `stride` and `window` over it, lie on the slide
        (`fc2conv.scan.placement`); readers whose files record transforms of their own override it."""
        return Placement.area(downsample=self.downsample, pixel_size=self.pixel_size, stride=stride, window=window,
                              base_size=self.base_size or self.size)

    def describe(self) -> dict[str, Any]:
        return {"path": self.spec.path, "reader": self.spec.reader, "level": self.spec.level,
                "size": list(self.size), "downsample": list(self.downsample),
                "pixel_size_um": list(self.pixel_size) if self.pixel_size else None,
                "base_size": list(self.base_size or self.size)}


def downsample(path: str, base: tuple[int, int], size: tuple[int, int], level: int) -> tuple[float, float]:
    """Level-0 pixels (`base`, y and x) per pixel of `level` (`size`); `InputError` for a level without
    pixels, which a header or a zarr shape may declare."""
    for index, shape in ((0, base), (level, size)):
        if min(shape) < 1:
            raise InputError(f"{path}: level {index} is {shape[0]}×{shape[1]} pixels: it holds no image")
    return base[0] / size[0], base[1] / size[1]


def scaled(pixel: tuple[float, float] | None, factor: tuple[float, float]) -> tuple[float, float] | None:
    return pixel and (pixel[0] * factor[0], pixel[1] * factor[1])


def positive(value: Any) -> float | None:
    """`value` as a finite positive number (a pixel size), or None: files put 0, junk or nothing where they know
    no pixel size."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


class AxesView:
    """An array with named axes seen as H×W×C: Y and X, at most one channel axis (S or C), others of length 1."""

    def __init__(self, array: Any, axes: str, source: str):
        axes = axes.upper()
        if "Y" not in axes or "X" not in axes or len(axes) != len(array.shape) or len(set(axes)) != len(axes):
            raise InputError(f"{source}: cannot find the image's rows and columns among axes {axes!r} "
                             f"of shape {tuple(array.shape)}")
        channel = [a for a in axes if a in "SC" and array.shape[axes.index(a)] > 1]
        others = [a for a in axes if a not in "YXSC" and array.shape[axes.index(a)] > 1]
        if len(channel) > 1 or others:
            raise InputError(f"{source}: axes {axes!r} of shape {tuple(array.shape)} hold more than one 2-D "
                             "image; fc2conv scans one plane of samples")
        self.array, self.axes = array, axes
        self.channel = channel[0] if channel else None
        self.size = (int(array.shape[axes.index("Y")]), int(array.shape[axes.index("X")]))
        self.samples = int(array.shape[axes.index(self.channel)]) if self.channel else 1

    def read(self, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        index = tuple(slice(top, bottom) if a == "Y" else slice(left, right) if a == "X"
                      else slice(None) if a == self.channel else 0 for a in self.axes)
        kept = [a for a in self.axes if a in "YX" or a == self.channel]
        order = [kept.index(a) for a in ("Y", "X", self.channel) if a is not None]
        block = np.asarray(self.array[index]).transpose(order)
        return block if block.ndim == 3 else block[:, :, None]


class SlideSource(Source):
    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self._slide = _open_slide(spec.path)
        width, height = self._slide.level_dimensions[spec.level]
        self.size, self.samples, self.dtype = (height, width), 3, np.dtype(np.uint8)
        self.downsample = (float(self._slide.level_downsamples[spec.level]),) * 2
        self.base_size = tuple(reversed(self._slide.level_dimensions[0]))
        self.pixel_size = scaled(_slide_pixel_size(self._slide), self.downsample)
        self._background = _background(self._slide.properties.get("openslide.background-color"))

    @staticmethod
    def levels(spec: SourceSpec, max_pixels: int | None) -> list:
        slide = _open_slide(spec.path)
        pixel = _slide_pixel_size(slide)
        out = [((h, w), scaled(pixel, (d, d)))
               for (w, h), d in zip(slide.level_dimensions, slide.level_downsamples, strict=True)]
        slide.close()
        return out

    def _read(self, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        origin = (round(left * self.downsample[1]), round(top * self.downsample[0]))
        rgba = np.asarray(self._slide.read_region(origin, self.spec.level, (right - left, bottom - top)))
        return np.where(rgba[:, :, 3:] == 0, self._background, rgba[:, :, :3])


def _open_slide(path: str) -> Any:
    try:
        import openslide
    except ImportError as e:
        raise BackendError(f"{path}: reading whole-slide formats needs OpenSlide: pip install "
                           f"'fc2conv[openslide]' ({first_line(e)})") from None
    # OpenSlide raises its own error types, and OSError, for files it cannot open
    with translated(InputError, f"{path}: OpenSlide cannot open it (", end=")", named=True):
        return openslide.OpenSlide(path)


def _slide_pixel_size(slide: Any) -> tuple[float, float] | None:
    values = [positive(slide.properties.get(f"openslide.mpp-{a}")) for a in "yx"]
    return tuple(values) if all(values) else None


def _background(colour: str | None) -> np.ndarray:
    """The slide's background colour (RRGGBB in hex), white when it records none or junk."""
    try:
        return np.array(bytes.fromhex(colour), np.uint8) if colour and len(colour) == 6 else np.full(3, 255, np.uint8)
    except ValueError:
        return np.full(3, 255, np.uint8)


class ImageSource(Source):
    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self._pixels = load_image(spec.path, spec.channels, max_pixels=None)  # `levels` checked the budget
        self.size, self.samples, self.dtype = self._pixels.shape[:2], spec.channels, self._pixels.dtype

    @staticmethod
    def levels(spec: SourceSpec, max_pixels: int | None) -> list:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(spec.path) as image:
                width, height = image.size
        except (OSError, UnidentifiedImageError) as e:
            raise InputError(f"{spec.path}: no reader understands it: not a TIFF, zarr or whole-slide file, "
                             f"and Pillow cannot open it ({first_line(e)})") from None
        if max_pixels is not None and width * height > max_pixels:
            raise InputError(f"{spec.path} has {width * height:,} pixels, more than max_pixels= "
                             f"({max_pixels:,}): {Path(spec.path).suffix or 'this format'} files are decoded "
                             "whole; convert it to a tiled TIFF (e.g. `vips tiffsave IN OUT.tif --tile "
                             "--pyramid --bigtiff`) and scan that")
        return [((height, width), None)]

    def _read(self, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        return self._pixels[top:bottom, left:right]
