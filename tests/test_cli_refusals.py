"""Refusals through the `fc2conv` command: exit code 2, a message naming the culprit, no output file.

The command's side of tests/test_refusals.py and tests/test_corrupt_checkpoints.py (the Python API). Complements
tests/test_cli.py (usage errors, flags, missing/empty/TorchScript files, existing outputs) with
broken and adversarial checkpoints, pickles that would run code, and models fc2conv must refuse, given
by --model-def; and checks the checkpoint is never changed and a killed `fc2conv convert` leaves no
partial output.
"""

from __future__ import annotations

import json
import runpy
import signal
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import invoke, listing, next_line, saved_weights

from fc2conv.cli import EXIT_OK, EXIT_USAGE

ROOT = Path(__file__).resolve().parents[1]

# Models fc2conv refuses, as a user's --model-def file would define them.
MODELS = '''
import torch
from torch import nn


class Features(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.relu(self.conv(x))


class Untraceable(Features):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4 * 15 * 15, 3)

    def forward(self, x):
        x = self.conv(x)
        if x.mean() > 0:
            x = -x
        return self.fc(x.flatten(1))


class RNNHead(Features):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(4 * 15, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.conv(x).permute(0, 3, 1, 2).flatten(2)
        return self.fc(self.rnn(x)[0][:, -1])


class TwoBranches(Features):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        f = super().forward(x)  # pools of two maps, 15×15 and 7×7: their windows cannot share a grid
        return self.fc(torch.cat([f.mean((2, 3)), nn.functional.max_pool2d(f, 2).amax((2, 3))], 1))


class Plain(Features):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4 * 15 * 15, 3)

    def forward(self, x):
        return self.fc(super().forward(x).flatten(1))
'''
SHAPE = "3,17,17"



@pytest.fixture
def refused_models(tmp_path) -> Path:
    path = tmp_path / "models.py"
    path.write_text(MODELS)
    return path



def _refused(tmp_path: Path, args: list, message: str) -> str:
    """`fc2conv convert ARGS -o OUT.pt2` exits 2, names `message` on stderr, and changes no file."""
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = invoke("convert", *args, "-o", tmp_path / "out.pt2", "--onnx", tmp_path / "out.onnx")
    assert result.exit_code == EXIT_USAGE, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    error = result.stderr.removeprefix("error: ")
    assert message in error, error
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before, "files appeared, vanished or changed"
    return error


@pytest.mark.parametrize(("name", "message"), [
    ("Untraceable", "leaf_modules"),
    ("RNNHead", "sequences or tokens"),
    ("TwoBranches", "separate branches"),
])
def test_models_fc2conv_cannot_convert(tmp_path, refused_models, name, message):
    weights = saved_weights(refused_models, name, tmp_path / "w.pt")
    error = _refused(tmp_path, [weights, "--model-def", f"{refused_models}:{name}", "--input-shape", SHAPE], message)
    assert "Traceback" not in error


def _broken(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "corrupted":
        start = data.index(b"data.pkl") + 80
        path.write_bytes(data[:start] + b"\xff" * 16 + data[start + 16 :])
    elif how == "zip of notes":
        path.unlink()
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "not weights")
    elif how == "lying header":
        header = json.dumps({"fc.weight": {"dtype": "F32", "shape": [3, 900], "data_offsets": [0, 10800]}})
        path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(64))


@pytest.mark.parametrize(("how", "suffix", "message"), [
    ("truncated", ".pt", "truncated or corrupted zip"),
    ("truncated", ".safetensors", "not a valid safetensors file"),
    ("corrupted", ".pt", "w.pt"),
    ("zip of notes", ".pt", "not a PyTorch checkpoint"),
    ("lying header", ".safetensors", "not a valid safetensors file"),
])
def test_broken_checkpoints(tmp_path, refused_models, how, suffix, message):
    weights = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        saved_weights(refused_models, "Plain", weights)
    else:
        from fc2conv.storage.checkpoint import save_state_dict

        torch.manual_seed(0)
        save_state_dict(runpy.run_path(str(refused_models))["Plain"]().state_dict(), weights)
    _broken(weights, how)
    _refused(tmp_path, [weights, "--model-def", f"{refused_models}:Plain", "--input-shape", SHAPE], message)


