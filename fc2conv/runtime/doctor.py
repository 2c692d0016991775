"""What this CPU will do with each precision, said before anything runs (`fc2conv doctor`): its units that matter, the
backends installed, and for every path (backend × precision, and int8 files) what it runs as and the speed-up to
expect over onnxruntime fp32, from the figures measured on a CPU of the same class. No torch; no backend is imported
(versions come from the installed packages' metadata).
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from .cpu import Cpu, detect

__all__ = ["MEASURED", "UNITS", "report"]

# (name, flags any of which gives the unit)
UNITS = (("AVX2/FMA", ("avx2",)), ("AVX-512", ("avx512f",)), ("VNNI", ("avx512_vnni", "avx_vnni")),
         ("AVX512-BF16", ("avx512_bf16",)), ("AVX512-FP16", ("avx512_fp16",)), ("AMX-BF16", ("amx_bf16",)),
         ("AMX-INT8", ("amx_int8",)), ("AMX-FP16", ("amx_fp16",)))
# Speed-up over onnxruntime fp32 of dense ResNet50 at 896², 2 threads, measured on a CPU of each class: where, and
# the figures (`scripts/bench.py --precision` prints them for the CPU at hand). Classes not measured have none.
MEASURED: dict[str, tuple[str, dict[str, float]]] = {
    "amx": ("a 2-core CPU with AMX (the project's measurement, not this machine's)",
            {"openvino fp32": 1.0, "openvino bf16": 6.8, "onnxruntime int8": 3.2, "openvino int8": 10.0}),
    "avx512-vnni-bf16": ("a 2-core AMD EPYC with AVX512-BF16 and VNNI, no AMX (docs/precision.md)",
                         {"openvino fp32": 1.05, "openvino bf16": 2.1, "onnxruntime int8": 3.1, "openvino int8": 4.1}),
    "avx2": ("a 2-core CPU with AVX2 only (the project's measurement, not this machine's)",
             {"openvino fp32": 1.0, "openvino bf16": 1.0, "onnxruntime int8": 2.0, "openvino int8": 2.0}),
}
_PATHS = (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "fp16"),
          ("onnxruntime", "int8"), ("openvino", "int8"))


def report(cpu: Cpu | None = None) -> dict[str, Any]:
    """The report of `fc2conv doctor` for `cpu` (default: this one): a JSON-ready dict of `cpu` (name, class,
    source, units), `backends` (name: version or None), `paths` (each backend and precision: what runs, the
    speed-up measured on this class, and why it differs from what was asked), `measured_on`, and `quantize` (the
    weights `fc2conv quantize` writes here)."""
    cpu = cpu or detect()
    backends = {name: _version(package) for name, package in (("onnxruntime", "onnxruntime"),
                                                              ("openvino", "openvino"))}
    where, speedups = MEASURED.get(cpu.kind, (None, {}))
    paths = []
    for backend, precision in _PATHS:
        runs = "int8" if precision == "int8" else cpu.runs(precision) if backend == "openvino" else "fp32"
        speedup = 1.0 if (backend, precision) == ("onnxruntime", "fp32") else speedups.get(f"{backend} {runs}")
        paths.append({"backend": backend, "precision": precision, "runs": runs, "exact": runs == "fp32",
                      "installed": backends[backend] is not None, "speedup": speedup,
                      "why": _why(cpu, backend, precision, runs)})
    units = {name: any(flag in cpu.flags for flag in flags) for name, flags in UNITS}
    return {"cpu": {"name": cpu.name, "class": cpu.kind, "source": cpu.source, "units": units},
            "backends": backends, "paths": paths, "measured_on": where,
            "quantize": {"weight_bits": 8 if cpu.exact_int8_sums else 7, "exact_int8_sums": cpu.exact_int8_sums}}


def _why(cpu: Cpu, backend: str, precision: str, runs: str) -> str:
    """Why a path runs as it does here, when that is worth a word."""
    if precision in ("bf16", "fp16") and runs != precision:
        return f"no {precision} units: runs as {runs}" + (" (exact, no faster than fp32)" if runs == "fp32" else "")
    if precision == "int8" and backend == "onnxruntime":
        return "VNNI or AMX: exact int8 sums" if cpu.exact_int8_sums else \
            "int8 sums in 16 bits: 7-bit weights here, and an 8-bit file can saturate"
    return ""


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
