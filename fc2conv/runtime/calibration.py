"""The calibration set of `fc2conv quantize`: images read and prepared exactly as `fc2conv run` prepares them, at any
sizes (the model is dynamic), and the split into images that calibrate and images held out to measure the drift.

A calibration set is a directory of images (PNG, JPEG, TIFF, … and `.npy` arrays; hidden files and other suffixes
are skipped), one image, or one `.npy` file: a batch N×C×(spatial) or one C×(spatial) array, channels first, as
`fc2conv run` takes a `.npy` (values before normalisation). Each image goes through `DenseModel.preprocess`: read
as float32 in [0, 1] by its bit depth, upright, converted to the model's channels, normalised with the file's mean
and std. No torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConversionError
from ..shapes import times
from .images import MAX_PIXELS
from .model import DenseModel, _load_npy

__all__ = ["IMAGE_SUFFIXES", "Sample", "read_calibration", "split"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".pgm", ".ppm", ".pnm")


@dataclass(frozen=True)
class Sample:
    """One prepared calibration input: `name` (its file, and its index in a `.npy` batch) and `x`, the normalised
    1×C×(spatial) float32 input the model runs on."""

    name: str
    x: np.ndarray

    @property
    def size(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[2:])


def read_calibration(source: str | os.PathLike, model: DenseModel, *,
                     max_pixels: int | None = MAX_PIXELS) -> list[Sample]:
    """Every input of the calibration set `source` for `model` (see the module docstring). `ConversionError`
    naming the file for a missing path, an empty set, an unreadable image or array, an image with channels the
    model cannot take, and one smaller than the model's window."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.suffix.lower() in (*IMAGE_SUFFIXES, ".npy"))
        if not files:
            raise ConversionError(f"{path}: the calibration set is empty: no images ({', '.join(IMAGE_SUFFIXES)}) or "
                                  ".npy arrays in this directory")
    elif path.is_file():
        files = [path]
    else:
        raise ConversionError(f"{path}: no such calibration file or directory")
    samples = []
    for file in files:
        samples += _npy_samples(file, model) if file.suffix.lower() == ".npy" else [
            Sample(str(file), _named(file, lambda f=file: model.preprocess(f, max_pixels=max_pixels)))]
    if not samples:
        raise ConversionError(f"{path}: the calibration set is empty (a .npy batch of no arrays)")
    if model.metadata.get("mode") == "dense":
        for sample in samples:
            if any(s < r for s, r in zip(sample.size, model.reference, strict=True)):
                raise ConversionError(f"{sample.name}: the image is {times(sample.size)}, smaller than the model's "
                                      f"{times(model.reference)} window; calibrate on images at least that large")
    return samples


def split(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """(images that calibrate, images held out to measure the drift): every fourth image is held out (one of two or
    three); a single image both calibrates and measures, since none can be spared."""
    if len(samples) < 2:
        return samples, samples
    held = set(range(3, len(samples), 4)) if len(samples) >= 4 else {len(samples) - 1}
    return ([s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held])


def _npy_samples(file: Path, model: DenseModel) -> list[Sample]:
    """The arrays of a `.npy` file: a batch N×C×(spatial), or one C×(spatial) array."""
    array = _named(file, lambda: _load_npy(file))
    rank = len(model.reference) + 1
    if array.ndim == rank:
        array = array[None]
    if array.ndim != rank + 1:
        raise ConversionError(f"{file}: a calibration .npy holds N×C×(spatial) or one C×(spatial) array, "
                              f"{rank + 1} or {rank} dimensions for this model; got shape {array.shape}")
    return [Sample(f"{file}[{i}]", _named(file, lambda item=item: model.normalise(item)))
            for i, item in enumerate(array)]


def _named(file: Path, read):
    """`read()`, with `file` named in its `ConversionError` when the message does not name it already."""
    try:
        return read()
    except ConversionError as e:
        if str(file) in str(e):
            raise
        raise ConversionError(f"{file}: {e}") from None
