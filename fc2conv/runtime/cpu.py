"""What this CPU can compute reduced precision with: the one place fc2conv reads the CPU, so that every decision and
report that depends on it (which precision OpenVINO will run, which kernels onnxruntime picks) follows one answer,
and so that the answer can be pinned to a class of CPU to see, and test, what fc2conv does there.

The classes of x86-64 CPU, because reduced precision is a different thing on each:

| class              | example                       | bf16 runs as | int8 dot products                              |
|--------------------|-------------------------------|--------------|------------------------------------------------|
| `avx2`             | Haswell … Zen 3, Skylake-S    | fp32         | u8×s8 pairs summed in 16 bits: can saturate     |
| `avx2-vnni`        | Alder Lake, Meteor Lake       | fp32         | AVX-VNNI: exact 32-bit sums                     |
| `avx512`           | Skylake-SP                    | fp32         | as avx2, twice as wide                          |
| `avx512-vnni`      | Cascade Lake, Ice Lake        | fp32         | VNNI: exact 32-bit sums                         |
| `avx512-vnni-bf16` | Cooper Lake, Zen 4            | bf16         | VNNI: exact 32-bit sums                         |
| `amx`              | Sapphire Rapids and later     | bf16 (tiles) | AMX tiles: exact 32-bit sums                    |

`FC2CONV_CPU_CLASS=<class>` pins the answer to a class's flags (the tests' `--cpu-class` option and `cpu_class`
fixture do this): fc2conv then decides and reports as it would on that class, and asks OpenVINO for no precision
the class lacks. It cannot give the machine units it does not have: what a backend really runs is still read back
from the backend. Under `qemu-x86_64 -cpu Haswell` (a real AVX2 CPU, emulated) /proc/cpuinfo still shows the host's
flags, so an emulated run pins `avx2` too (`scripts/test_cpu.sh`). numpy-free, torch-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import InputError

__all__ = ["CLASSES", "PIN", "Cpu", "PrecisionWarning", "detect", "int8_caution"]

PIN = "FC2CONV_CPU_CLASS"
_AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})
_AVX512 = _AVX2 | {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
_VNNI_BF16 = _AVX512 | {"avx512_vnni", "avx512_bf16"}
CLASSES: dict[str, frozenset[str]] = {
    "avx2": _AVX2,
    "avx2-vnni": _AVX2 | {"avx_vnni"},
    "avx512": _AVX512,
    "avx512-vnni": _AVX512 | {"avx512_vnni"},
    "avx512-vnni-bf16": _VNNI_BF16,
    "amx": _VNNI_BF16 | {"avx512_fp16", "amx_tile", "amx_int8", "amx_bf16"},
}
# The flags worth showing in a report: the units reduced precision runs on.
_SHOWN = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
          "amx_int8", "amx_bf16", "amx_fp16")


@dataclass(frozen=True)
class Cpu:
    """A CPU's feature flags (/proc/cpuinfo's names), where they came from, and what follows from them."""

    flags: frozenset[str]
    source: str  # "/proc/cpuinfo", or "pinned by FC2CONV_CPU_CLASS=avx2"
    name: str = ""  # the model name /proc/cpuinfo gives ("AMD EPYC 9R14"), "" when unknown or pinned

    @classmethod
    def from_cpuinfo(cls, text: str, source: str = "/proc/cpuinfo") -> Cpu:
        """The first processor of a /proc/cpuinfo text: its `flags` and `model name` lines."""
        fields: dict[str, str] = {}
        for line in text.splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        return cls(frozenset(fields.get("flags", "").split()), source, fields.get("model name", ""))

    @property
    def kind(self) -> str:
        """The class of the table in the module docstring this CPU falls in ("other" below AVX2)."""
        if {"amx_tile", "amx_int8"} <= self.flags:
            return "amx"
        if "avx512f" in self.flags:
            vnni = "avx512_vnni" in self.flags
            return "avx512-vnni-bf16" if vnni and "avx512_bf16" in self.flags else "avx512-vnni" if vnni else "avx512"
        if {"avx2", "fma"} <= self.flags:
            return "avx2-vnni" if "avx_vnni" in self.flags else "avx2"
        return "other"

    @property
    def exact_int8_sums(self) -> bool:
        """Whether int8 products are summed in 32 bits (VNNI or AMX); without them onnxruntime sums u8×s8 pairs in
        16 bits, which saturates on weights beyond 7 bits (so `fc2conv quantize` uses 7 bits there, 8 here)."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    @property
    def bf16_units(self) -> bool:
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def fp16_units(self) -> bool:
        return bool({"avx512_fp16", "amx_fp16"} & self.flags)

    def runs(self, precision: str) -> str:
        """The float precision OpenVINO runs when asked for `precision` here: bf16 and fp16 need their units, and an
        fp16 request runs as bf16 on bf16 units (seen on an AVX512-BF16 CPU), else as fp32."""
        if precision == "bf16":
            return "bf16" if self.bf16_units else "fp32"
        if precision == "fp16":
            return "fp16" if self.fp16_units else "bf16" if self.bf16_units else "fp32"
        return precision

    def mlas_kernels(self) -> dict[str, str]:
        """The GEMM kernels onnxruntime's MLAS dispatch selects on x86-64 for these flags: float32, and int8 (u8
        activations × s8 weights, the QDQ files `fc2conv quantize` writes)."""
        flags = self.flags
        fp32 = "avx512f" if "avx512f" in flags else "avx2+fma" if {"avx2", "fma"} <= flags else "sse"
        if {"amx_int8", "amx_tile"} <= flags:
            int8 = "amx_int8"
        elif "avx512_vnni" in flags:
            int8 = "avx512_vnni"
        elif "avx_vnni" in flags:
            int8 = "avx_vnni"
        elif {"avx512bw", "avx512vl"} <= flags:
            int8 = "avx512bw (no VNNI: u8×s8 pairs summed in 16 bits)"
        elif "avx2" in flags:
            int8 = "avx2 (no VNNI: u8×s8 pairs summed in 16 bits)"
        else:
            int8 = "sse"
        return {"fp32": fp32, "int8": int8}

    def shown_flags(self) -> list[str]:
        return [flag for flag in _SHOWN if flag in self.flags]


