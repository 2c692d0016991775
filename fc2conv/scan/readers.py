"""The readers behind `fc2conv.scan.source`: one class per kind of input, each giving H×W×C regions of one level.

- `_TiffSource`: TIFF and BigTIFF, tiled or stripped, pyramidal (SubIFDs, reduced pages, SVS, OME, NDPI) through
  tifffile's zarr interface: a read decodes only the file's tiles (or strips) it overlaps. Opening a level
  checks that every one of its tiles lies inside the file, so a truncated file is refused before any work.
- `_ZarrSource`: a zarr array (Y×X, Y×X×C or C×Y×X), or an OME-Zarr group whose `multiscales` metadata gives the
  levels, the axes and the pixel size.
- `_SlideSource`: OpenSlide; reads are placed in level-0 pixels (exact at integer downsamples), and transparent
  pixels take the slide's background colour.
- `_ImageSource`: PNG, JPEG and the rest of Pillow's formats, decoded whole by `fc2conv.images.load_image`.

Each class also lists the (size, pixel size in µm or None) of every level of its file (`levels`), without
reading pixels.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConversionError
from ..images import load_image

__all__ = ["OPENERS", "Source", "SourceSpec"]

_UNITS_UM = {"micrometer": 1.0, "micron": 1.0, "µm": 1.0, "um": 1.0, "nanometer": 1e-3, "millimeter": 1e3,
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

    def read(self, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"path": self.spec.path, "reader": self.spec.reader, "level": self.spec.level,
                "size": list(self.size), "downsample": list(self.downsample),
                "pixel_size_um": list(self.pixel_size) if self.pixel_size else None}


def _scaled(pixel: tuple[float, float] | None, factor: tuple[float, float]) -> tuple[float, float] | None:
    return pixel and (pixel[0] * factor[0], pixel[1] * factor[1])


class _Axes:
    """An array with named axes seen as H×W×C: Y and X, at most one channel axis (S or C), others of length 1."""

    def __init__(self, array: Any, axes: str, source: str):
        axes = axes.upper()
        if "Y" not in axes or "X" not in axes or len(axes) != len(array.shape):
            raise ConversionError(f"{source}: cannot find the image's rows and columns among axes {axes!r} "
                                  f"of shape {tuple(array.shape)}")
        channel = [a for a in axes if a in "SC" and array.shape[axes.index(a)] > 1]
        others = [a for a in axes if a not in "YXSC" and array.shape[axes.index(a)] > 1]
        if len(channel) > 1 or others:
            raise ConversionError(f"{source}: axes {axes!r} of shape {tuple(array.shape)} hold more than one 2-D "
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


class _TiffSource(Source):
    def __init__(self, spec: SourceSpec):
        import zarr

        self.spec = spec
        self._file = _open_tiff(spec.path)
        try:
            series = self._file.series[0]
            level = series.levels[spec.level]
            view = _Axes(zarr.open(series.aszarr(level=spec.level), mode="r"), level.axes, spec.path)
        except ConversionError:
            raise
        except Exception as e:  # tifffile raises many types for damaged files
            raise ConversionError(f"{spec.path}: cannot read level {spec.level} of it as a TIFF ({e})") from None
        _check_tiles(spec.path, level.pages)
        self._view, self.size, self.samples, self.dtype = view, view.size, view.samples, np.dtype(level.dtype)
        base = series.levels[0]
        self.downsample = tuple(base.shape[base.axes.index(a)] / n for a, n in zip("YX", self.size, strict=True))
        self.pixel_size = _scaled(_tiff_pixel_size(self._file), self.downsample)

    @staticmethod
    def levels(spec: SourceSpec, max_pixels: int | None) -> list:
        with _open_tiff(spec.path) as tif:
            levels = [tuple(level.shape[level.axes.index(a)] for a in "YX") for level in tif.series[0].levels]
            pixel = _tiff_pixel_size(tif)
        return [(size, _scaled(pixel, tuple(b / n for b, n in zip(levels[0], size, strict=True)))) for size in levels]

    def read(self, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        try:
            return self._view.read(top, left, bottom, right)
        except Exception as e:
            raise ConversionError(f"{self.spec.path}: cannot decode the region rows {top}…{bottom - 1}, columns "
                                  f"{left}…{right - 1} ({type(e).__name__}: {e})") from None


def _open_tiff(path: str) -> Any:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
        if not tif.series or "Y" not in tif.series[0].axes or "X" not in tif.series[0].axes:
            tif.close()
            raise ValueError("it holds no image")
        return tif
    except Exception as e:  # tifffile raises many types for damaged files
        raise ConversionError(f"{path}: cannot read it as a TIFF ({e})") from None


def _check_tiles(path: str, pages: list) -> None:
    """Refuse a file whose tiles (or strips) of this level end past its last byte: it was cut short."""
    end = os.path.getsize(path)
    for page in pages:
        offsets = np.asarray(getattr(page, "dataoffsets", ()), dtype=np.int64)
        counts = np.asarray(getattr(page, "databytecounts", ()), dtype=np.int64)
        if len(offsets) and int((offsets + counts).max()) > end:
            missing = int(((offsets + counts) > end).sum())
            raise ConversionError(f"{path} is truncated: {missing} of its {len(offsets)} tiles end past the file's "
                                  f"{end:,} bytes")


def _tiff_pixel_size(tif: Any) -> tuple[float, float] | None:
    """Micrometres per pixel (y, x) of the first level: SVS `MPP`, OME physical size, or resolution tags."""
    page = tif.pages[0]
    if tif.is_svs:
        found = re.search(r"MPP\s*=\s*([0-9.eE+-]+)", page.description or "")
        if found:
            return float(found.group(1)), float(found.group(1))
    if tif.is_ome:
        ome = tif.ome_metadata or ""
        sizes = [re.search(rf'PhysicalSize{a}="([0-9.eE+-]+)"', ome) for a in "YX"]
        units = [re.search(rf'PhysicalSize{a}Unit="([^"]+)"', ome) for a in "YX"]
        if all(sizes):
            return tuple(float(s.group(1)) * _UNITS_UM.get(u.group(1) if u else "µm", 1.0)
                         for s, u in zip(sizes, units, strict=True))
    tags = page.tags
    unit = {2: 25400.0, 3: 10000.0}.get(int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2)
    if unit is None or "XResolution" not in tags or "YResolution" not in tags:
        return None
    values = [tags[f"{a}Resolution"].value for a in "YX"]
    if any(v[0] == 0 or v[1] == 0 for v in values) or values[0] == (1, 1):
        return None  # (1, 1) is what writers put when they know nothing
    return tuple(unit * v[1] / v[0] for v in values)


class _ZarrSource(Source):
    def __init__(self, spec: SourceSpec):
        self.spec = spec
        arrays, axes, scales = _zarr_levels(spec.path)
        if not 0 <= spec.level < len(arrays):
            raise ConversionError(f"{spec.path} has levels 0 … {len(arrays) - 1}; got --level {spec.level}")
        self._view = _Axes(arrays[spec.level], axes, spec.path)
        self.size, self.samples, self.dtype = self._view.size, self._view.samples, np.dtype(arrays[spec.level].dtype)
        base = _Axes(arrays[0], axes, spec.path).size
        self.downsample = tuple(b / n for b, n in zip(base, self.size, strict=True))
        self.pixel_size = scales[spec.level]

    @staticmethod
    def levels(spec: SourceSpec, max_pixels: int | None) -> list:
        arrays, axes, scales = _zarr_levels(spec.path)
        return [(_Axes(a, axes, spec.path).size, s) for a, s in zip(arrays, scales, strict=True)]

    def read(self, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        return self._view.read(top, left, bottom, right)


def _zarr_levels(path: str) -> tuple[list, str, list]:
    """(arrays finest first, axes, pixel size in µm per level or None) of a zarr array or OME-Zarr group."""
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except Exception as e:
        raise ConversionError(f"{path}: cannot open it as a zarr array or group ({e})") from None
    if isinstance(node, zarr.Array):
        return [node], _guess_axes(node.shape, path), [None]
    attrs = node.attrs.asdict()
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        names = sorted(name for name, _ in node.arrays())
        raise ConversionError(f"{path} is a zarr group without OME multiscales metadata; name one of its arrays "
                              f"({', '.join(names) or 'it has none'}) as {path}/ARRAY")
    first = multiscales[0]
    named = [a if isinstance(a, str) else a.get("name", "") for a in first.get("axes", [])]
    arrays = [node[d["path"]] for d in first["datasets"]]
    axes = "".join(n[:1] for n in named).upper() if named else _guess_axes(arrays[0].shape, path)
    units = [None if isinstance(a, str) else a.get("unit") for a in first.get("axes", [])] or [None] * len(axes)
    scales = []
    for dataset in first["datasets"]:
        scale = next((t["scale"] for t in dataset.get("coordinateTransformations", []) if t.get("type") == "scale"),
                     None)
        known = scale is not None and all(units[axes.index(a)] in _UNITS_UM for a in "YX")
        scales.append(tuple(scale[axes.index(a)] * _UNITS_UM[units[axes.index(a)]] for a in "YX") if known else None)
    return arrays, axes, scales


def _guess_axes(shape: tuple[int, ...], path: str) -> str:
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3 and shape[2] <= 4:
        return "YXS"
    if len(shape) == 3 and shape[0] <= 4:
        return "SYX"
    raise ConversionError(f"{path}: a zarr array of shape {tuple(shape)} is not an image (Y×X, Y×X×C or C×Y×X "
                          "with at most 4 channels); write OME-Zarr metadata to name its axes")


class _SlideSource(Source):
    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self._slide = _open_slide(spec.path)
        width, height = self._slide.level_dimensions[spec.level]
        self.size, self.samples, self.dtype = (height, width), 3, np.dtype(np.uint8)
        self.downsample = (float(self._slide.level_downsamples[spec.level]),) * 2
        self.pixel_size = _scaled(_slide_pixel_size(self._slide), self.downsample)
        colour = self._slide.properties.get("openslide.background-color", "FFFFFF")
        self._background = np.array([int(colour[i:i + 2], 16) for i in (0, 2, 4)], np.uint8)

    @staticmethod
    def levels(spec: SourceSpec, max_pixels: int | None) -> list:
        slide = _open_slide(spec.path)
        pixel = _slide_pixel_size(slide)
        out = [((h, w), _scaled(pixel, (d, d)))
               for (w, h), d in zip(slide.level_dimensions, slide.level_downsamples, strict=True)]
        slide.close()
        return out

    def read(self, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        origin = (round(left * self.downsample[1]), round(top * self.downsample[0]))
        try:
            rgba = np.asarray(self._slide.read_region(origin, self.spec.level, (right - left, bottom - top)))
        except Exception as e:
            raise ConversionError(f"{self.spec.path}: OpenSlide cannot read rows {top}…{bottom - 1}, columns "
                                  f"{left}…{right - 1} ({e})") from None
        return np.where(rgba[:, :, 3:] == 0, self._background, rgba[:, :, :3])


def _open_slide(path: str) -> Any:
    try:
        import openslide
    except ImportError as e:
        raise ConversionError(f"{path}: reading whole-slide formats needs OpenSlide: pip install "
                              f"'fc2conv[openslide]' ({e})") from None
    try:
        return openslide.OpenSlide(path)
    except Exception as e:
        raise ConversionError(f"{path}: OpenSlide cannot open it ({e})") from None


def _slide_pixel_size(slide: Any) -> tuple[float, float] | None:
    values = [slide.properties.get(f"openslide.mpp-{a}") for a in "yx"]
    return tuple(float(v) for v in values) if all(values) else None


class _ImageSource(Source):
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
            raise ConversionError(f"{spec.path}: no reader understands it: not a TIFF, zarr or whole-slide file, "
                                  f"and Pillow cannot open it ({e})") from None
        if max_pixels is not None and width * height > max_pixels:
            raise ConversionError(f"{spec.path} has {width * height:,} pixels, more than --max-pixels "
                                  f"({max_pixels:,}): {Path(spec.path).suffix or 'this format'} files are decoded "
                                  "whole; convert it to a tiled TIFF (e.g. `vips tiffsave IN OUT.tif --tile "
                                  "--pyramid --bigtiff`) and scan that")
        return [((height, width), None)]

    def read(self, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        return self._pixels[top:bottom, left:right]


OPENERS: dict[str, Any] = {"tiff": _TiffSource, "zarr": _ZarrSource, "openslide": _SlideSource,
                           "image": _ImageSource}
