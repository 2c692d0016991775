"""The one error measure and the tolerances every check in fc2conv uses, for torch tensors and numpy arrays alike
(no torch import, so the ONNX converter and the runtime share them).

Error measure: max |actual − expected| / max |expected| over the whole output (relative to the output's scale,
so logits near zero do not blow it up). Tolerance: 1e-5 in float32, 1e-10 in float64; 1e-4 in float32
between onnxruntime and PyTorch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ACROSS_RUNTIMES", "TOLERANCE", "max_errors", "tolerance"]

TOLERANCE: dict[str, float] = {"float32": 1e-5, "float64": 1e-10}
# Between two runtimes (onnxruntime against PyTorch) every layer of the backbone, not only the converted head,
# sums in another order: measured up to 4.4e-5 on Inception v3 (float32, 94 convolutions deep).
ACROSS_RUNTIMES: dict[str, float] = {"float32": 1e-4, "float64": 1e-10}


def tolerance(dtype: Any, *, across_runtimes: bool = False) -> float:
    """The largest error (see `max_errors`) a conversion may show in `dtype` (a torch or numpy dtype, or its
    name); `across_runtimes` when the two outputs come from different runtimes (onnxruntime against PyTorch)."""
    name = str(dtype).removeprefix("torch.")
    table = ACROSS_RUNTIMES if across_runtimes else TOLERANCE
    if name not in table:
        raise ValueError(f"fc2conv checks float32 and float64 outputs, not {name}")
    return table[name]


def max_errors(actual: Any, expected: Any) -> tuple[float, float]:
    """(max absolute error, max absolute error / max |expected|) of two torch tensors or numpy arrays."""
    if tuple(actual.shape) != tuple(expected.shape):
        raise ValueError(f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    actual, expected = _values(actual), _values(expected)
    max_abs = float(abs(actual - expected).max())
    scale = float(abs(expected).max())
    return max_abs, max_abs / scale if scale > 0 else max_abs


def _values(tensor: Any) -> Any:
    """A torch tensor detached from autograd (so reading a number from it does not warn); arrays as they are."""
    return tensor.detach() if hasattr(tensor, "detach") else tensor
