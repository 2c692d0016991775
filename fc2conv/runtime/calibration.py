"""The calibration set of `fc2conv quantize`: which inputs calibrate and which are held out to measure the drift,
read one at a time and prepared exactly as `fc2conv run` prepares them, at any sizes (the model is dynamic).

A calibration set is a directory of images (PNG, JPEG, TIFF, … and `.npy` arrays; hidden files and other suffixes
are skipped), one image, or one `.npy` file: a batch N×C×(spatial) or one C×(spatial) array, channels first, as
`fc2conv run` takes a `.npy` (values before normalisation). Each input goes through `DenseModel.preprocess`: read
as float32 in [0, 1] by its bit depth, upright, converted to the model's channels, checked to be finite, normalised
with the file's mean and std. No torch.

A set of any size is used in bounded memory: the inputs are listed (a `.npy` batch by its header alone), at most
`MAX_INPUTS` of them are picked, evenly spaced in name order (a batch's items in their order), and every fourth
picked input is held out (one of two or three; a single input both calibrates and measures). Nothing is read until
it is used, and then one input at a time, so memory holds one input, whatever the set's size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConversionError, InputError
from ..shapes import times
from .arrays import open_npy, samples_within
from .images import MAX_PIXELS
from .model import DenseModel

__all__ = ["IMAGE_SUFFIXES", "MAX_INPUTS", "PICKED", "CalibrationSet", "Sample", "read_calibration"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".pgm", ".ppm", ".pnm")
# Inputs used at most: 240 calibrate and 60 are held out. Calibration ranges settle within a few hundred inputs
# (onnxruntime's and NNCF's defaults are of that order); more would only cost time.
MAX_INPUTS = 300
PICKED = f"at most {MAX_INPUTS}, evenly spaced in name order; every fourth held out"  # recorded in the metadata


@dataclass(frozen=True)
class Sample:
    """One prepared calibration input: `name` (its file, and its index in a `.npy` batch) and `x`, the normalised
    1×C×(spatial) float32 input the model runs on."""

    name: str
    x: np.ndarray

    @property
    def size(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[2:])


@dataclass(frozen=True)
class _Input:
    """One input of the set, not read yet: a file, and the item of a `.npy` batch (None: the whole file)."""

    file: Path
    item: int | None = None

    @property
    def name(self) -> str:
        return str(self.file) if self.item is None else f"{self.file}[{self.item}]"


class CalibrationSet:
    """The inputs of a calibration set for `model`, picked and split (see the module docstring): `found` inputs in
    all, `calibrating` and `held_out` the names of the ones used; `samples` and `held_out_samples` read them."""

    def __init__(self, inputs: list[_Input], model: DenseModel, max_pixels: int | None) -> None:
        self.found = len(inputs)
        picked = [inputs[i] for i in _evenly_spaced(len(inputs), MAX_INPUTS)]
        held = set(range(3, len(picked), 4)) if len(picked) >= 4 else {len(picked) - 1} if len(picked) > 1 else set()
        self._calibrating = [x for i, x in enumerate(picked) if i not in held]
        self._held_out = [x for i, x in enumerate(picked) if i in held] or self._calibrating
        self.held_separately = bool(held)
        self._model, self._max_pixels = model, max_pixels
        self._budget = max_pixels and max_pixels * model.channels
        self.sizes: set[tuple[int, ...]] = set()  # of the inputs read so far

    @property
    def calibrating(self) -> list[str]:
        return [x.name for x in self._calibrating]

    @property
    def held_out(self) -> list[str]:
        return [x.name for x in self._held_out]

    def samples(self) -> Iterator[Sample]:
        """The calibrating inputs, read and prepared one at a time."""
        return (self._read(x) for x in self._calibrating)

    def held_out_samples(self) -> Iterator[Sample]:
        """The held-out inputs (the calibrating ones when none could be held out), read one at a time."""
        return (self._read(x) for x in self._held_out)

    def _read(self, entry: _Input) -> Sample:
        model = self._model
        try:
            if entry.item is None and entry.file.suffix.lower() != ".npy":
                x = model.preprocess(entry.file, max_pixels=self._max_pixels)
            else:
                array = _batch(entry.file, model)
                item = array[entry.item if entry.item is not None else 0]
                samples_within(item, self._budget, source=entry.name)
                x = model.normalise(item, source=entry.name)
        except ConversionError as e:  # named by its input, once
            raise e if entry.name in str(e) or str(entry.file) in str(e) else InputError(f"{entry.name}: {e}") \
                from None
        sample = Sample(entry.name, x)
        if model.metadata.get("mode") == "dense" and any(
                s < r for s, r in zip(sample.size, model.reference, strict=True)):
            raise InputError(f"{entry.name}: the input is {times(sample.size)}, smaller than the model's "
                             f"{times(model.reference)} window; calibrate on inputs at least that large")
        self.sizes.add(sample.size)
        return sample


def read_calibration(source: str | os.PathLike, model: DenseModel, *,
                     max_pixels: int | None = MAX_PIXELS) -> CalibrationSet:
    """The calibration set `source` for `model` (see the module docstring), listed but not read. `InputError`
    naming the path for a missing path, an empty set, or a `.npy` file whose header is not an array of inputs; the
    inputs themselves are checked as they are read."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if not p.name.startswith(".")
                       and p.suffix.lower() in (*IMAGE_SUFFIXES, ".npy") and p.is_file())
        if not files:
            raise InputError(f"{path}: the calibration set is empty: no images ({', '.join(IMAGE_SUFFIXES)}) or "
                             ".npy arrays in this directory")
    elif path.is_file():
        files = [path]
    else:
        raise InputError(f"{path}: no such calibration file or directory")
    inputs: list[_Input] = []
    for file in files:
        if file.suffix.lower() != ".npy":
            inputs.append(_Input(file))
        else:
            array = _batch(file, model)
            inputs += [_Input(file, i) for i in range(len(array))]
    if not inputs:
        raise InputError(f"{path}: the calibration set is empty (a .npy batch of no arrays)")
    return CalibrationSet(inputs, model, max_pixels)


def _batch(file: Path, model: DenseModel) -> np.ndarray:
    """The N×C×(spatial) inputs of a `.npy` file, memory-mapped (one C×(spatial) array is a batch of one)."""
    array = open_npy(file)
    rank = len(model.reference) + 1
    if array.ndim == rank:
        array = array[None]
    if array.ndim != rank + 1:
        raise InputError(f"{file}: a calibration .npy holds N×C×(spatial) or one C×(spatial) array, "
                         f"{rank + 1} or {rank} dimensions for this model; got shape {array.shape}")
    return array


def _evenly_spaced(count: int, most: int) -> list[int]:
    """Indices of `most` of `count` items spread evenly from first to last (all of them when there are fewer)."""
    if count <= most:
        return list(range(count))
    return sorted({round(i * (count - 1) / (most - 1)) for i in range(most)})