class PrecisionWarning(UserWarning):
    """A reduced-precision file will not compute here as it did where its drift was measured."""


def int8_caution(metadata: dict, backend: str, source: str, cpu: Cpu | None = None) -> str | None:
    """Why the int8 file `source` (its fc2conv `metadata`) may drift beyond its recorded drift in `backend` on `cpu`
    (default: this one), or None: a file with 8-bit weights in onnxruntime on a CPU that sums int8 products in 16 bits
    can saturate them (OpenVINO's kernels do not: measured on an emulated AVX2 CPU)."""
    cpu = cpu or detect()
    calibration = metadata.get("calibration") or {}
    if metadata.get("precision") != "int8" or backend != "onnxruntime" or cpu.exact_int8_sums \
            or calibration.get("weights") != "int8 per channel":  # 7-bit weights cannot saturate
        return None
    return (f"{source} has 8-bit int8 weights, quantized for CPUs with VNNI or AMX; this CPU ({cpu.kind}) sums int8 "
            "products in 16 bits in onnxruntime, where they can saturate, so its recorded drift does not hold here: "
            "run it with backend='openvino', or quantize it again on this CPU (7-bit weights)")


def detect() -> Cpu:
    """This CPU, or the class `FC2CONV_CPU_CLASS` pins (`InputError` naming the variable for an unknown one)."""
    pinned = os.environ.get(PIN, "").strip()
    if pinned:
        if pinned not in CLASSES:
            raise InputError(f"{PIN}={pinned!r} is not a CPU class; use one of {', '.join(CLASSES)}")
        return Cpu(CLASSES[pinned], f"pinned by {PIN}={pinned}")
    try:
        with open("/proc/cpuinfo") as f:
            return Cpu.from_cpuinfo(f.read(2**20))  # the first processors' lines are enough
    except OSError:
        return Cpu(frozenset(), "no /proc/cpuinfo")
