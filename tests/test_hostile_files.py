"""Hostile and careless files, through the API and the `fc2conv` command: no pickle ever runs from a `.pt2`, images
are read as their owner sees them and within a memory budget, and every failure is one clean message with
nothing half-written: a full disk, SIGTERM, an output that is an input, a lying safetensors header, an ONNX
file onnxruntime cannot run, bad metadata, a forgotten --input-shape.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import resource
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnx
import png
import pytest
import torch
from helpers import invoke, listing
from PIL import Image, ImageOps

import fc2conv
from fc2conv.checkpoint import load_state_dict, save_state_dict
from fc2conv.cli import EXIT_OK, EXIT_USAGE
from fc2conv.errors import ConversionError
from fc2conv.images import load_image
from fc2conv.onnx import convert_onnx
from fc2conv.recipe import Recipe
from fc2conv.runtime import DenseModel
from models.small_cnn import SmallCNN

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--model-def", "models/small_cnn.py:SmallCNN", "--input-shape", "3,32,32"]



def cli(*args, limit_file_size: int | None = None) -> subprocess.CompletedProcess:
    """`fc2conv ARGS` in a fresh process (signals and resource limits need one), from the repository root."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    return subprocess.run([sys.executable, "-c", "from fc2conv.cli import main; main()", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit if limit_file_size else None)


