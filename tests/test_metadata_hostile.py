"""ONNX metadata is one truth for every reader: a file whose `fc2conv.*` fields repeat, hold numbers that are not finite
or out of range, are nested or sized to exhaust a parser, or give labels with control characters is refused when it is
opened, by onnxruntime and OpenVINO alike (one reader, fc2conv.runtime.metadata_file), naming the file and the field,
by every command that opens a model (run, scan, quantize), in a few lines, writing nothing."""

from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import onnx
import pytest
from helpers import ROOT, assert_clean_refusal, invoke
from PIL import Image

from fc2conv import ConversionError, export_onnx
from fc2conv.metadata import MAX_DEPTH, check_labels
from fc2conv.runtime import DenseModel
from fc2conv.runtime.metadata_file import MAX_ENTRY, read_entries

BACKENDS = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
LABELS = [str(digit) for digit in range(10)] + ["background"]
# Text that would forge output if printed as it is: a new table row, a terminal escape, reversed text, C1's "next line",
# Unicode's line separator, a NUL, a tab (a new CSV or TSV column).
FORGING = {"CR LF": "7\r\n1     forged           1.0000", "escape": "7\x1b[2J", "bidi override": "\u202e7",
           "next line": "7\x85x", "line separator": "7\u2028x", "NUL": "7\x00", "tab": "7\tx"}


def _entries(path) -> list[tuple[str, str]]:
    return [(p.key, p.value) for p in onnx.load(str(path)).metadata_props]


def _write(source, target, entries: list[tuple[str, str]]):
    """`source` with `entries` as its metadata_props, in this order (repeats included)."""
    model = onnx.load(str(source))
    del model.metadata_props[:]
    for key, value in entries:
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(target))
    return target


