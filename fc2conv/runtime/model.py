"""Run a model written by `fc2conv.export_onnx` on an image (or a signal or volume), with numpy, onnxruntime
and Pillow only (or OpenVINO instead of onnxruntime: `backend="openvino"`, see `fc2conv.runtime.backends`).

    from fc2conv.runtime.model import DenseModel, heatmap
    model = DenseModel("resnet18.onnx")
    result = model.run("photo.jpg")            # any size at least the reference size
    result.top_classes(5)                      # classes ranked by their best window
    result.top_windows(5)                      # best (class, window) pairs, each with its input box
    heatmap("photo.jpg", result, 281, "heat.png")

Preprocessing: the image is read as `fc2conv.runtime.images` says (float32 in [0, 1] by its real bit depth, EXIF
orientation applied, the model's channel count, a pixel budget checked before decoding), then normalised as
(x − mean) / std with the file's metadata when present. The metadata is validated when the model is opened
(`fc2conv.metadata`), so a bad field is named there rather than failing later.

Signals (C×L) and volumes (C×D×H×W) are given as `.npy` files or arrays, channels first, as the model takes
them before normalisation.

Geometry: cell (i, j) of the score map covers input rows i·sh … i·sh + h − 1 and columns j·sw … j·sw + w − 1
(stride and window from the file's metadata, measured on the PyTorch model at export), and likewise along the
one or three axes of a signal or volume; in global mode the one cell covers the whole input. That window is what
a cell stands for (`Result.box`); the input that can change it reaches further by the receptive field where the
backbone pads (`Result.influence`). This module never imports PyTorch (tested with torch blocked).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import BackendError, InputError, translated
from ..metadata import decode, validate
from ..shapes import (
    VECTOR_MAP,
    is_vector_input,
    map_size,
    size_refusal,
    sizes_from_json,
    times,
)
from .arrays import check_finite, open_npy, samples_within
from .backends import AUTO, check_backend, numerics, open_session, precision_label
from .cpu import int8_caution
from .drift import BUDGET
from .files.atomic import atomic_output
from .images import MAX_PIXELS, ImageLike, load_image
from .result import Prediction, Result  # `Result` was defined here: importing it from this module still works

__all__ = ["DenseModel", "Prediction", "Result", "colormap", "heatmap"]

_HEAT_ALPHA = 0.5


class DenseModel:
    """An exported fc2conv model in an onnxruntime or OpenVINO session, with its `fc2conv.*` metadata (`.metadata`).

    `engine` is the session (`fc2conv.runtime.backends.Session`); `session` the backend's own object, an
    `onnxruntime.InferenceSession` with the default backend."""

    def __init__(self, path: str | os.PathLike, *, providers: list[str] | None = None,
                 session_options: Any = None, mean: list[float] | None = None,
                 std: list[float] | None = None, backend: str = "onnxruntime", precision: str = "fp32",
                 threads: int | None = None) -> None:
        """Open `path` in `backend` ("onnxruntime" or "openvino") at `precision` ("fp32"; "bf16" or "fp16" with
        OpenVINO; see `fc2conv.runtime.backends`) with `threads` (None: the backend's default) and validate its
        metadata; `mean` and `std`, when given, replace the file's input normalisation. `providers` and
        `session_options` are onnxruntime's (its own threads and spinning, then). `precision="auto"` runs each input
        size on the fastest path within the drift budget (`fc2conv.runtime.auto`; with `backend="openvino"`, among
        OpenVINO's), chosen at its first input of that size; the file is opened in onnxruntime float32 to check it
        and to measure the others' drift against."""
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such model file")
        check_backend(backend, precision)
        self.chooser = self.choice = None
        if precision == AUTO:
            from .auto import Chooser

            self.chooser = Chooser(self.path, openvino_only=backend == "openvino", threads=threads,
                                   min_agreement=BUDGET)
        self.engine = open_session(self.path, backend="onnxruntime" if self.chooser else backend,
                                   precision="fp32" if self.chooser else precision, threads=threads,
                                   providers=providers, session_options=session_options)
        self.running = self.engine  # the session that computes: `engine`, or the one `chooser` chose
        self.session = self.engine.session
        self.backend, self.precision = backend, precision
        found = self.engine.custom_metadata
        self.metadata = decode(found, source=str(self.path), classes=self.classes)
        classes = self.classes
        given = {key: [float(v) for v in value] for key, value in (("mean", mean), ("std", std)) if value is not None}
        if given:
            self.metadata = {**self.metadata, **given}
            validate(self.metadata, source="mean= and std=", classes=classes)
        shape = self.metadata["input_shape"]
        self.channels, self.reference = shape[0], list(map_size(shape))
        # The sizes the model runs at, when only some (a window-partition model): others are refused by name.
        self.sizes = sizes_from_json(self.metadata.get("sizes"))
        self.input_name = self.engine.input_name

    @property
    def classes(self) -> int | None:
        """Scores per cell, when the file's output says (None when that dimension is symbolic)."""
        shape = self.engine.output_shape
        return shape[1] if len(shape) > 1 and isinstance(shape[1], int) else None

    @property
    def model_precision(self) -> str:
        """The file's own precision: "int8" for a file `fc2conv quantize` wrote, else "fp32"."""
        return self.metadata.get("precision", "fp32")

    @property
    def caution(self) -> str | None:
        """Why this file may drift beyond its recorded drift on this CPU and backend (an int8 file with 8-bit weights
        in onnxruntime on a CPU without VNNI or AMX: `fc2conv.runtime.cpu.int8_caution`), or None."""
        return int8_caution(self.metadata, self.backend, str(self.path))

    @property
    def numerics(self) -> dict[str, Any]:
        """What this session's results record: `backend`, `precision` (as executed: fp32, bf16, fp16, int8, int8+bf16
        …) and `exact` (the metadata's `exact` in float32 on a float32 file, false otherwise)."""
        if self.choice is None:
            label = precision_label(self.model_precision, self.engine.executed)
            return numerics(self.backend if self.chooser is None else "onnxruntime", label,
                            self.metadata.get("exact"), None if self.chooser else self.precision)
        label = precision_label(self.model_precision, self.running.executed)
        chosen = numerics(self.choice.backend, label, self.metadata.get("exact"), self.choice.precision)
        return {**chosen, **self.choice.record()}

    def infer(self, x: np.ndarray) -> np.ndarray:
        """The model's raw output for the prepared N×C×(spatial) float32 batch `x` (see `preprocess`)."""
        if self.chooser is not None:
            self.choice, self.running = self.chooser.choose(x, self)
        with translated(BackendError, f"{self.path}: {self.backend} failed on a {times(x.shape[2:])} input: "):
            return self.running.run(x)  # each backend raises its own error types for an input it cannot take

    @property
    def takes_vectors(self) -> bool:
        """Whether the model is an MLP: it scores D-vectors, one or a D×H×W map of them (every pixel on its own)."""
        return is_vector_input(self.metadata["input_shape"])

    @property
    def is_image(self) -> bool:
        """Whether inputs are images (C×H×W); otherwise arrays of C×L signals, C×D×H×W volumes or an MLP's vectors."""
        return len(self.reference) == 2 and not self.takes_vectors

    def preprocess(self, data: ImageLike, *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
        """The 1×C×(spatial) float32 input for `data`, normalised with the metadata's mean and std.

        Images (paths, PIL images, H×W×C arrays) are read by `load_image`; a `.npy` file or an array for a 1-D
        or 3-D model is the model's input as it is, channels first (C×L or C×D×H×W), and a `.npy` file for an
        image model is C×H×W. An MLP takes one D-vector or a D×H×W map of them (channels first), and an image
        file when D is its channel count (a pixel classifier). `.npy` files are read without pickle.
        """
        source = str(data) if isinstance(data, str | os.PathLike) else "the input"
        if _is_npy(data):
            x = open_npy(data)
            samples_within(x, max_pixels and max_pixels * self.channels, source=source)
        elif isinstance(data, np.ndarray) and not self.is_image:
            x = data
        elif self.is_image or (self.takes_vectors and self.channels in (1, 3)):
            x = load_image(data, self.channels, max_pixels=max_pixels).transpose(2, 0, 1)
        else:
            raise InputError(f"this model takes {self._expected()} arrays, a .npy file or a numpy array, not "
                             f"{type(data).__name__}")
        return self.normalise(x, source=source)

    def normalise(self, x: np.ndarray, *, source: str = "the input") -> np.ndarray:
        """The 1×C×(spatial) float32 input for the channels-first array `x` as a `.npy` file holds it: its shape
        checked, its samples numbers and finite (`InputError` naming `source` otherwise), then normalised with
        the metadata's mean and std."""
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise InputError(f"{source}: a {x.dtype} array is not numbers")
        x = np.asarray(x, dtype=np.float32)
        check_finite(x, source=source)
        if self.takes_vectors and x.ndim == 1:
            x = x.reshape(*x.shape, *VECTOR_MAP)  # one vector: a 1×1 map of it
        if x.ndim != len(self.reference) + 1 or x.shape[0] != self.channels:
            hint = (f"; N vectors as rows are the {self.channels}×N×1 map x.T[:, :, None]"
                    if self.takes_vectors and x.ndim == 2 and x.shape[1] == self.channels else "")
            raise InputError(f"{source}: the model takes {self._expected()} inputs (channels first); got an "
                                  f"array of shape {x.shape}{hint}")
        # One contiguous copy, then normalised in place: the same float32 operations as `(x - mean) / std`, without
        # the three other arrays of a tile's size that took a third of a scan's time outside the model.
        x = np.array(x[None], dtype=np.float32, order="C")
        view = (-1, *(1,) * len(self.reference))
        for key in ("mean", "std"):
            if key in self.metadata:
                value = np.asarray(self.metadata[key], dtype=np.float32).reshape(view)
                if key == "mean":
                    x -= value
                else:
                    x /= value
        return x

    def _expected(self) -> str:
        if self.takes_vectors:
            return f"{self.channels}-vector or {self.channels}×H×W"
        return times((self.channels, *["…"] * len(self.reference)))

    def run(self, data: ImageLike, *, max_pixels: int | None = MAX_PIXELS) -> Result:
        """The score map of `data`: an image (a path, PIL image, or H×W / H×W×C array; see `fc2conv.runtime.images`), a
        signal or volume (a `.npy` file or an array, channels first) for 1-D and 3-D models, or for an MLP one
        vector (a 1×1 map) or a D×H×W map of vectors (an H×W map of scores).

        An image file of more than `max_pixels` pixels is refused before it is decoded (None: no limit), and an input
        of a size the model does not take (the metadata's `sizes`: a window-partition model runs only at multiples
        of its window) with an `InputError` naming the sizes it takes.
        """
        x = self.preprocess(data, max_pixels=max_pixels)
        size = tuple(int(d) for d in x.shape[2:])
        shown = times(size)
        if self.metadata.get("mode") == "dense" and any(s < r for s, r in zip(size, self.reference, strict=True)):
            raise InputError(
                f"the input is {shown}, smaller than the model's {times(self.reference)} window; "
                "enlarge it to at least that size"
            )
        refused = size_refusal(size, self.sizes, self.reference)
        if refused:
            raise InputError(f"the input is {shown}, and {refused}")
        return Result(self.infer(x)[0], size, self.metadata, self.numerics)


def _is_npy(data: ImageLike) -> bool:
    return isinstance(data, str | os.PathLike) and Path(data).suffix == ".npy"


def heatmap(
    image: ImageLike, result: Result, class_index: int, path: str | os.PathLike, *, force: bool = False
) -> Path:
    """Write a PNG of `image` blended with the probability of `class_index` over it, at the image's size; for a
    `.npy` input (a C×H×W array, or an MLP's D×H×W map of vectors), which is no picture, the heat alone.

    A pixel's heat is the mean probability of the class over the cells whose box contains it (0 where no
    box reaches), scaled so the map's largest value is the hottest colour. Written atomically; an existing
    file is refused unless `force`. Returns the path.
    """
    classes = result.scores.shape[0]
    if not 0 <= class_index < classes:
        raise InputError(f"class {class_index} does not exist; the model has classes 0 … {classes - 1}")
    if len(result.input_size) != 2:
        raise InputError("heatmaps are drawn over images; this result is for a signal or a volume")
    picture = None if _is_npy(image) else load_image(image, 3, max_pixels=None)  # `result` holds its map already
    if picture is not None and picture.shape[:2] != result.input_size:
        raise InputError(f"the image is {picture.shape[:2]}, but the result is for {result.input_size}")
    probability = result.probabilities[class_index]
    total = np.zeros(result.input_size, dtype=np.float64)
    count = np.zeros(result.input_size, dtype=np.int64)
    for i, j in np.ndindex(*probability.shape):
        top, left, bottom, right = result.box(i, j)
        total[top:bottom, left:right] += probability[i, j]
        count[top:bottom, left:right] += 1
    heat = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    heat = heat / heat.max() if heat.max() > 0 else heat
    drawn = Image.fromarray(colormap(heat))
    if picture is not None:
        drawn = Image.blend(Image.fromarray((np.clip(picture, 0, 1) * 255).round().astype(np.uint8)), drawn,
                            _HEAT_ALPHA)
    with atomic_output(path, force=force) as tmp:
        drawn.save(tmp, format="PNG")
    return Path(path)


def colormap(heat: np.ndarray) -> np.ndarray:
    """Blue (0) → cyan → yellow → red (1), the usual "jet" ramp, as H×W×3 uint8."""
    channels = [np.clip(1.5 - np.abs(4 * heat - centre), 0, 1) for centre in (3, 2, 1)]
    return (np.stack(channels, axis=-1) * 255).round().astype(np.uint8)
