"""Checkpoints `fc2conv.storage.checkpoint` refuses, each with a ConversionError naming the file: truncated,
corrupted, empty and foreign files, safetensors headers that lie (also by naming a tensor twice), pickles that would
run code, and state dicts of another architecture, which load nothing into the model. (Through the command:
tests/test_cli_refusals.py.)
"""

from __future__ import annotations

import contextlib
import json
import pickle
import signal
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import (
    CHECKPOINT_KINDS,
    SMALL_CNN_ARGS,
    PickledCode,
    assert_unchanged,
    invoke,
    saved_checkpoint,
    snapshot,
)
from strategies import SMALL_ARCH, Arch, Hidden, build_generated
from torch import nn

from fc2conv import ConversionError
from fc2conv.cli import EXIT_USAGE
from fc2conv.storage.checkpoint import load_into, load_state_dict, save_state_dict

SHAPE = SMALL_ARCH.input_shape


def _load_refused(path: Path, match: str | None = None, **kwargs) -> str:
    with pytest.raises(ConversionError, match=match) as error:
        load_state_dict(path, **kwargs)
    assert str(path) in str(error.value), "the message names the file"
    return str(error.value)


@pytest.mark.parametrize("kind", CHECKPOINT_KINDS)
@pytest.mark.parametrize("keep", [1, 8, 0.1, 0.5, 0.9, "all but the last byte"])
def test_truncated_checkpoints(small_arch_weights, tmp_path, kind, keep):
    path = saved_checkpoint(small_arch_weights, tmp_path, kind)
    data = path.read_bytes()
    end = keep if isinstance(keep, int) else int(len(data) * keep) if isinstance(keep, float) else len(data) - 1
    path.write_bytes(data[:end])
    _load_refused(path, r"truncated|corrupted|not a valid")


@pytest.mark.parametrize("kind,where", [
    ("safetensors", "header"), ("zip", "data.pkl"), ("zip", "directory"), ("legacy", "pickle"),
])
def test_corrupted_checkpoints(small_arch_weights, tmp_path, kind, where):
    path = saved_checkpoint(small_arch_weights, tmp_path, kind)
    data = bytearray(path.read_bytes())
    if where == "header":  # inside the JSON header
        data[12:20] = b"\x00{]\xff\xfe\"::"
    elif where == "data.pkl":
        start = data.index(b"data.pkl") + len(b"data.pkl") + 64  # into the pickle after the local header
        data[start : start + 16] = b"\xff" * 16
    elif where == "directory":  # the zip's central directory at the end
        data[-40:-20] = b"\x00" * 20
    else:
        data[20:40] = b"\xff" * 20
    path.write_bytes(bytes(data))
    _load_refused(path, r"truncated|corrupted|not a valid|cannot be read")