def _changed(source, target, **fields: str):
    """`source` with its fc2conv fields replaced or added by `fields` (JSON text)."""
    entries = dict(_entries(source)) | {f"fc2conv.{key}": value for key, value in fields.items()}
    return _write(source, target, list(entries.items()))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits CNN exported with labels, mean and std, and a 40×48 gray image."""
    import torch
    from safetensors.torch import load_file

    import fc2conv
    from models.digits_cnn import DigitsCNN

    folder = tmp_path_factory.mktemp("metadata")
    model = DigitsCNN()
    model.load_state_dict(load_file(ROOT / "models" / "digits_cnn.safetensors"))  # trained: real scores
    torch.manual_seed(0)
    path = export_onnx(fc2conv.convert(model.eval(), (1, 32, 32)), folder / "digits.onnx", labels=LABELS,
                       mean=[0.1], std=[0.3])
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48), dtype=np.uint8)).save(folder / "in.png")
    return path


HOSTILE = {
    # One truth: a field written twice, whatever the two values.
    "stride twice": ("extra", ("fc2conv.stride", "[8, 8]"), "fc2conv.stride is given twice"),
    "labels twice": ("extra", ("fc2conv.labels", json.dumps(LABELS)), "fc2conv.labels is given twice"),
    "mode twice": ("extra", ("fc2conv.mode", '"dense"'), "fc2conv.mode is given twice"),
    # Numbers: finite, in range.
    "mean Infinity": ("field", ("mean", "[Infinity]"), "fc2conv.mean is not valid JSON (Infinity is not a number"),
    "mean NaN": ("field", ("mean", "[NaN]"), "fc2conv.mean is not valid JSON (NaN is not a number"),
    "mean 1e999": ("field", ("mean", "[1e999]"), "fc2conv.mean must be 1 or 1 numbers (one per input channel), each"),
    "mean too large": ("field", ("mean", "[1e7]"), "fc2conv.mean must be in [-1e+06, 1e+06]"),
    "std -Infinity": ("field", ("std", "[-Infinity]"), "fc2conv.std is not valid JSON"),
    "std tiny": ("field", ("std", "[1e-30]"), "fc2conv.std must be positive, in [1e-06, 1e+06]"),
    "stride 1e999": ("field", ("stride", "[1e999, 4]"), "fc2conv.stride must be 2 positive integer(s)"),
    "window huge": ("field", ("window", "[32, 99999999999]"), "fc2conv.window must be 2 positive integer(s)"),
    # A geometry is true or absent, never a stride of 0; the sizes a model takes include its reference size.
    "stride 0": ("field", ("stride", "[0, 0]"), "fc2conv.stride must be 2 positive integer(s)"),
    "no stride": ("field", ("stride", "null"), "fc2conv.stride is missing: a dense map needs a stride and a window"),
    "sizes without the reference": ("field", ("sizes", '[{"period": 5, "residues": [[1, 1]]}, null]'),
                                    "fc2conv.sizes must allow the reference size [32, 32]"),
    "drift NaN": ("field", ("drift", '{"argmax_agreement": NaN}'), "fc2conv.drift is not valid JSON"),
    "drift 1e999": ("field", ("drift", '{"max_relative_score": 1e999}'), "fc2conv.drift must give max_relative_"),
    "integer of 5,000 digits": ("field", ("window", f"[{'9' * 5000}, 32]"), "fc2conv.window is not valid JSON"),
    # Size and depth, bounded before decoding.
    "labels 100,000 deep": ("field", ("labels", "[" * 100_000 + "]" * 100_000),
                            f"fc2conv.labels nests arrays or objects more than {MAX_DEPTH} deep"),
    "context 100,000 deep": ("field", ("context", '{"a":' * 100_000 + "0" + "}" * 100_000),
                             f"fc2conv.context nests arrays or objects more than {MAX_DEPTH} deep"),
    "a field of 5 MiB": ("field", ("context", json.dumps("x" * 5 * 2**20)), "metadata is too large to trust"),
    "a label of 2,000 characters": ("field", ("labels", json.dumps(["x" * 2000, *LABELS[1:]])),
                                    "label 0 has 2000 characters, more than 1000"),
    # Labels with control characters: refused, so no output (table, JSON, CSV, GeoJSON, napari) can show them.
    **{f"label with {name}": ("field", ("labels", json.dumps([text, *LABELS[1:]])), "holds the control character")
       for name, text in FORGING.items()},
}


def _hostile(digits, tmp_path, case: str):
    kind, (key, value), _ = HOSTILE[case]
    target = tmp_path / "hostile.onnx"
    if kind == "extra":
        return _write(digits, target, [*_entries(digits), (key, value)])
    return _changed(digits, target, **{key: value})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_metadata_is_refused_by_run_on_every_backend_naming_the_field(digits, tmp_path, case, backend):
    path = _hostile(digits, tmp_path, case)
    heat = tmp_path / "heat.png"
    done = invoke("run", path, digits.parent / "in.png", "--backend", backend, "--heatmap", heat, "--json")
    assert_clean_refusal(done, "hostile.onnx", HOSTILE[case][2])
    assert done.stdout == "" and not heat.exists()


@pytest.mark.parametrize("case", ["stride twice", "no stride", "mean Infinity", "labels 100,000 deep",
                                  "label with CR LF"])
def test_scan_and_quantize_refuse_it_before_any_work(digits, tmp_path, case):
    pytest.importorskip("zarr")
    path = _hostile(digits, tmp_path, case)
    store = tmp_path / "out.zarr"
    scanned = invoke("scan", digits.parent / "in.png", "--model", path, "--out", store, "--detections",
                     tmp_path / "found.csv")
    assert_clean_refusal(scanned, "hostile.onnx", HOSTILE[case][2])
    quantized = invoke("quantize", path, "--calibration", digits.parent / "in.png", "-o", tmp_path / "q.onnx")
    assert_clean_refusal(quantized, "hostile.onnx", HOSTILE[case][2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.onnx"]


def test_both_backends_read_the_same_values(digits):
    """The entries come from the file, in its order, whatever the backend makes of them."""
    models = [DenseModel(digits, backend=backend) for backend in BACKENDS]
    assert all(model.metadata == models[0].metadata for model in models)
    assert all(model.engine.custom_metadata == _entries(digits) for model in models)


def test_fields_other_than_fc2conv_may_repeat_and_stay_unread(digits, tmp_path):
    path = _write(digits, tmp_path / "other.onnx", [*_entries(digits), ("author", "a"), ("author", "b")])
    assert DenseModel(path).metadata == DenseModel(digits).metadata


@pytest.mark.parametrize(("damage", "message"), [
    (lambda data: data[:len(data) // 2], "not an ONNX model"),      # cut inside a field
    (lambda data: data + b"\x72\x64short", "runs past the end of the file"),  # an entry of 100 bytes, holding 5
    (lambda data: data + b"\x72\xff\xff\xff\x0f", "too large to trust"),  # an entry declared 32 MiB
    (lambda data: data + b"\x0b", "not an ONNX model (protobuf wire type 3"),
])
def test_the_reader_refuses_a_file_that_is_not_a_protobuf_message(digits, tmp_path, damage, message):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(damage(digits.read_bytes()))
    with pytest.raises(ConversionError, match=re.escape(message)):
        read_entries(bad)


def test_the_reader_bounds_an_entry_before_reading_it(digits, tmp_path):
    """An entry declared larger than `MAX_ENTRY` is refused from its length alone."""
    big = _write(digits, tmp_path / "big.onnx", [*_entries(digits), ("notes", "x" * (MAX_ENTRY + 1))])
    with pytest.raises(ConversionError, match=f"an entry of {MAX_ENTRY + 1 + 12:,} bytes"):
        read_entries(big)


@pytest.mark.parametrize("name", list(FORGING))
def test_labels_with_control_characters_are_refused_where_they_are_written(digits, tmp_path, name):
    """The PyTorch side refuses them too: export_onnx (and with it convert --labels, Hugging Face id2label)."""
    with pytest.raises(ConversionError, match="holds the control character U\\+"):
        check_labels(["ok", FORGING[name]], source="--labels")
    import fc2conv
    from models.small_cnn import SmallCNN

    converted = fc2conv.convert(SmallCNN().eval(), (3, 32, 32))
    with pytest.raises(ConversionError, match="label 1"):
        export_onnx(converted, tmp_path / "x.onnx", labels=["0", FORGING[name], *map(str, range(2, 10))])
    assert not (tmp_path / "x.onnx").exists()


def test_ordinary_unicode_labels_are_kept(digits, tmp_path):
    labels = ["chat", "Straße", "狗", "🐕‍🦺", "naïve café", *LABELS[5:]]
    path = _changed(digits, tmp_path / "unicode.onnx", labels=json.dumps(labels, ensure_ascii=False))
    assert DenseModel(path).metadata["labels"] == labels
