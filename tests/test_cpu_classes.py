"""The tests pass on every CPU class (fc2conv.runtime.cpu): what fc2conv decides and reports is checked here for each
class by pinning it (the `cpu_class` fixture), and what the backends really do on an AVX2 CPU, which this machine may
not be, is checked on an emulated one (`qemu-x86_64 -cpu Haswell`, installed by scripts/setup.sh as root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from helpers import invoke
from scan_helpers import export

from fc2conv import ConversionError
from fc2conv.runtime import DenseModel
from fc2conv.runtime.cpu import CLASSES, PIN, detect
from fc2conv.runtime.quantization import WEIGHTS_7, WEIGHTS_8, quantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What each class runs for each OpenVINO precision, and the int8 kernel onnxruntime picks there.
EXPECTED = {
    "avx2": ({"fp32": "fp32", "bf16": "fp32", "fp16": "fp32"}, "avx2 (no VNNI", False),
    "avx2-vnni": ({"fp32": "fp32", "bf16": "fp32", "fp16": "fp32"}, "avx_vnni", True),
    "avx512": ({"fp32": "fp32", "bf16": "fp32", "fp16": "fp32"}, "avx512bw (no VNNI", False),
    "avx512-vnni": ({"fp32": "fp32", "bf16": "fp32", "fp16": "fp32"}, "avx512_vnni", True),
    "avx512-vnni-bf16": ({"fp32": "fp32", "bf16": "bf16", "fp16": "bf16"}, "avx512_vnni", True),
    "amx": ({"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}, "amx_int8", True),
}


def test_each_class_is_what_its_pin_says_and_decides_as_that_cpu(cpu_class):
    runs, int8_kernel, exact_sums = EXPECTED[cpu_class.kind]
    assert cpu_class.source == f"pinned by {PIN}={cpu_class.kind}" and cpu_class.flags == CLASSES[cpu_class.kind]
    assert {precision: cpu_class.runs(precision) for precision in runs} == runs
    assert cpu_class.mlas_kernels()["int8"].startswith(int8_kernel)
    assert cpu_class.exact_int8_sums is exact_sums


def test_an_unknown_pin_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv(PIN, "avx1024")
    with pytest.raises(ConversionError, match=f"{PIN}=.avx1024. is not a CPU class; use one of avx2, avx2-vnni"):
        detect()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return export("digits", tmp_path_factory.mktemp("cpu"))


def test_onnxruntime_reports_the_kernels_of_the_pinned_class(digits, cpu_class):
    report = DenseModel(digits).engine.kernels()
    assert report["cpu_class"] == cpu_class.kind and report["kernels"] == cpu_class.mlas_kernels()
    assert cpu_class.source in report["source"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_openvino_is_asked_for_what_the_pinned_class_runs_and_records_what_ran(digits, cpu_class, precision):
    """A class without the units asks OpenVINO for fp32, so the numbers are exact there as on such a CPU; with them,
    the record is what this machine's OpenVINO ran (it cannot grow units the pin names)."""
    pytest.importorskip("openvino")
    model = DenseModel(digits, backend="openvino", precision=precision, threads=1)
    record = model.numerics
    assert record["precision"] == model.engine.executed and record["exact"] is (record["precision"] == "fp32")
    assert ("requested_precision" in record) is (record["precision"] != precision)
    if cpu_class.runs(precision) == "fp32":
        reference = DenseModel(digits).run(np.zeros((40, 40), np.uint8)).scores
        assert record["precision"] == "fp32"
        assert np.abs(model.run(np.zeros((40, 40), np.uint8)).scores - reference).max() <= 1e-4 * np.abs(
            reference).max()


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from digits_precision import calibration_set

    folder = tmp_path_factory.mktemp("cpu-calibration")
    calibration_set(folder, count=4, size=192)
    return folder


def test_quantize_uses_8_bit_weights_only_where_int8_sums_are_exact(digits, calibration, cpu_class, tmp_path):
    """7 bits where onnxruntime sums int8 products in 16 bits (AVX2, AVX-512 without VNNI), 8 with VNNI or AMX; the
    file says which, and the digits CNN keeps no layer in float either way."""
    done = quantize(digits, tmp_path / "int8.onnx", calibration)
    result = onnx.load(str(done.path))
    largest = max(int(np.abs(onnx.numpy_helper.to_array(t).astype(int)).max()) for t in result.graph.initializer
                  if t.data_type == onnx.TensorProto.INT8)
    assert largest == (127 if cpu_class.exact_int8_sums else 64)
    assert done.calibration["weights"] == (WEIGHTS_8 if cpu_class.exact_int8_sums else WEIGHTS_7)
    assert done.calibration["cpu"] == cpu_class.kind and done.float_layers == []


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_an_8_bit_file_is_cautioned_only_in_onnxruntime_without_exact_sums(digits, calibration, tmp_path, monkeypatch,
                                                                          backend):
    if backend == "openvino":
        pytest.importorskip("openvino")
    monkeypatch.setenv(PIN, "amx")
    full = quantize(digits, tmp_path / "int8.onnx", calibration).path
    monkeypatch.setenv(PIN, "avx2")
    reduced = quantize(digits, tmp_path / "int7.onnx", calibration).path
    caution = DenseModel(full, backend=backend).caution
    assert (caution is not None) is (backend == "onnxruntime")
    assert DenseModel(reduced, backend=backend).caution is None and DenseModel(digits).caution is None
    if caution:
        assert "int8.onnx has 8-bit int8 weights" in caution and "this CPU (avx2)" in caution
        image = tmp_path / "in.npy"  # an array: no warning about its normalisation
        np.save(image, np.zeros((1, 40, 40), np.float32))
        shown = invoke("run", full, image)
        assert "backend='openvino'" in caution  # the library names the keyword, the command its flag
        as_flag = caution.replace("backend='openvino'", "--backend openvino")
        assert shown.exit_code == 0 and shown.stderr.splitlines() == [f"warning: {as_flag}"]
        assert invoke("run", full, image, "--quiet").stderr == ""
    monkeypatch.setenv(PIN, "avx512-vnni-bf16")
    assert DenseModel(full, backend=backend).caution is None


