"""What running a model gives (`Result`): the score map of one input, its probabilities, each cell's window
(`box`) and the input that can change it (`influence`), and the best classes and windows as `Prediction`s.
Geometry as `fc2conv.runtime.model` describes it. No PyTorch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..shapes import influence_box, times, window_box

__all__ = ["Prediction", "Result"]


@dataclass(frozen=True)
class Prediction:
    """One class at one cell: its probability there and the cell's input box (its first positions, then its
    ends, exclusive: (top, left, bottom, right) for an image)."""

    class_index: int
    label: str
    score: float
    cell: tuple[int, ...]
    box: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Result:
    """The score map of one input: `scores` is K×(spatial) raw class scores (logits), K×H'×W' for an image."""

    scores: np.ndarray
    input_size: tuple[int, ...]
    metadata: dict[str, Any] = field(repr=False)
    # How the scores were computed: backend, precision, and whether they are the float32 model's (`exact`).
    numerics: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax over the classes, separately for every cell: each cell sums to 1."""
        shifted = np.exp(self.scores - self.scores.max(axis=0, keepdims=True))
        return shifted / shifted.sum(axis=0, keepdims=True)

    def label(self, class_index: int) -> str:
        labels = self.metadata.get("labels")
        return labels[class_index] if labels else str(class_index)

    def box(self, *cell: int) -> tuple[int, ...]:
        """The window of `cell` (one index per spatial axis), the input it stands for: first positions, then ends
        (exclusive). Not every input it depends on: see `influence`."""
        self._check_cell(cell)
        stride, window = self.metadata.get("stride"), self.metadata.get("window")
        if stride is None:  # global mode: one cell, the whole input
            return (0,) * len(cell) + tuple(self.input_size)
        return window_box(cell, stride, window)

    def influence(self, *cell: int) -> tuple[int, ...]:
        """The input positions that can change `cell`, clipped to this input, laid out as `box`'s: its window
        widened by the file's receptive field (padding reaches beyond the window); the whole input when the file's
        `exact` is not true (a cell may see all of it) or in global mode."""
        self._check_cell(cell)
        stride, field = self.metadata.get("stride"), self.metadata.get("receptive_field")
        if stride is None or not self.metadata.get("exact"):
            field = None
        return influence_box(cell, stride or (1,) * len(cell), self.metadata.get("window") or self.input_size,
                             field, self.input_size)

    def _check_cell(self, cell: tuple[int, ...]) -> None:
        shape = self.scores.shape[1:]
        if len(cell) != len(shape) or not all(0 <= i < n for i, n in zip(cell, shape, strict=True)):
            raise InputError(f"cell {cell} is outside the {times(shape)} score map")

    def _prediction(self, probabilities: np.ndarray, k: int, cell: tuple[int, ...]) -> Prediction:
        cell = tuple(int(i) for i in cell)
        return Prediction(int(k), self.label(int(k)), float(probabilities[(k, *cell)]), cell, self.box(*cell))

    def top_classes(self, k: int = 5) -> list[Prediction]:
        """The `k` classes with the highest probability at any cell, best first, each at its best cell."""
        probabilities = self.probabilities
        flat = probabilities.reshape(len(probabilities), -1)
        best_cell = flat.argmax(axis=1)
        order = np.argsort(-flat[np.arange(len(flat)), best_cell], kind="stable")[:k]
        return [self._prediction(probabilities, c, np.unravel_index(int(best_cell[c]), probabilities.shape[1:]))
                for c in order]

    def top_windows(self, k: int = 5) -> list[Prediction]:
        """The `k` (class, cell) pairs with the highest probabilities over the whole map, best first."""
        probabilities = self.probabilities
        order = np.argsort(-probabilities.ravel(), kind="stable")[:k]
        return [self._prediction(probabilities, index[0], index[1:])
                for index in (np.unravel_index(f, probabilities.shape) for f in order)]

    def to_dict(self, k: int = 5) -> dict[str, Any]:
        """JSON-ready summary: sizes, geometry, how the scores were computed (backend, precision; `exact` is false
        for anything but float32), and the top `k` classes and windows."""
        return {
            "input_size": list(self.input_size),
            "map_size": list(self.scores.shape[1:]),
            "classes": int(self.scores.shape[0]),
            **{key: self.metadata.get(key) for key in ("mode", "stride", "window", "exact")},
            **(self.numerics or {}),
            "top_classes": [p.to_dict() for p in self.top_classes(k)],
            "top_windows": [p.to_dict() for p in self.top_windows(k)],
        }