def assert_clean_refusal(result, *fragments: str) -> None:
    """Exit 2 and one short message on stderr naming every fragment; no traceback. `result` is a finished
    process or a CliRunner result."""
    code = result.returncode if isinstance(result, subprocess.CompletedProcess) else result.exit_code
    assert code == EXIT_USAGE, (code, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 4, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def hidden_leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A SmallCNN checkpoint, its conversion saved as .pt2, and the recipe."""
    folder = tmp_path_factory.mktemp("small")
    torch.manual_seed(0)
    model = SmallCNN().eval()
    torch.save(model.state_dict(), folder / "small.pt")
    recipe = Recipe(model_def="models/small_cnn.py:SmallCNN", input_shape=(3, 32, 32))
    fc2conv.save(fc2conv.convert(model, (3, 32, 32)), folder / "small.pt2", recipe=recipe)
    return folder


# ------------------------------------------------------------------------------ pickles inside a .pt2


class Payload:
    """Unpickling this creates `marker`: proof that a pickle's code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _rewrite_archive(source: Path, target: Path, edit) -> None:
    """Copy the zip `source` to `target`, replacing entries as `edit(name, data) -> data` says."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            new.writestr(info, edit(info.filename, old.read(info)))


def _pickled_sample_inputs(source: Path, target: Path, marker: Path) -> None:
    """The attack of the issue: `data/sample_inputs/model.pt` holds a torch.save pickle that runs code."""
    buffer = io.BytesIO()
    torch.save({"payload": Payload(marker)}, buffer)
    _rewrite_archive(source, target, lambda name, data: buffer.getvalue()
                     if name.endswith("data/sample_inputs/model.pt") else data)


def _pickled_weight(source: Path, target: Path, marker: Path) -> None:
    """A weight flagged `use_pickle` whose bytes are a raw pickle (not a torch.save archive): only the forced
    weights-only loading catches it, as the archive scan does not recognise it as a pickle."""
    with zipfile.ZipFile(source) as archive:
        config_name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(archive.read(config_name))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True

    def edit(name: str, data: bytes) -> bytes:
        if name == config_name:
            return json.dumps(config).encode()
        if name.endswith(f"data/weights/{first['path_name']}"):
            return pickle.dumps(Payload(marker), protocol=2)
        return data

    _rewrite_archive(source, target, edit)


@pytest.mark.parametrize("attack", [_pickled_sample_inputs, _pickled_weight])
def test_a_pt2_never_unpickles_code_unless_trusted(small, tmp_path, attack):
    evil, marker = tmp_path / "evil.pt2", tmp_path / "code-ran"
    attack(small / "small.pt2", evil, marker)
    with pytest.raises(ConversionError, match=r"evil\.pt2 \(entry .*data/.*\) holds a pickle .*--trust-pickle"):
        fc2conv.load(evil)
    assert not marker.exists()
    result = cli("verify", small / "small.pt", evil, "--model-def", "models/small_cnn.py:SmallCNN")
    assert_clean_refusal(result, "evil.pt2 (entry", "--trust-pickle")
    assert not marker.exists()
    # The payload is live: trusting the file runs it (whether the tampered program then loads or not).
    with contextlib.suppress(ConversionError):
        fc2conv.load(evil, trust_pickle=True)
    assert marker.exists()


def test_an_untampered_pt2_loads_and_its_recipe_reads_without_loading(small):
    assert fc2conv.load(small / "small.pt2")(torch.zeros(1, 3, 40, 40)).shape == (1, 10, 3, 3)
    from fc2conv.artifact import read_recipe

    assert read_recipe(small / "small.pt2").model_def == "models/small_cnn.py:SmallCNN"


# ----------------------------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    converted = fc2conv.convert(SmallCNN().eval(), (3, 32, 32))
    path = fc2conv.export_onnx(converted, folder / "small.onnx")
    gray = fc2conv.export_onnx(fc2conv.convert(_GrayCNN().eval(), (1, 16, 16)), folder / "gray.onnx")
    return path, gray


class _GrayCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4 * 14 * 14, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims `width`×`height` pixels, with almost no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_a_huge_image_is_refused_from_its_header_before_decoding(exported, tmp_path):
    big = tmp_path / "big.png"
    Image.new("L", (9500, 9500)).save(big)  # 90 MP in ~88 KB, just above Pillow's warning limit
    assert big.stat().st_size < 200_000
    result = invoke("run", exported[0], big)
    assert_clean_refusal(result, "90,250,000 pixels", "--max-pixels", "fc2conv scan")
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 30000, 30000)  # beyond Pillow's own error limit
    assert_clean_refusal(invoke("run", exported[0], bomb), "900,000,000 pixels", "fc2conv scan")
    with pytest.raises(ConversionError, match="--max-pixels"):
        DenseModel(exported[0]).run(big)


def test_max_pixels_is_the_budget(exported, tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(path)
    assert_clean_refusal(invoke("run", exported[0], path, "--max-pixels", "1999"), "2,000 pixels")
    assert invoke("run", exported[0], path, "--max-pixels", "2000").exit_code == EXIT_OK


def test_sixteen_bit_gray_png_keeps_its_range(exported, tmp_path):
    values = np.random.default_rng(0).integers(0, 65536, (20, 24), dtype=np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    np.testing.assert_array_equal(load_image(path, 1)[:, :, 0], values.astype(np.float32) / 65535)
    model = DenseModel(exported[1])
    np.testing.assert_allclose(model.run(path).scores, model.run(values.astype(np.float32) / 65535).scores,
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("planes", [3, 4])
def test_sixteen_bit_colour_png_is_read_exactly(tmp_path, planes):
    values = np.random.default_rng(planes).integers(0, 65536, (9, 11, planes), dtype=np.uint16)
    path = tmp_path / "colour16.png"
    png.Writer(11, 9, bitdepth=16, greyscale=False, alpha=planes == 4).write(
        path.open("wb"), values.reshape(9, -1).tolist())
    np.testing.assert_array_equal(load_image(path, 3), values[:, :, :3].astype(np.float32) / 65535)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    stored = np.random.default_rng(orientation).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    image.save(path, exif=exif, quality=100)
    with Image.open(path) as opened:
        upright = np.asarray(ImageOps.exif_transpose(opened))
    np.testing.assert_array_equal(load_image(path, 3), upright.astype(np.float32) / 255)


def test_a_truncated_image_is_a_clean_error(exported, tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 60, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    assert_clean_refusal(invoke("run", exported[0], path), "cut.png", "cannot read it as an image")


# ------------------------------------------------------------------------------- ONNX metadata and opset


def _with_metadata(source: Path, target: Path, **changes: str) -> Path:
    model = onnx.load(source)
    props = {p.key: p.value for p in model.metadata_props} | {f"fc2conv.{k}": v for k, v in changes.items()}
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, target)
    return target


@pytest.mark.parametrize(("field", "value", "message"), [
    ("labels", '["a", "b"]', "fc2conv.labels must name each of the model's 10 classes, not 2"),
    ("labels", '[1, 2]', "fc2conv.labels must be a list of strings"),
    ("input_shape", '"3x32x32"', "fc2conv.input_shape must be a list"),
    ("input_shape", '[3, "a", 32]', "fc2conv.input_shape must be a list"),
    ("stride", '[4]', "fc2conv.stride must be 2 positive integer(s)"),
    ("window", '[32, -32]', "fc2conv.window must be 2 positive integer(s)"),
    ("mode", '"sparse"', "fc2conv.mode must be one of"),
    ("mean", '[0.1, 0.2]', "fc2conv.mean must be 1 or 3 numbers"),
    ("std", '[0]', "fc2conv.std must be positive"),
    ("exact", '"yes"', "fc2conv.exact must be true, false or null"),
    ("receptive_field", '[[1, 2]]', "fc2conv.receptive_field must be 2 [before, after] pair(s)"),
    ("mode", "{not json", "fc2conv.mode is not valid JSON"),
])
def test_bad_metadata_is_named_when_the_model_opens(exported, tmp_path, field, value, message):
    path = _with_metadata(exported[0], tmp_path / "bad.onnx", **{field: value})
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    assert_clean_refusal(invoke("run", path, image), "bad.onnx", message)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter, chosen for this source
def test_an_onnx_file_onnxruntime_cannot_load_is_not_converted(tmp_path):
    torch.manual_seed(0)
    source = tmp_path / "small.onnx"
    torch.onnx.export(SmallCNN().eval(), (torch.zeros(1, 3, 32, 32),), source, dynamo=False)
    model = onnx.load(source)
    model.opset_import[0].version = 99
    onnx.save(model, tmp_path / "future.onnx")
    with pytest.raises(ConversionError, match=r"future\.onnx: onnxruntime cannot load it .*does not convert what "):
        convert_onnx(tmp_path / "future.onnx", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists() and not hidden_leftovers(tmp_path)


# ------------------------------------------------------------------------------------- checkpoints, outputs


def test_duplicate_keys_in_a_safetensors_header_are_refused(tmp_path):
    tensor = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    header = ('{"fc.weight": ' + json.dumps(tensor) + ', "fc.weight": '
              + json.dumps({**tensor, "data_offsets": [8, 16]}) + "}").encode()
    path = tmp_path / "twice.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(ConversionError, match=r"names 'fc\.weight' twice"):
        load_state_dict(path)
    result = invoke("inspect", path, *SMALL)
    assert result.exit_code == EXIT_USAGE and "'fc.weight' twice" in result.stderr


@pytest.mark.parametrize("how", ["same path", "hard link", "symbolic link"])
def test_an_output_that_is_the_input_is_refused_even_with_force(small, tmp_path, how):
    checkpoint = tmp_path / "w.safetensors"
    save_state_dict(load_state_dict(small / "small.pt"), checkpoint)
    before = checkpoint.read_bytes()
    target = checkpoint
    if how == "hard link":
        target = tmp_path / "alias.safetensors"
        os.link(checkpoint, target)
    elif how == "symbolic link":
        target = tmp_path / "alias.safetensors"
        target.symlink_to(checkpoint)
    result = invoke("convert", checkpoint, *SMALL, "-o", target, "--force")
    assert_clean_refusal(result, "would destroy that input", str(checkpoint))
    assert checkpoint.read_bytes() == before


def test_a_heatmap_over_its_own_image_is_refused(exported, tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    before = image.read_bytes()
    assert_clean_refusal(invoke("run", exported[0], image, "--heatmap", image, "--force"), "would destroy")
    assert image.read_bytes() == before


def test_a_forgotten_input_shape_is_a_short_message(tmp_path):
    result = invoke("convert", "models/digits_cnn.safetensors", "--model-def", "models/digits_cnn.py:DigitsCNN",
                    "-o", tmp_path / "never.pt2")
    assert_clean_refusal(result, "--input-shape", "input_shape=(3, 224, 224)")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------- full disks and SIGTERM mid-write

DISK_LIMIT = 64 * 1024  # bytes any file may grow to (RLIMIT_FSIZE): the SmallCNN artifacts are larger


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pt2"])
def test_a_full_disk_is_one_line_and_leaves_nothing(small, tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    result = cli("convert", small / "small.pt", *SMALL, "-o", out, limit_file_size=DISK_LIMIT)
    assert_clean_refusal(result, f"could not write {out}", "File too large")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KB tmpfs, where writes fail with ENOSPC, as on a full disk (needs permission to mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    (mount / "filler").write_bytes(bytes(200 * 1024))
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt2"])
def test_no_space_left_is_one_line_and_leaves_nothing(small, tiny_disk, suffix):
    out = tiny_disk / f"out{suffix}"
    result = cli("convert", small / "small.pt", *SMALL, "-o", out)
    assert_clean_refusal(result, f"could not write {out}", "No space left on device")
    assert [p.name for p in tiny_disk.iterdir()] == ["filler"]


def test_sigterm_during_convert_removes_every_staged_output(small, tmp_path):
    """SIGTERM arrives while the ONNX export runs, after the .pt2 and .safetensors are staged: the child signals
    itself at that point, after printing what the folder then holds."""
    outputs = [tmp_path / "out.pt2", tmp_path / "out.safetensors", tmp_path / "out.onnx"]
    script = (
        "import json, os, signal, time\n"
        "import fc2conv.onnx.export as export\n"
        "def export_onnx(model, path, **kwargs):\n"
        "    print(json.dumps([os.getpid(), os.listdir(os.path.dirname(path))]), flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(60)\n"
        "export.export_onnx = export_onnx\n"
        "from fc2conv.cli import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "convert", str(small / "small.pt"), *SMALL, "-o", str(outputs[0]), "-o",
         str(outputs[1]), "--onnx", str(outputs[2])], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 128 + 15, result.stderr
    pid, names = json.loads(result.stdout.splitlines()[-1])
    assert listing(names, pid) == ["out.pt2~staged", "out.safetensors~staged"]  # when the signal came
    assert list(tmp_path.iterdir()) == []
