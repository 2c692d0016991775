"""Run ONNX models in onnxruntime to prove what fc2conv writes: a model that cannot be run cannot be checked, and
a model that was not checked is not written.

`session` opens a model or says why onnxruntime cannot (an opset it does not know, an unsupported op). `probe`
runs a model on given inputs and names the first shape it fails at, which catches sizes an exporter baked into
the graph. `assert_same_scores` compares the head outputs of a source and its
conversion at one input, flattening the N×K×1×1 maps back to N×K.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from ...errors import ConversionError, first_line, translated
from ...shapes import times
from ...tolerance import max_errors, tolerance

__all__ = ["assert_same_scores", "input_dtype", "probe", "random_input", "session"]

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


def session(model: onnx.ModelProto, label: str, *, what: str = "it") -> ort.InferenceSession:
    """An onnxruntime session of `model` on the CPU, or `ConversionError` saying why there is none."""
    try:
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own unrelated types
        raise ConversionError(f"{label}: onnxruntime cannot load {what} ({first_line(e) or type(e).__name__}); "
                              "fc2conv proves every "
                              "conversion by running it, so it does not convert what it cannot run") from None


def input_dtype(runner: ort.InferenceSession) -> np.dtype:
    """The numpy dtype of the session's first input."""
    return np.dtype(_ORT_TYPES.get(runner.get_inputs()[0].type, np.float32))


def random_input(shape: tuple[int, ...], dtype: np.dtype, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def probe(runner: ort.InferenceSession, inputs: list[np.ndarray], label: str, why: str) -> list[list[np.ndarray]]:
    """The outputs of `runner` on each input; `ConversionError` naming the input shape it fails at and `why`."""
    name = runner.get_inputs()[0].name
    results = []
    for x in inputs:
        with translated(ConversionError, f"{label}: the written model fails in onnxruntime on a {times(x.shape)} "
                        "input (", end=f"); {why}"):
            results.append(runner.run(None, {name: x}))
    return results


def assert_same_scores(expected: list[np.ndarray], actual: list[np.ndarray], label: str, where: str) -> None:
    """`ConversionError` unless every output in `actual` equals `expected`'s within the conversion tolerance
    (maps of one cell compared as the vectors they replace)."""
    for k, (want, got) in enumerate(zip(expected, actual, strict=True)):
        got = got.reshape(want.shape) if got.size == want.size else got
        if got.shape != want.shape:
            raise ConversionError(f"{label}: output {k} is {got.shape} {where}, not {want.shape}; not written")
        _, max_rel = max_errors(got.astype(np.float64), want.astype(np.float64))
        if max_rel > tolerance(want.dtype):
            raise ConversionError(f"{label}: the converted model differs from the original {where} (max rel error "
                                  f"{max_rel:.1e} > {tolerance(want.dtype):.0e}); a bug in fc2conv, nothing written")
