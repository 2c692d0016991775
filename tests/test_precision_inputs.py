"""Calibration data is an input like any other: non-finite samples, `.npy` headers that lie or hold objects, inputs
beyond the memory budget, and sets of any size (sampled and streamed, memory bounded) are handled as `run` and `scan`
handle their inputs, naming the file; and a refusal is a few lines whatever the arguments were."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import assert_clean_refusal, invoke
from PIL import Image
from scan_helpers import export

from fc2conv import ConversionError
from fc2conv.runtime import DenseModel
from fc2conv.runtime.calibration import MAX_INPUTS, read_calibration
from fc2conv.runtime.quantization import quantize


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return export("digits", tmp_path_factory.mktemp("inputs"))


def _forged_header(path, shape=(4_000_000, 1, 3_000, 3_000)):
    """A .npy of a few bytes whose header declares `shape` of float32 (36 TB): numpy would try to allocate it."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 64)
    return path


def _object_npy(path):
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return path


def _float_tiff(path, value):
    pixels = np.full((40, 40), 0.5, np.float32)
    pixels[3, 4] = value
    Image.fromarray(pixels, mode="F").save(path)
    return path


BAD_INPUTS = {
    "one NaN pixel": (lambda d: np.save(d / "nan.npy", np.where(np.arange(40 * 40).reshape(1, 1, 40, 40) == 7, np.nan,
                                                                 0.5).astype(np.float32)),
                      "nan.npy[0]: 1 sample is NaN or infinite"),
    "all NaN": (lambda d: np.save(d / "nan.npy", np.full((2, 1, 40, 40), np.nan, np.float32)),
                "nan.npy[1]: 1,600 samples are NaN or infinite"),
    "infinity in a float TIFF": (lambda d: _float_tiff(d / "inf.tif", np.inf), "inf.tif: 1 sample is NaN or infinite"),
    "a header declaring 36 TB": (lambda d: _forged_header(d / "forged.npy"),
                                 "forged.npy: its header declares a 4000000×1×3000×3000 float32 array"),
    "objects (a pickle)": (lambda d: _object_npy(d / "objects.npy"), "objects.npy: a .npy array of object is not"),
    "not a .npy": (lambda d: (d / "junk.npy").write_bytes(b"\x93NUMPY junk"), "junk.npy: cannot read it as a .npy"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_a_bad_calibration_input_is_refused_naming_its_file_in_a_few_lines(digits, tmp_path, case):
    folder = tmp_path / "set"
    folder.mkdir()
    for index in range(3):  # good inputs around the bad one
        Image.fromarray(np.full((40, 40), 60 * index, np.uint8)).save(folder / f"good{index}.png")
    make, message = BAD_INPUTS[case]
    make(folder)
    out = tmp_path / "out.onnx"
    done = invoke("quantize", digits, "--calibration", folder, "-o", out)
    assert_clean_refusal(done, message)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["set"]


@pytest.mark.parametrize("case", ["one NaN pixel", "a header declaring 36 TB", "objects (a pickle)"])
def test_run_refuses_the_same_arrays(digits, tmp_path, case):
    make, message = BAD_INPUTS[case]
    make(tmp_path)
    path = next(tmp_path.glob("*.npy"))
    assert_clean_refusal(invoke("run", digits, path), message.replace("[0]", "").split(":")[0])


def test_an_item_beyond_the_memory_budget_is_refused_naming_it(digits, tmp_path):
    np.save(tmp_path / "big.npy", np.zeros((2, 1, 64, 64), np.uint8))
    with pytest.raises(ConversionError, match=r"big\.npy\[0\]: an input of 4,096 samples .* more than one pass"):
        quantize(digits, tmp_path / "out.onnx", tmp_path / "big.npy", max_pixels=1000)


def test_a_large_set_is_sampled_evenly_and_read_one_input_at_a_time(digits, tmp_path):
    """3,001 files: `MAX_INPUTS` are used, spread from the first name to the last; each is read when it is used."""
    folder = tmp_path / "many"
    folder.mkdir()
    image = Image.fromarray(np.full((36, 36), 128, np.uint8))
    for index in range(3001):
        image.save(folder / f"{index:05d}.png")
    model = DenseModel(digits)
    inputs = read_calibration(folder, model)
    used = inputs.calibrating + inputs.held_out
    assert inputs.found == 3001 and len(used) == MAX_INPUTS and len(inputs.held_out) == MAX_INPUTS // 4
    names = sorted(int(name.rsplit("/", 1)[1][:5]) for name in used)
    assert names[0] == 0 and names[-1] == 3000 and max(np.diff(names)) <= 3001 // (MAX_INPUTS - 1) + 1
    assert inputs.sizes == set()  # listed, not read
    done = invoke("quantize", digits, "--calibration", folder, "-o", tmp_path / "q.onnx", "--json")
    report = json.loads(done.stdout)["calibration"]
    assert (report["found"], report["images"], report["held_out"]) == (3001, MAX_INPUTS * 3 // 4, MAX_INPUTS // 4)
    shown = invoke("quantize", digits, "--calibration", folder, "-o", tmp_path / "q.onnx", "--force").stdout
    assert f"of 3,001 found (at most {MAX_INPUTS} used, evenly spaced in name order)" in shown


def test_memory_stays_bounded_for_a_batch_of_100_000_inputs(digits, tmp_path):
    """A 400 MB batch of 100,000 images (1.6 GB as float32, which the whole set would take in memory): the quantizer's
    peak memory stays under 700 MB, since it maps the file and reads the items it uses."""
    batch = tmp_path / "batch.npy"
    array = np.lib.format.open_memmap(batch, mode="w+", dtype=np.uint8, shape=(100_000, 1, 64, 64))
    array[:] = 100
    array.flush()
    del array
    # Peak memory from VmHWM, which starts afresh at exec (ru_maxrss would count the forked pytest process).
    code = f"""
from fc2conv.runtime.quantization import quantize
done = quantize({str(digits)!r}, {str(tmp_path / 'q.onnx')!r}, {str(batch)!r}, float_layers="none")
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]
print(done.calibration["found"], int(peak) // 1024)
"""
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    found, peak_mb = map(int, finished.stdout.split())
    assert found == 100_000 and peak_mb < 700, peak_mb


@pytest.mark.parametrize("command", [
    ["run", "m.onnx"], ["scan", "slide.tif", "--model", "m.onnx", "--out", "o.zarr"],
    ["quantize", "m.onnx", "--calibration", "c", "-o", "q.onnx"], ["convert", "ckpt.pt"], ["view", "o.zarr"],
    ["inspect", "ckpt.pt"],
])
def test_a_shell_glob_of_100_000_paths_gives_a_refusal_of_a_few_lines(command):
    done = invoke(*command, *(f"images/slide_{index:06d}.png" for index in range(100_000)))
    assert done.exit_code == 2
    lines = done.output.strip().splitlines()
    assert len(lines) <= 5 and len(done.output) < 600, done.output[:2000]
    assert "unexpected extra argument" in done.output and "characters) … " in done.output
    assert "images/slide_099999.png" in done.output  # its end is kept
