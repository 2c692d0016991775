"""Say what this CPU will do, before it does it: `fc2conv doctor` reads the CPU's units from /proc/cpuinfo (real
flag lines of each class are fixtures in tests/golden/cpuinfo), names the backends installed, and for every path
says what it runs as and the speed-up measured on that class; `run` and `scan` say in one line, before the work,
when a precision asked for runs as another."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import invoke
from scan_helpers import export

from fc2conv.runtime.cpu import PIN, Cpu
from fc2conv.runtime.doctor import MEASURED, report

CPUINFO = Path(__file__).parent / "golden" / "cpuinfo"
# fixture: (class, model name, bf16 runs as, fp16 runs as, weight bits of `fc2conv quantize`)
CPUS = {
    "haswell_xeon.txt": ("avx2", "Intel(R) Xeon(R) CPU E5-2680 v3 @ 2.50GHz", "fp32", "fp32", 7),
    "alder_lake.txt": ("avx2-vnni", "12th Gen Intel(R) Core(TM) i7-12700", "fp32", "fp32", 8),
    "skylake_sp.txt": ("avx512", "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz", "fp32", "fp32", 7),
    "cascade_lake.txt": ("avx512-vnni", "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz", "fp32", "fp32", 8),
    "zen4_epyc.txt": ("avx512-vnni-bf16", "AMD EPYC", "bf16", "bf16", 8),
    "sapphire_rapids.txt": ("amx", "Intel(R) Xeon(R) Platinum 8488C", "bf16", "fp16", 8),
}


@pytest.mark.parametrize("fixture", list(CPUS))
def test_a_real_cpuinfo_of_each_class_is_read_and_reported(fixture):
    kind, name, bf16, fp16, bits = CPUS[fixture]
    cpu = Cpu.from_cpuinfo((CPUINFO / fixture).read_text())
    assert (cpu.kind, cpu.name) == (kind, name)
    found = report(cpu)
    runs = {(p["backend"], p["precision"]): p for p in found["paths"]}
    assert runs["openvino", "bf16"]["runs"] == bf16 and runs["openvino", "fp16"]["runs"] == fp16
    assert runs["openvino", "bf16"]["exact"] is (bf16 == "fp32")
    assert ("no bf16 units: runs as fp32" in runs["openvino", "bf16"]["why"]) is (bf16 == "fp32")
    assert found["quantize"]["weight_bits"] == bits
    assert ("16 bits" in runs["onnxruntime", "int8"]["why"]) is (bits == 7)
    measured = kind in MEASURED
    assert (runs["openvino", "int8"]["speedup"] is not None) is measured and (found["measured_on"] is None) is not \
        measured
    assert found["cpu"]["units"]["AVX-512"] is ("avx512f" in cpu.flags)


def test_doctor_prints_the_units_paths_and_speedups_of_the_pinned_class(monkeypatch):
    monkeypatch.setenv(PIN, "avx2")
    shown = invoke("doctor")
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("CPU: unknown, class avx2 (from pinned by FC2CONV_CPU_CLASS=avx2)")
    assert "AVX2/FMA yes   AVX-512 no   VNNI no" in lines[1] and lines[2].startswith("backends: onnxruntime ")
    bf16 = next(line for line in lines if line.startswith("openvino bf16"))
    assert bf16.split()[2:4] == ["fp32", "1.0×"] and "no bf16 units: runs as fp32" in bf16
    assert lines[-1] == "fc2conv quantize here: weights in 7 bits (int8 sums are 16-bit: 8 bits could saturate them)"
    monkeypatch.setenv(PIN, "avx512-vnni")
    data = json.loads(invoke("doctor", "--json").stdout)
    assert data["cpu"]["class"] == "avx512-vnni" and data["measured_on"] is None
    assert "no CPU of class avx512-vnni yet" in invoke("doctor").stdout


@pytest.mark.parametrize(("pinned", "noted"), [("avx2", True), ("avx512-vnni-bf16", False)])
def test_run_and_scan_say_before_the_work_when_bf16_runs_as_fp32(tmp_path, monkeypatch, pinned, noted):
    pytest.importorskip("openvino")
    monkeypatch.setenv(PIN, pinned)
    model = export("digits", tmp_path)
    image = tmp_path / "in.npy"
    np.save(image, np.zeros((1, 40, 40), np.float32))
    note = f"note: this CPU ({pinned}) has no bf16 units: OpenVINO runs bf16 as fp32, exact and no faster than fp32"
    done = invoke("run", model, image, "--backend", "openvino", "--precision", "bf16")
    assert done.exit_code == 0 and (note in done.stderr) is noted and len(done.stderr.splitlines()) == noted
    assert invoke("run", model, image, "--backend", "openvino", "--precision", "bf16", "-q").stderr == ""
    pytest.importorskip("zarr")
    slide = tmp_path / "slide.png"
    from PIL import Image

    Image.fromarray(np.zeros((64, 64), np.uint8)).save(slide)
    scanned = invoke("scan", slide, "--model", model, "--out", tmp_path / "o.zarr", "--backend", "openvino",
                     "--precision", "bf16")
    assert scanned.exit_code == 0, scanned.output
    assert (note in scanned.stderr) is noted