def test_pickle_code_does_not_run_without_trust_pickle(tmp_path, refused_models):
    marker = tmp_path / "code-ran"
    torch.manual_seed(0)
    state = runpy.run_path(str(refused_models))["Plain"]().state_dict()
    weights = tmp_path / "evil.pt"
    torch.save({"state_dict": state, "extra": _Evil(marker)}, weights)
    args = [weights, "--model-def", f"{refused_models}:Plain", "--input-shape", SHAPE]
    assert "--trust-pickle" in _refused(tmp_path, args, "could run code")
    assert not marker.exists()
    # With --trust-pickle the same file runs its code (the marker detects it) and converts.
    result = invoke("convert", *args, "-o", tmp_path / "out.pt2", "--trust-pickle", "--quiet")
    assert result.exit_code == EXIT_OK, result.stderr
    assert marker.exists() and (tmp_path / "out.pt2").exists()


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_converting_never_changes_the_checkpoint(tmp_path, refused_models):
    weights = saved_weights(refused_models, "Plain", tmp_path / "w.pt")
    before, mtime = weights.read_bytes(), weights.stat().st_mtime_ns
    result = invoke("convert", weights, "--model-def", f"{refused_models}:Plain", "--input-shape", SHAPE,
                    "-o", tmp_path / "out.safetensors", "--quiet")
    assert result.exit_code == EXIT_OK, result.stderr
    assert weights.read_bytes() == before and weights.stat().st_mtime_ns == mtime


# `fc2conv convert` that stops at a known point, says so on stdout, and waits there for the test's signal:
# "mid-write": half the bytes of its first output (the .pt2) are in their hidden temporary file;
# "renamed": every output is written and staged, and the first (out.pt2) is renamed into place.
PAUSED_CONVERT = """
import os, pathlib, sys, time
from fc2conv.cli import main

def pause(point):
    print(point, flush=True)
    time.sleep(600)

write_bytes, replace = pathlib.Path.write_bytes, os.replace

def half_then_pause(self, data):
    if self.name.endswith(".tmp.pt2"):
        view = memoryview(data)
        with open(self, "wb") as f:
            f.write(view[: len(view) // 2])
        pause("mid-write")
    return write_bytes(self, data)

def replace_then_pause(src, dst, *args, **kwargs):
    replace(src, dst, *args, **kwargs)
    if os.path.basename(dst) == "out.pt2":
        pause("renamed")

point = sys.argv.pop(1)
if point == "mid-write":
    pathlib.Path.write_bytes = half_then_pause
else:
    os.replace = replace_then_pause
main()
"""


@pytest.mark.parametrize(("point", "signum", "left"), [
    ("mid-write", signal.SIGKILL, ["out.pt2~staged~tmp"]),
    ("mid-write", signal.SIGTERM, []),
    ("renamed", signal.SIGKILL, ["out.onnx~staged", "out.pt2", "out.safetensors~staged"]),
], ids=["SIGKILL mid-write", "SIGTERM mid-write", "SIGKILL between renames"])
def test_killed_convert_leaves_no_partial_output(tmp_path, refused_models, point, signum, left):
    """A signal at a known point of `fc2conv convert -o out.pt2 -o out.safetensors --onnx out.onnx` leaves exactly
    `left` in the output folder: an output is complete or absent. SIGTERM unwinds and removes every temporary and
    staged file; SIGKILL cannot be caught, so the hidden files of the killed process stay (never under an output's
    name), and once the renames have begun the outputs renamed so far are in place, complete."""
    weights = saved_weights(refused_models, "Plain", tmp_path / "w.pt")
    folder = tmp_path / "out"
    folder.mkdir()
    outputs = [folder / "out.pt2", folder / "out.safetensors", folder / "out.onnx"]
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", PAUSED_CONVERT, point, "convert", str(weights), "--model-def",
             f"{refused_models}:Plain", "--input-shape", SHAPE, "-o", str(outputs[0]), "-o", str(outputs[1]), "--onnx",
             str(outputs[2]), "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
        reached = next_line(process)
        process.send_signal(signum)
        process.wait(timeout=60)
        process.stdout.close()
        stderr.seek(0)
        assert reached == point, stderr.read()
    assert process.returncode == (-signum if signum == signal.SIGKILL else 128 + signum)
    assert listing(folder, process.pid) == left
    for path in folder.iterdir():
        if path.name.startswith("."):
            assert path.stat().st_size > 0  # the kill came after these had data
        if not path.name.endswith(".tmp.pt2"):
            assert_complete(path)


def assert_complete(path: Path) -> None:
    if path.suffix == ".onnx":
        import onnx

        onnx.checker.check_model(onnx.load(path), full_check=True)
    elif path.suffix == ".safetensors":
        from fc2conv.storage.checkpoint import load_state_dict

        assert load_state_dict(path)
    else:
        assert torch.export.load(path) is not None
