"""Where an exported model runs: one session interface over onnxruntime and OpenVINO, the precisions each offers,
and which instruction sets and kernels did the work. No torch; OpenVINO is imported only when asked for.

    from fc2conv.runtime.backends import open_session
    session = open_session("model.onnx", backend="openvino", precision="bf16", threads=2)
    scores = session.run(x)                    # the model's first output for the N×C×… float32 input `x`
    session.kernels()                          # what computed it: OpenVINO's executed graph, or onnxruntime's
                                               # MLAS kernels as its CPU flags select them

Precisions: onnxruntime runs float32 (`fp32`) only; OpenVINO runs `fp32`, `bf16` or `fp16` through its
`INFERENCE_PRECISION_HINT`, and a CPU without the units for one runs another (`fc2conv.runtime.cpu.Cpu.runs`: bf16
as fp32 on AVX2, fp16 as bf16 on AVX512-BF16), which is what it is asked for: `session.executed` is what the compiled
model reports it runs. An int8 file
(`fc2conv quantize`) runs on either backend; its float parts at the session's precision. Only `fp32` on a
float32 file gives the exported numbers (`exact` in `numerics`); everything else is approximate, by the drift
`fc2conv quantize` measures and the benchmark reports.

Threads: `threads` sets onnxruntime's intra-op threads (inter-op 1) or OpenVINO's `INFERENCE_NUM_THREADS`, and
then OpenVINO does not pin its threads to cores (scan workers are several processes on one machine, and
pinned threads of two processes can land on the same core). onnxruntime sessions built here let idle threads
sleep instead of spinning, so a session does not take the cores of another that runs beside it.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, InputError, translated
from .cpu import detect
from .metadata_file import read_entries

__all__ = [
    "AUTO",
    "BACKENDS",
    "BACKEND_PRECISIONS",
    "OPENVINO_EXTRA",
    "Session",
    "check_backend",
    "numerics",
    "open_session",
    "precision_label",
]

BACKENDS = ("onnxruntime", "openvino")
BACKEND_PRECISIONS = {"onnxruntime": ("fp32",), "openvino": ("fp32", "bf16", "fp16")}
AUTO = "auto"  # --precision auto: the fastest path within the drift budget (`fc2conv.runtime.auto`)
OPENVINO_EXTRA = "pip install 'fc2conv[openvino]'"
_OV_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_OV_NAME = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
# OpenVINO layers whose kernels say which units computed the model (its convolutions and matrix products).
_COMPUTE = {"Convolution", "GroupConvolution", "Deconvolution", "MatMul", "FullyConnected"}


def check_backend(backend: str, precision: str) -> None:
    """`InputError` naming `backend=` or `precision=` for a backend or a precision the backend does not run."""
    if backend not in BACKENDS:
        raise InputError(f"backend= must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if precision == AUTO:  # `fc2conv.runtime.auto` picks the backend and precision
        return
    if precision == "int8":
        raise InputError("precision='int8' is not a setting of a backend: int8 is a file, written by fc2conv "
                         "quantize, that runs on either backend with precision='fp32' (or 'bf16' for its float "
                         "layers on openvino)")
    if precision not in BACKEND_PRECISIONS[backend]:
        known = {p for values in BACKEND_PRECISIONS.values() for p in values}
        what = f"precision={precision!r}" + ("" if precision in known else " (unknown)")
        raise InputError(
            f"{what} is not available with backend={backend!r}, which runs {', '.join(BACKEND_PRECISIONS[backend])}; "
            "bf16 and fp16 run with backend='openvino', and int8 comes from a quantized file (fc2conv quantize)")


def precision_label(model_precision: str, executed: str) -> str:
    """What a session computes with: the float precision it executes, `int8` for a quantized file whose float parts
    run in float32, `int8+bf16` (say) when they run in bf16."""
    if model_precision == "int8":
        return "int8" if executed == "fp32" else f"int8+{executed}"
    return executed


def numerics(backend: str, label: str, model_exact: bool | None, requested: str | None = None) -> dict[str, Any]:
    """What results record about their numbers: the backend, the precision label, and `exact` — the metadata's
    `exact` (cells are exact windows, None: not proven) in float32, false for anything else."""
    record: dict[str, Any] = {"backend": backend, "precision": label,
                              "exact": model_exact if label == "fp32" else False}
    executed = "fp32" if label == "int8" else label.split("+")[-1]
    if requested is not None and requested != executed:  # the CPU lacks the units for the one asked for
        record["requested_precision"] = requested
    return record


class Session:
    """A model open in one backend: `run(x)` gives its first output; `input_name`, `output_shape` (the first output's
    dims, ints where static), `custom_metadata` (the file's metadata_props as (key, value) entries, read from the
    file by `fc2conv.runtime.metadata_file`, never from the backend's own map), `executed` (the float precision it
    runs), and `session`, the backend's own object (an `onnxruntime.InferenceSession` or an OpenVINO
    `CompiledModel`)."""

    backend: str
    precision: str
    executed: str
    input_name: str
    output_shape: list
    custom_metadata: list[tuple[str, str]]
    session: Any

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def kernels(self) -> dict[str, Any]:
        raise NotImplementedError


class OnnxRuntimeSession(Session):
    backend = "onnxruntime"

    def __init__(self, path: Path, *, threads: int | None = None, providers: list[str] | None = None,
                 session_options: Any = None) -> None:
        import onnxruntime as ort

        if session_options is None:
            session_options = ort.SessionOptions()
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if threads is not None:
                session_options.intra_op_num_threads = threads
                session_options.inter_op_num_threads = 1
        # onnxruntime raises its own unrelated types for bad files
        with translated(BackendError, f"{path}: onnxruntime cannot load it as an ONNX model (", end=")"):
            self.session = ort.InferenceSession(str(path), session_options,
                                                providers=providers or ["CPUExecutionProvider"])
        self.precision = self.executed = "fp32"
        self.input_name = self.session.get_inputs()[0].name
        self.output_shape = list(self.session.get_outputs()[0].shape)
        self.custom_metadata = read_entries(path)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def kernels(self) -> dict[str, Any]:
        cpu = detect()
        return {"backend": "onnxruntime", "source": f"CPU flags from {cpu.source} (onnxruntime does not report the "
                "kernels it runs; these are the MLAS kernels its dispatch picks for these flags)",
                "kernels": cpu.mlas_kernels(), "cpu_class": cpu.kind, "cpu_flags": cpu.shown_flags()}


class OpenVINOSession(Session):
    backend = "openvino"

    def __init__(self, path: Path, *, precision: str = "fp32", threads: int | None = None) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise BackendError(f"backend='openvino' needs OpenVINO, which is not installed: {OPENVINO_EXTRA}") \
                from None
        core = ov.Core()
        # OpenVINO raises RuntimeError with pages of context
        with translated(BackendError, f"{path}: OpenVINO cannot read it as an ONNX model (", end=")"):
            model = core.read_model(str(path))
        # Asked for what this CPU runs (`fc2conv.runtime.cpu`): OpenVINO would fall back by itself, but this way a
        # pinned CPU class is honoured too; what it really ran is read back below.
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _OV_HINT[detect().runs(precision)],
                                  "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config.update(INFERENCE_NUM_THREADS=threads, ENABLE_CPU_PINNING=False)
        with translated(BackendError, f"{path}: OpenVINO cannot compile it for the CPU (", end=")"):
            self.session = core.compile_model(model, "CPU", config)
        self.precision = precision
        hint = self.session.get_property("INFERENCE_PRECISION_HINT")
        self.executed = _OV_NAME.get(hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint), precision)
        self.input_name = model.inputs[0].get_any_name()
        dims = model.outputs[0].partial_shape
        self.output_shape = [d.get_length() if d.is_static else None for d in dims]
        self.custom_metadata = read_entries(path)
        self._requests = threading.local()  # an infer request serves one thread at a time; the compiled model many

    def run(self, x: np.ndarray) -> np.ndarray:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.session.create_infer_request()
        return request.infer({0: x})[0]  # copied out of the request's buffer (share_outputs=False)

    def kernels(self) -> dict[str, Any]:
        """The kernels of the compute layers that ran (after a first `run` of a dynamic model, those of its last
        shape), counted, with the precision each ran in; and OpenVINO's CPU capabilities."""
        import openvino as ov

        counts: Counter = Counter()
        for op in self.session.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "layerType" in info and info["layerType"].astype(str) in _COMPUTE:
                counts[f"{info['primitiveType'].astype(str)} ({info['runtimePrecision'].astype(str)})"] += 1
        capabilities = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        return {"backend": "openvino", "source": "OpenVINO's executed graph (compute layers: kernel, precision)",
                "kernels": dict(counts.most_common()), "capabilities": capabilities}


def open_session(path: str | os.PathLike, *, backend: str = "onnxruntime", precision: str = "fp32",
                 threads: int | None = None, providers: list[str] | None = None,
                 session_options: Any = None) -> Session:
    """`path` open in `backend` at `precision` (see the module docstring); `providers` and `session_options` are
    onnxruntime's own and refused with another backend."""
    check_backend(backend, precision)
    if backend == "onnxruntime":
        return OnnxRuntimeSession(Path(path), threads=threads, providers=providers, session_options=session_options)
    if providers or session_options is not None:
        raise InputError("providers and session_options are onnxruntime's; backend='openvino' takes threads "
                         "and a precision")
    return OpenVINOSession(Path(path), precision=precision, threads=threads)
