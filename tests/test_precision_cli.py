"""Reduced precision on the command line and in scans: `fc2conv quantize`, `--backend` and `--precision` on `run` and
`scan` (Dask workers included), what `run --json` and the scan store record, and whether a tiled scan equals a
one-pass run of the same backend and precision (measured here: yes, bit for bit, on every path below)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close, invoke
from scan_helpers import export, noise, write_tiff

from fc2conv import ConversionError
from fc2conv.cli import EXIT_OK, EXIT_USAGE
from fc2conv.runtime import DenseModel, scan
from fc2conv.runtime.quantization import quantize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from digits_precision import calibration_set  # noqa: E402

pytest.importorskip("openvino")
pytest.importorskip("zarr")  # the scan extra: Python 3.11 or later
# (backend, precision, file): the paths of the benchmark.
PATHS = [("onnxruntime", "fp32", "fp32"), ("openvino", "fp32", "fp32"), ("openvino", "bf16", "fp32"),
         ("onnxruntime", "fp32", "int8"), ("openvino", "fp32", "int8")]


@pytest.fixture(scope="module")
def digits_int8_cli(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("precision_cli")
    fp32 = export("digits", directory)
    calibration_set(directory / "calibration", count=4, size=192)
    int8 = quantize(fp32, directory / "digits_int8.onnx", directory / "calibration").path
    return {"fp32": fp32, "int8": int8, "calibration": directory / "calibration"}


def test_quantize_command_writes_the_file_and_reports_calibration_drift_and_float_layers(digits_int8_cli, tmp_path):
    out = tmp_path / "q.onnx"
    done = invoke("quantize", digits_int8_cli["fp32"], "--calibration", digits_int8_cli["calibration"], "-o", out,
                  "--json")
    assert done.exit_code == EXIT_OK, done.output
    report = json.loads(done.stdout)
    assert report["precision"] == "int8" and report["exact"] is False and report["float_layers"] == []
    assert report["calibration"]["images"] == 3 and report["calibration"]["held_out"] == 1
    assert set(report["drift"]) == {"argmax_agreement", "max_abs_probability", "max_relative_score", "cells", "images"}
    assert DenseModel(out).metadata["drift"] == report["drift"]
    shown = invoke("quantize", digits_int8_cli["fp32"], "--calibration", digits_int8_cli["calibration"], "-o", out,
                   "--force").stdout
    assert "drift from float32: argmax agreement" in shown and "kept in float: nothing" in shown
    assert ("calibrated on 3 image(s) (minmax), sizes 192×192; drift measured on 1 held-out image(s) and 1 2×2 "
            "mosaic(s) of them (larger inputs)") in shown


def test_quantize_command_refusals_exit_2_naming_the_cause(digits_int8_cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    rgb = tmp_path / "rgb.npy"
    np.save(rgb, np.zeros((2, 3, 40, 40), np.float32))
    out = tmp_path / "out.onnx"
    for model, data, expected in [
        (digits_int8_cli["fp32"], empty, f"{empty}: the calibration set is empty"),
        (digits_int8_cli["fp32"], bad, f"{bad / 'scan.png'}: cannot read it as an image"),
        (digits_int8_cli["fp32"], rgb,
         f"{rgb}[0]: the model takes 1×…×… inputs (channels first); got an array of shape (3, 40"),
        (digits_int8_cli["int8"], digits_int8_cli["calibration"], f"{digits_int8_cli['int8']} is already quantized"),
    ]:
        done = invoke("quantize", model, "--calibration", data, "-o", out)
        assert done.exit_code == EXIT_USAGE, done.output
        assert expected in done.stderr
        assert not out.exists()
    done = invoke("quantize", digits_int8_cli["fp32"], "--calibration", digits_int8_cli["calibration"], "-o",
                  digits_int8_cli["fp32"], "--force")
    assert done.exit_code == EXIT_USAGE and "would destroy that input" in done.stderr


def test_run_records_backend_precision_and_exact(digits_int8_cli, tmp_path):
    image = tmp_path / "canvas.png"
    from PIL import Image

    Image.fromarray(noise(64, 80, channels=1)).save(image)
    for args, file, expected in [
        ((), "fp32", {"backend": "onnxruntime", "precision": "fp32", "exact": True}),
        (("--backend", "openvino"), "fp32", {"backend": "openvino", "precision": "fp32", "exact": True}),
        (("--backend", "openvino", "--precision", "bf16"), "fp32", {"backend": "openvino"}),
        ((), "int8", {"backend": "onnxruntime", "precision": "int8", "exact": False}),
        (("--backend", "openvino"), "int8", {"backend": "openvino", "precision": "int8", "exact": False}),
    ]:
        done = invoke("run", digits_int8_cli[file], image, "--json", *args)
        assert done.exit_code == EXIT_OK, done.output
        result = json.loads(done.stdout)["result"]
        assert {key: result[key] for key in expected} == expected
        assert result["exact"] is (result["precision"] == "fp32")  # bf16 runs as fp32 on a CPU without its units
    shown = invoke("run", digits_int8_cli["int8"], image, "--backend", "openvino").stdout
    assert "(openvino, int8, not exact: scores drift from float32)" in shown.splitlines()[0]


def test_run_refuses_a_backend_or_precision_it_does_not_have(digits_int8_cli, tmp_path):
    image = tmp_path / "canvas.png"
    from PIL import Image

    Image.fromarray(noise(40, 40, channels=1)).save(image)
    done = invoke("run", digits_int8_cli["fp32"], image, "--precision", "bf16")
    assert done.exit_code == EXIT_USAGE
    assert "--precision bf16 is not available with --backend onnxruntime" in done.stderr
    done = invoke("run", digits_int8_cli["fp32"], image, "--backend", "cuda")
    assert done.exit_code == EXIT_USAGE and "--backend must be one of onnxruntime, openvino" in done.stderr


@pytest.mark.parametrize(("backend", "precision", "file"), PATHS)
def test_tiled_scan_equals_one_pass_of_the_same_backend_and_precision(digits_int8_cli, tmp_path, backend, precision,
                                                                      file):
    """Measured on this AVX-512 machine: 0 (bit-identical) on every path, for the digits CNN (here) and for ResNet18
    and ResNet50 at 2048² (`bench.py --precision`). Asserted to the float32 guarantee's 1e-5, which does not depend
    on the kernels a CPU's instruction sets select."""
    image = noise(300, 260, channels=1)
    result = scan(write_tiff(tmp_path / "in.tif", image), model=digits_int8_cli[file], out=tmp_path / "out.zarr",
                  tile=64, backend=backend, precision=precision, threads=1, progress=False)
    one_pass = DenseModel(digits_int8_cli[file], backend=backend, precision=precision, threads=1).run(image).scores
    assert_close(result.scores()[...], one_pass, limit=1e-5)
    record = {key: result.metadata[key] for key in ("backend", "precision", "exact")}
    assert record["backend"] == backend and record["exact"] is (record["precision"] == "fp32")
    assert record["precision"] == ("int8" if file == "int8" else record["precision"])
    assert result.metadata["run"]["backend"] == backend and result.metadata["run"]["precision"] == precision