def test_corrupted_tensor_bytes_in_a_zip_checkpoint(small_arch_weights, tmp_path):
    path = saved_checkpoint(small_arch_weights, tmp_path, "zip")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        record = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    start = record.header_offset + 30 + len(record.filename.encode()) + len(record.extra) + 4
    data[start : start + 4] = b"\x7f\x7f\x7f\x7f"
    path.write_bytes(bytes(data))
    _load_refused(path, r"corrupted")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_foreign_and_empty_files(tmp_path):
    (tmp_path / "empty.pt").touch()
    _load_refused(tmp_path / "empty.pt", "empty")
    with zipfile.ZipFile(tmp_path / "notes.pt", "w") as archive:
        archive.writestr("notes/readme.txt", "not a checkpoint")
    _load_refused(tmp_path / "notes.pt", "not a PyTorch checkpoint")
    (tmp_path / "image.pt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    _load_refused(tmp_path / "image.pt")
    (tmp_path / "text.safetensors").write_text("hello, world: not a tensor file\n" * 4)
    _load_refused(tmp_path / "text.safetensors", "not a valid safetensors")
    _load_refused(tmp_path / "missing.pt", "no such file")
    (tmp_path / "dir.pt").mkdir()
    _load_refused(tmp_path / "dir.pt", "directory")
    scripted = torch.jit.script(nn.Linear(2, 2))
    scripted.save(str(tmp_path / "scripted.pt"))
    _load_refused(tmp_path / "scripted.pt", "TorchScript")


def _safetensors(header: dict, data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


F32 = {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}
LYING_HEADERS = {
    "data beyond the file": _safetensors({"w": F32}, bytes(16)),
    "shape larger than its data": _safetensors({"w": {**F32, "shape": [100, 100]}}, bytes(64)),
    "header length of a terabyte": struct.pack("<Q", 2**40) + b"{}",
    "header length beyond the file": struct.pack("<Q", 4096) + b'{"w": 1}',
    "overlapping tensors": _safetensors({"w": {**F32, "shape": [4], "data_offsets": [0, 16]},
                                         "v": {**F32, "shape": [4], "data_offsets": [8, 24]}}, bytes(24)),
    "unknown dtype": _safetensors({"w": {**F32, "dtype": "Q99"}}, bytes(64)),
    "negative size": _safetensors({"w": {**F32, "shape": [-4, 4]}}, bytes(64)),
    "header not JSON": struct.pack("<Q", 5) + b"nope!",
}


@pytest.mark.parametrize("case", sorted(LYING_HEADERS))
def test_safetensors_headers_that_lie(tmp_path, case):
    path = tmp_path / "lying.safetensors"
    path.write_bytes(LYING_HEADERS[case])
    _load_refused(path, "not a valid safetensors file")


class Deadline:
    """Raise TimeoutError in the main thread after `seconds` (SIGALRM): turns a hang into a failure."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def _expired(self, *_):
        raise TimeoutError(f"still running after {self.seconds} s")

    def __enter__(self):
        self.previous = signal.signal(signal.SIGALRM, self._expired)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *_):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous)


def test_safetensors_file_without_tensors(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(_safetensors({"__metadata__": {"note": "no tensors"}}, b""))
    with Deadline(60):  # a hang fails; the bound is far above the milliseconds it takes, even on a loaded machine
        _load_refused(path, r"(?i)no tensors|holds no|empty|no state dict")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("kind", ["zip", "legacy", "raw pickle"])
def test_pickled_code_does_not_run_without_trust_pickle(tmp_path, kind):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": {"w": torch.ones(2)}, "extra": PickledCode(marker)}
    if kind == "raw pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=kind == "zip")
    message = _load_refused(path, "trust-pickle")
    assert not marker.exists(), "the checkpoint's code ran without trust_pickle"
    assert "io.open" in message or kind == "raw pickle", "the message names what the pickle needs"
    # The same file with trust_pickle runs the code: the marker really detects it. (A bare pickle is not a
    # torch file: its code runs, then torch refuses it.)
    refused = pytest.raises(ConversionError) if kind == "raw pickle" else contextlib.nullcontext()
    with warnings.catch_warnings(), refused:
        warnings.simplefilter("ignore")
        load_state_dict(path, trust_pickle=True)
    assert marker.exists()


def test_state_dict_of_another_architecture_loads_nothing(tmp_path):
    model = build_generated(SMALL_ARCH)
    before = snapshot(model)
    other = build_generated(Arch(SHAPE, SMALL_ARCH.stages, hidden=(Hidden(8, batchnorm=True, dropout=True),), classes=7,
                                 seed=2))
    path = tmp_path / "other.safetensors"
    save_state_dict(other.state_dict(), path)
    state = load_state_dict(path)
    fits = r"(?s)other\.safetensors does not fit.*another number of classes.*shape mismatches \(2\)"
    with pytest.raises(ConversionError, match=fits + r".*head\.4\.weight: model \(4, 8\), file \(7, 8\)"):
        load_into(model, state, source=str(path))
    assert_unchanged(model, before)  # not even the layers that matched were loaded
    renamed = {f"backbone.{k}": v for k, v in state.items()}
    with pytest.raises(ConversionError, match=r"(?s)missing from the file \(\d+\).*unexpected in the file \(\d+\)"):
        load_into(model, renamed, source="renamed.pt")
    assert_unchanged(model, before)


def test_duplicate_keys_in_a_safetensors_header_are_refused(tmp_path):
    tensor = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    header = ('{"fc.weight": ' + json.dumps(tensor) + ', "fc.weight": '
              + json.dumps({**tensor, "data_offsets": [8, 16]}) + "}").encode()
    path = tmp_path / "twice.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(ConversionError, match=r"names 'fc\.weight' twice"):
        load_state_dict(path)
    result = invoke("inspect", path, *SMALL_CNN_ARGS)
    assert result.exit_code == EXIT_USAGE and "'fc.weight' twice" in result.stderr
