"""Run a model written by `fc2conv.export_onnx` on an image, with numpy, onnxruntime and Pillow only.

    from fc2conv.runtime import DenseModel, heatmap
    model = DenseModel("resnet18.onnx")
    result = model.run("photo.jpg")            # any size at least the reference size
    result.top_classes(5)                      # classes ranked by their best window
    result.top_windows(5)                      # best (class, window) pairs, each with its input box
    heatmap("photo.jpg", result, 281, "heat.png")

Preprocessing: the image is read as `fc2conv.images` says (float32 in [0, 1] by its real bit depth, EXIF
orientation applied, the model's channel count, a pixel budget checked before decoding), then normalised as
(x − mean) / std with the file's metadata when present. The metadata is validated when the model is opened
(`fc2conv.metadata`), so a bad field is named there rather than failing later.

Geometry: cell (i, j) of the score map covers input rows i·sh … i·sh + h − 1 and columns j·sw … j·sw + w − 1
(stride and window from the file's metadata, measured on the PyTorch model at export); in global mode the
one cell covers the whole image. This module never imports PyTorch (tested with torch blocked).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from .errors import ConversionError
from .files import atomic_output
from .images import MAX_PIXELS, ImageLike, load_image
from .metadata import PREFIX as METADATA_PREFIX
from .metadata import decode

__all__ = ["METADATA_PREFIX", "DenseModel", "ImageLike", "Prediction", "Result", "heatmap", "load_image"]

_HEAT_ALPHA = 0.5


@dataclass(frozen=True)
class Prediction:
    """One class at one cell: its probability there and the cell's input box (top, left, bottom, right)."""

    class_index: int
    label: str
    score: float
    cell: tuple[int, int]
    box: tuple[int, int, int, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Result:
    """The score map of one image: `scores` is K×H'×W' raw class scores (logits)."""

    scores: np.ndarray
    image_size: tuple[int, int]
    metadata: dict[str, Any] = field(repr=False)

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax over the classes, separately for every cell: K×H'×W', each cell sums to 1."""
        shifted = np.exp(self.scores - self.scores.max(axis=0, keepdims=True))
        return shifted / shifted.sum(axis=0, keepdims=True)

    def label(self, class_index: int) -> str:
        labels = self.metadata.get("labels")
        return labels[class_index] if labels else str(class_index)

    def box(self, i: int, j: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) in input pixels of cell (i, j), bottom and right exclusive."""
        rows, cols = self.scores.shape[1:]
        if not (0 <= i < rows and 0 <= j < cols):
            raise ConversionError(f"cell ({i}, {j}) is outside the {rows}×{cols} score map")
        stride, window = self.metadata.get("stride"), self.metadata.get("window")
        if stride is None:  # global mode: one cell, the whole image
            return 0, 0, *self.image_size
        top, left = i * stride[0], j * stride[1]
        return top, left, top + window[0], left + window[1]

    def _prediction(self, probabilities: np.ndarray, k: int, i: int, j: int) -> Prediction:
        return Prediction(int(k), self.label(int(k)), float(probabilities[k, i, j]), (int(i), int(j)),
                          self.box(int(i), int(j)))

    def top_classes(self, k: int = 5) -> list[Prediction]:
        """The `k` classes with the highest probability at any cell, best first, each at its best cell."""
        probabilities = self.probabilities
        flat = probabilities.reshape(len(probabilities), -1)
        best_cell = flat.argmax(axis=1)
        order = np.argsort(-flat[np.arange(len(flat)), best_cell], kind="stable")[:k]
        cols = probabilities.shape[2]
        return [self._prediction(probabilities, c, *divmod(int(best_cell[c]), cols)) for c in order]

    def top_windows(self, k: int = 5) -> list[Prediction]:
        """The `k` (class, cell) pairs with the highest probabilities over the whole map, best first."""
        probabilities = self.probabilities
        order = np.argsort(-probabilities.ravel(), kind="stable")[:k]
        return [self._prediction(probabilities, *np.unravel_index(f, probabilities.shape)) for f in order]

    def to_dict(self, k: int = 5) -> dict[str, Any]:
        """JSON-ready summary: sizes, geometry, and the top `k` classes and windows."""
        return {
            "image_size": list(self.image_size),
            "map_size": list(self.scores.shape[1:]),
            "classes": int(self.scores.shape[0]),
            **{key: self.metadata.get(key) for key in ("mode", "stride", "window", "exact")},
            "top_classes": [p.to_dict() for p in self.top_classes(k)],
            "top_windows": [p.to_dict() for p in self.top_windows(k)],
        }


class DenseModel:
    """An exported fc2conv model in an onnxruntime session, with its `fc2conv.*` metadata (`.metadata`)."""

    def __init__(self, path: str | os.PathLike, *, providers: list[str] | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConversionError(f"{self.path}: no such model file")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own unrelated types for bad files
            raise ConversionError(f"{self.path}: onnxruntime cannot load it as an ONNX model ({e})") from None
        found = self.session.get_modelmeta().custom_metadata_map
        classes = self.session.get_outputs()[0].shape[1] if len(self.session.get_outputs()[0].shape) > 1 else None
        self.metadata = decode(found, source=str(self.path), classes=classes if isinstance(classes, int) else None)
        shape = self.metadata["input_shape"]
        if len(shape) != 3:
            raise ConversionError(f"{self.path} takes {shape}-vectors, not images; run it with onnxruntime")
        self.channels, *self.reference = shape
        self.input_name = self.session.get_inputs()[0].name

    def preprocess(self, image: ImageLike, *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
        """The 1×C×H×W float32 input for `image`, normalised with the metadata's mean and std (`load_image`)."""
        x = load_image(image, self.channels, max_pixels=max_pixels)
        for key in ("mean", "std"):
            if key in self.metadata:
                value = np.asarray(self.metadata[key], dtype=np.float32)
                x = x - value if key == "mean" else x / value
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)

    def run(self, image: ImageLike, *, max_pixels: int | None = MAX_PIXELS) -> Result:
        """The score map of `image` (a path, PIL image, or H×W / H×W×C array; see `fc2conv.images`).

        An image file of more than `max_pixels` pixels is refused before it is decoded (None: no limit).
        """
        x = self.preprocess(image, max_pixels=max_pixels)
        size = tuple(int(d) for d in x.shape[2:])
        if self.metadata.get("mode") == "dense" and (size[0] < self.reference[0] or size[1] < self.reference[1]):
            raise ConversionError(
                f"the image is {size[0]}×{size[1]}, smaller than the model's {self.reference[0]}×"
                f"{self.reference[1]} window; enlarge it to at least that size"
            )
        try:
            (scores,) = self.session.run(None, {self.input_name: x})
        except Exception as e:
            raise ConversionError(f"{self.path}: onnxruntime failed on a {size[0]}×{size[1]} image: {e}") from None
        return Result(scores[0], size, self.metadata)


def heatmap(
    image: ImageLike, result: Result, class_index: int, path: str | os.PathLike, *, force: bool = False
) -> Path:
    """Write a PNG of `image` blended with the probability of `class_index` over it, at the image's size.

    A pixel's heat is the mean probability of the class over the cells whose box contains it (0 where no
    box reaches), scaled so the map's largest value is the hottest colour. Written atomically; an existing
    file is refused unless `force`. Returns the path.
    """
    classes = result.scores.shape[0]
    if not 0 <= class_index < classes:
        raise ConversionError(f"class {class_index} does not exist; the model has classes 0 … {classes - 1}")
    picture = load_image(image, 3, max_pixels=None)  # `result` already holds this image's map
    if picture.shape[:2] != result.image_size:
        raise ConversionError(f"the image is {picture.shape[:2]}, but the result is for {result.image_size}")
    probability = result.probabilities[class_index]
    total = np.zeros(result.image_size, dtype=np.float64)
    count = np.zeros(result.image_size, dtype=np.int64)
    for i, j in np.ndindex(*probability.shape):
        top, left, bottom, right = result.box(i, j)
        total[top:bottom, left:right] += probability[i, j]
        count[top:bottom, left:right] += 1
    heat = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    heat = heat / heat.max() if heat.max() > 0 else heat
    overlay = Image.fromarray(_colormap(heat))
    base = Image.fromarray((np.clip(picture, 0, 1) * 255).round().astype(np.uint8))
    blended = Image.blend(base, overlay, _HEAT_ALPHA)
    with atomic_output(path, force=force) as tmp:
        blended.save(tmp, format="PNG")
    return Path(path)


def _colormap(heat: np.ndarray) -> np.ndarray:
    """Blue (0) → cyan → yellow → red (1), the usual "jet" ramp, as H×W×3 uint8."""
    channels = [np.clip(1.5 - np.abs(4 * heat - centre), 0, 1) for centre in (3, 2, 1)]
    return (np.stack(channels, axis=-1) * 255).round().astype(np.uint8)