@pytest.mark.cpu("exact_int8_sums")
def test_the_cpu_marker_runs_a_test_only_where_the_class_has_the_property():
    assert detect().exact_int8_sums


# Run under the emulated CPU, without torch: quantize the digits CNN, then OpenVINO at bf16 and its capabilities.
_ON_AVX2 = """
import json, sys
from pathlib import Path
import numpy as np
from fc2conv.runtime import DenseModel
from fc2conv.runtime.drift import measure
from fc2conv.runtime.quantization import quantize
from fc2conv.runtime.cpu import detect
import openvino
fp32, calibration, out, full = sys.argv[1:5]
done = quantize(fp32, out, calibration)
reference = DenseModel(fp32)
canvases = [reference.preprocess(path) for path in sorted(Path(calibration).glob("*.png"))]
eight_bit = {backend: measure((reference.infer(x), DenseModel(full, backend=backend).infer(x)) for x in canvases)
             .max_abs_probability for backend in ("onnxruntime", "openvino")}
model = DenseModel(fp32, backend="openvino", precision="bf16", threads=1)
model.run(np.zeros((40, 40), np.uint8))
print(json.dumps({"class": detect().kind, "float_layers": done.float_layers, "drift": done.drift.to_dict(),
                  "eight_bit": eight_bit, "caution": DenseModel(full).caution,
                  "calibration": done.calibration, "bf16": model.numerics,
                  "capabilities": list(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
                  "kernels": model.engine.kernels()["kernels"]}))
"""


def test_on_an_emulated_avx2_cpu_int8_does_not_saturate_and_bf16_runs_as_fp32(digits, tmp_path, monkeypatch):
    """On a real AVX2 CPU (emulated: Haswell), where onnxruntime sums u8×s8 pairs in 16 bits and there are no bf16
    units: the digits CNN quantizes with no layer kept in float and within the drift of the other classes (8-bit
    weights kept two layers in float there), and OpenVINO runs bf16 in fp32 with AVX2 kernels, recorded as asked for
    bf16 and exact. About a minute: the emulator runs the digits CNN some 50 times slower."""
    pytest.importorskip("openvino")
    emulator = shutil.which("qemu-x86_64")
    if emulator is None:
        pytest.skip("needs qemu-x86_64 (Debian's qemu-user, which scripts/setup.sh installs as root)")
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from digits_precision import calibration_set

    calibration_set(tmp_path / "calibration", count=4, size=192)
    monkeypatch.setenv(PIN, "amx")  # 8-bit weights, as a CPU with exact int8 sums writes them, wherever this runs
    full = quantize(digits, tmp_path / "full.onnx", tmp_path / "calibration").path
    monkeypatch.delenv(PIN)
    done = subprocess.run([emulator, "-cpu", "Haswell", sys.executable, "-c", textwrap.dedent(_ON_AVX2), str(digits),
                           str(tmp_path / "calibration"), str(tmp_path / "int8.onnx"), str(full)],
                          env={**os.environ, PIN: "avx2"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert "BF16" not in found["capabilities"] and "AVX512" not in " ".join(found["kernels"]).upper()  # really AVX2
    assert found["class"] == "avx2" and found["calibration"]["cpu"] == "avx2"
    assert found["float_layers"] == [] and found["drift"]["argmax_agreement"] >= 0.999
    assert found["drift"]["max_abs_probability"] <= 0.15
    assert found["bf16"] == {"backend": "openvino", "precision": "fp32", "exact": True, "requested_precision": "bf16"}
    assert all("avx2" in kernel for kernel in found["kernels"])
    # The 8-bit file saturates onnxruntime's 16-bit sums there (measured: its largest probability change 0.35 against
    # 0.08 in OpenVINO, whose kernels do not saturate), and it is cautioned.
    assert found["eight_bit"]["onnxruntime"] > 2 * found["eight_bit"]["openvino"], found["eight_bit"]
    assert found["caution"] and "this CPU (avx2)" in found["caution"]