def test_scan_command_records_the_precision_and_resume_refuses_other_settings(digits_int8_cli, tmp_path):
    slide = write_tiff(tmp_path / "in.tif", noise(200, 200, channels=1))
    out = tmp_path / "out.zarr"
    done = invoke("scan", slide, "--model", digits_int8_cli["fp32"], "--out", out, "--tile", "64", "--backend",
                  "openvino", "--precision", "bf16", "--json")
    assert done.exit_code == EXIT_OK, done.output
    report = json.loads(done.stdout)
    assert report["backend"] == "openvino" and report["exact"] is (report["precision"] == "fp32")
    done = invoke("scan", slide, "--model", digits_int8_cli["fp32"], "--out", out, "--tile", "64", "--backend",
                  "openvino", "--resume")
    assert done.exit_code == EXIT_USAGE
    assert "it was started with other settings (precision: 'bf16' then, 'fp32' now)" in done.stderr
    done = invoke("scan", slide, "--model", digits_int8_cli["fp32"], "--out", tmp_path / "other.zarr", "--precision",
                  "fp16")
    assert done.exit_code == EXIT_USAGE and "--backend onnxruntime" in done.stderr
    assert not (tmp_path / "other.zarr").exists()


def test_dask_workers_build_the_same_backend_and_precision(digits_int8_cli, tmp_path):
    pytest.importorskip("distributed")
    image = noise(260, 230, channels=1)
    slide = write_tiff(tmp_path / "in.tif", image)
    here = scan(slide, model=digits_int8_cli["int8"], out=tmp_path / "here.zarr", tile=64, backend="openvino",
                precision="bf16", threads=1, progress=False)
    there = scan(slide, model=digits_int8_cli["int8"], out=tmp_path / "there.zarr", tile=64, backend="openvino",
                 precision="bf16", workers=2, threads=1, progress=False)  # one thread, as here, on any machine
    assert np.array_equal(there.scores()[...], here.scores()[...])
    assert there.metadata["precision"] == here.metadata["precision"] and there.metadata["exact"] is False


def test_a_store_begun_before_backends_resumes_as_onnxruntime_fp32(digits_int8_cli, tmp_path):
    import zarr

    slide = write_tiff(tmp_path / "in.tif", noise(100, 100, channels=1))
    out = tmp_path / "old.zarr"
    scan(slide, model=digits_int8_cli["fp32"], out=out, tile=64, progress=False)
    group = zarr.open_group(str(out), mode="r+")
    attrs = group.attrs.asdict()["fc2conv"]
    for key in ("backend", "precision"):
        del attrs["run"][key]
    group.attrs["fc2conv"] = attrs
    assert scan(slide, model=digits_int8_cli["fp32"], out=out, tile=64, resume=True, progress=False).computed == 0
    with pytest.raises(ConversionError, match="backend: 'onnxruntime' then, 'openvino' now"):
        scan(slide, model=digits_int8_cli["fp32"], out=out, tile=64, resume=True, backend="openvino", progress=False)
