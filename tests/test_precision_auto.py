"""`--precision auto`: the fastest path for the file on this CPU at the size being run, among those within the drift
budget, timed in a few seconds, cached per model, CPU and size, and recorded in every result (fc2conv.runtime.auto).
What the timings pick depends on the machine; what is tested holds on any: the choice is the fastest of the paths
timed, the paths are the ones this CPU class runs natively, a path outside the budget is dropped with its reason, and
the choice is recorded and reused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import invoke
from scan_helpers import export

from fc2conv import ConversionError
from fc2conv.runtime import DenseModel
from fc2conv.runtime.auto import Chooser
from fc2conv.runtime.cpu import PIN

openvino = pytest.importorskip("openvino")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Each test has a cache of its own."""
    monkeypatch.setenv("FC2CONV_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "precision.json"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return export("digits", tmp_path_factory.mktemp("auto"))


def _canvas(size: int = 96) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)


def test_auto_runs_the_fastest_path_timed_and_records_how_it_chose(digits, cache):
    model = DenseModel(digits, precision="auto", threads=1)
    assert "chosen_by" not in model.numerics  # nothing chosen before the first input
    result = model.run(_canvas())
    record = result.numerics
    timings = record["timings_ms"]
    assert record["chosen_by"] == "auto" and not record["cached"]
    assert f"{record['backend']} {record.get('requested_precision', record['precision'])}" == min(timings,
                                                                                                    key=timings.get)
    assert {"onnxruntime fp32", "openvino fp32"} <= set(timings) | set(record["dropped"])
    assert timings[min(timings, key=timings.get)] <= timings["onnxruntime fp32"]  # never slower than float32
    assert record["exact"] is (record["precision"] == "fp32")
    reference = DenseModel(digits).run(_canvas()).scores
    assert (result.scores.argmax(0) == reference.argmax(0)).mean() >= 0.99
    again = DenseModel(digits, precision="auto", threads=1).run(_canvas()).numerics
    assert again["cached"] and (again["backend"], again["precision"]) == (record["backend"], record["precision"])
    assert len(json.loads(cache.read_text())) == 1
    DenseModel(digits, precision="auto", threads=1).run(_canvas(128))
    assert len(json.loads(cache.read_text())) == 2  # a size of its own


@pytest.mark.parametrize(("pinned", "paths"), [
    ("avx2", {"onnxruntime fp32", "openvino fp32"}),
    ("avx512-vnni-bf16", {"onnxruntime fp32", "openvino fp32", "openvino bf16"}),
])
def test_the_paths_are_the_ones_the_cpu_class_runs_natively(digits, monkeypatch, pinned, paths):
    monkeypatch.setenv(PIN, pinned)
    record = DenseModel(digits, precision="auto", threads=1).run(_canvas()).numerics
    assert set(record["timings_ms"]) | set(record["dropped"]) == paths


def test_a_path_outside_the_budget_is_dropped_with_its_reason(digits, monkeypatch):
    monkeypatch.setenv(PIN, "avx512-vnni-bf16")
    reference = DenseModel(digits)
    chooser = Chooser(digits, openvino_only=False, threads=1, min_agreement=1.01)  # no reduced precision can meet it
    choice, _ = chooser.choose(reference.preprocess(_canvas()), reference)
    assert choice.dropped == {"openvino bf16": choice.dropped["openvino bf16"]}
    assert choice.dropped["openvino bf16"].startswith("argmax agreement") and choice.precision == "fp32"


def test_backend_openvino_keeps_openvinos_paths_and_an_unknown_setting_is_refused(digits):
    record = DenseModel(digits, backend="openvino", precision="auto", threads=1).run(_canvas()).numerics
    assert record["backend"] == "openvino" and all(p.startswith("openvino") for p in record["timings_ms"])
    with pytest.raises(ConversionError, match="backend= must be one of onnxruntime, openvino"):
        DenseModel(digits, backend="tensorrt", precision="auto")


def test_a_damaged_cache_is_ignored_and_rewritten(digits, cache):
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    DenseModel(digits, precision="auto", threads=1).run(_canvas())
    assert len(json.loads(cache.read_text())) == 1


def test_run_and_scan_record_the_choice_and_the_scan_equals_one_pass_of_it(digits, tmp_path):
    pytest.importorskip("zarr")
    from PIL import Image

    from fc2conv.runtime import scan

    image = tmp_path / "canvas.png"
    Image.fromarray(_canvas(200)).save(image)
    done = invoke("run", digits, image, "--precision", "auto", "--json")
    record = json.loads(done.stdout)["result"]
    assert done.exit_code == 0 and record["chosen_by"] == "auto"
    assert "chosen by --precision auto: the fastest of" in invoke("run", digits, image, "--precision", "auto").stdout
    result = scan(image, model=digits, out=tmp_path / "o.zarr", tile=96, precision="auto", threads=1)
    attrs = result.metadata
    assert attrs["chosen_by"] == "auto" and attrs["run"]["backend"] == attrs["backend"]
    one_pass = DenseModel(digits, backend=attrs["backend"], precision=attrs["run"]["precision"], threads=1)
    expected = one_pass.run(image).scores
    found = result.scores()[...]
    assert np.abs(found - expected).max() <= 1e-5 * np.abs(expected).max()


def test_an_8_bit_int8_file_is_not_run_in_onnxruntime_where_it_would_saturate(digits, tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    from fc2conv.runtime.quantization import quantize

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from digits_precision import calibration_set

    calibration_set(tmp_path / "calibration", count=4, size=96)
    monkeypatch.setenv(PIN, "amx")
    full = quantize(digits, tmp_path / "int8.onnx", tmp_path / "calibration").path  # 8-bit weights
    monkeypatch.setenv(PIN, "avx2")
    record = DenseModel(full, precision="auto", threads=1).run(_canvas()).numerics
    assert record["backend"] == "openvino" and "onnxruntime fp32" not in record["timings_ms"]
    assert record["precision"].startswith("int8")
