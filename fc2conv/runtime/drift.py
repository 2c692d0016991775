"""How far reduced-precision scores drift from float32: per-cell argmax agreement, the largest change of a
probability, and the largest change of a score relative to the largest score (the measure of
`fc2conv.conversion.verification.tolerance`). numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["BUDGET", "Drift", "measure", "softmax"]

# The default drift budget: the share of cells whose best class must be float32's, for `fc2conv quantize`'s int8 files
# and for the reduced precisions `--precision auto` may choose.
BUDGET = 0.99


def softmax(scores: np.ndarray, axis: int = 0) -> np.ndarray:
    """Probabilities over `axis` (the classes), separately for every cell."""
    shifted = np.exp(scores - scores.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


@dataclass(frozen=True)
class Drift:
    """Over `images` inputs and their `cells` cells: the share of cells whose best class is the float32 one
    (`argmax_agreement`), the largest |Δprobability| of any class at any cell, and the largest |Δscore| / the
    largest |float32 score| of its image."""

    argmax_agreement: float
    max_abs_probability: float
    max_relative_score: float
    cells: int
    images: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def within(self, agreement: float, probability: float) -> bool:
        return self.argmax_agreement >= agreement and self.max_abs_probability <= probability

    def __str__(self) -> str:
        return (f"argmax agreement {self.argmax_agreement:.3%} of {self.cells} cells on {self.images} image(s), max "
                f"|Δprobability| {self.max_abs_probability:.4f}, max |Δscore| {self.max_relative_score:.2%} of the "
                "largest score")


def measure(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> Drift:
    """The drift of each `(float32, approximate)` pair of raw N×K×(spatial) outputs, over all of them."""
    same = cells = images = 0
    probability = relative = 0.0
    for reference, approximate in pairs:
        if reference.shape != approximate.shape:
            raise ValueError(f"outputs of shapes {reference.shape} and {approximate.shape} cannot be compared")
        reference, approximate = reference.astype(np.float64), approximate.astype(np.float64)
        same += int((reference.argmax(axis=1) == approximate.argmax(axis=1)).sum())
        cells += reference.shape[0] * int(np.prod(reference.shape[2:]))
        images += reference.shape[0]
        probability = max(probability, float(np.abs(softmax(reference, 1) - softmax(approximate, 1)).max()))
        relative = max(relative, float(np.abs(reference - approximate).max() / max(np.abs(reference).max(), 1e-30)))
    return Drift(same / max(cells, 1), probability, relative, cells, images)
