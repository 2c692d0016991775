"""Hostile input through the `fc2conv` command: exit code 2, a message naming the culprit, no output file.

Complements tests/test_cli.py (usage errors, flags, missing/empty/TorchScript files, existing outputs) with
broken and adversarial checkpoints, pickles that would run code, and models fc2conv must refuse, given
by --model-def; and checks the checkpoint is never changed and a killed `fc2conv convert` leaves no
partial output.
"""

from __future__ import annotations

import contextlib
import json
import runpy
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import invoke, saved_weights

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
def models(tmp_path) -> Path:
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
def test_models_fc2conv_cannot_convert(tmp_path, models, name, message):
    weights = saved_weights(models, name, tmp_path / "w.pt")
    error = _refused(tmp_path, [weights, "--model-def", f"{models}:{name}", "--input-shape", SHAPE], message)
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
def test_broken_checkpoints(tmp_path, models, how, suffix, message):
    weights = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        saved_weights(models, "Plain", weights)
    else:
        from fc2conv.checkpoint import save_state_dict

        torch.manual_seed(0)
        save_state_dict(runpy.run_path(str(models))["Plain"]().state_dict(), weights)
    _broken(weights, how)
    _refused(tmp_path, [weights, "--model-def", f"{models}:Plain", "--input-shape", SHAPE], message)


def test_pickle_code_does_not_run_without_trust_pickle(tmp_path, models):
    marker = tmp_path / "code-ran"
    torch.manual_seed(0)
    state = runpy.run_path(str(models))["Plain"]().state_dict()
    weights = tmp_path / "evil.pt"
    torch.save({"state_dict": state, "extra": _Evil(marker)}, weights)
    args = [weights, "--model-def", f"{models}:Plain", "--input-shape", SHAPE]
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


def test_converting_never_changes_the_checkpoint(tmp_path, models):
    weights = saved_weights(models, "Plain", tmp_path / "w.pt")
    before, mtime = weights.read_bytes(), weights.stat().st_mtime_ns
    result = invoke("convert", weights, "--model-def", f"{models}:Plain", "--input-shape", SHAPE,
                    "-o", tmp_path / "out.safetensors", "--quiet")
    assert result.exit_code == EXIT_OK, result.stderr
    assert weights.read_bytes() == before and weights.stat().st_mtime_ns == mtime


def test_killed_convert_leaves_no_partial_output(tmp_path, models):
    """SIGKILL `fc2conv convert` once its first temporary output has data: every output is absent or
    complete (the run may also finish first; then all are complete)."""
    weights = saved_weights(models, "Plain", tmp_path / "w.pt")
    outputs = [tmp_path / "out.pt2", tmp_path / "out.safetensors", tmp_path / "out.onnx"]
    process = subprocess.Popen(
        [sys.executable, "-c", "from fc2conv.cli import main; main()", "convert", str(weights), "--model-def",
         f"{models}:Plain", "--input-shape", SHAPE, *[a for o in outputs[:2] for a in ("-o", str(o))],
         "--onnx", str(outputs[2]), "--quiet"], cwd=ROOT, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if any(_has_data(p) for p in tmp_path.iterdir() if p.name.startswith(".out.")):
            break
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    process.stderr.close()
    for path in outputs:
        if path.exists():
            assert_complete(path)


def _has_data(path: Path) -> bool:
    with contextlib.suppress(FileNotFoundError):  # renamed into place while we look
        return path.stat().st_size > 0
    return False


def assert_complete(path: Path) -> None:
    if path.suffix == ".onnx":
        import onnx

        onnx.checker.check_model(onnx.load(path), full_check=True)
    elif path.suffix == ".safetensors":
        from fc2conv.checkpoint import load_state_dict

        assert load_state_dict(path)
    else:
        assert torch.export.load(path) is not None
