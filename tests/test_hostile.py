"""Hostile and broken input through the Python API: each gets a clear ConversionError, and nothing is lost.

Models (`fc2conv.convert`): untraceable control flow (and the two fixes the message suggests), Linears on
sequences or tokens, input shapes that do not fit, a Linear fed by two branches, training mode.
Files (`fc2conv.checkpoint`, `fc2conv.onnx.convert_onnx`): truncated, corrupted, empty and foreign files,
safetensors headers that lie, state dicts of another architecture, pickles that would run code, existing
outputs and directories that cannot be written. Nothing lost: the caller's model and files never change,
and an output is complete or absent, also when the writing process is killed (SIGKILL) mid-write.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, listing, next_line, randn
from strategies import Arch, Hidden, Stage, build
from torch import nn

import fc2conv
from fc2conv import ConversionError
from fc2conv.checkpoint import atomic_output, load_into, load_state_dict, save_state_dict

ROOT = Path(__file__).resolve().parents[1]
# A padding-free classifier on 3×17×17: features 6×3×3, then flatten and two Linears.
ARCH = Arch((3, 17, 17), (Stage(6, 3, pool="max"), Stage(6, 3, 2, batchnorm=True)),
            hidden=(Hidden(8, batchnorm=True, dropout=True),), classes=4, seed=1)
SHAPE = ARCH.input_shape


def _snapshot(model: nn.Module) -> tuple[bool, dict[str, torch.Tensor]]:
    return model.training, {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: nn.Module, snapshot: tuple[bool, dict[str, torch.Tensor]]) -> None:
    training, state = snapshot
    assert model.training == training
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), f"{key} changed"


# ---------------------------------------------------------------------------------------------- models


class Gate(nn.Module):
    """Data-dependent control flow: fx cannot trace an `if` on a tensor's value."""

    def forward(self, x):
        return x if x.mean() > 0 else -x


class GatedCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = build(ARCH)
        self.gate = Gate()

    def forward(self, x, flip: bool = False):
        if flip:  # a Python-level flag: fixed by concrete_args
            x = x.flip(-1)
        return self.body.classify(self.gate(self.body.features(x)))


class RNNHead(nn.Module):
    """Conv features read column by column by a GRU; the Linear sees its last hidden state."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.rnn = nn.GRU(4 * 15, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.conv(x).permute(0, 3, 1, 2).flatten(2)  # N × W' × (C·H')
        return self.fc(self.rnn(x)[0][:, -1])


class TinyViT(nn.Module):
    """Patch embedding, one transformer layer, a class token: the Linear reads a token, not a map."""

    def __init__(self, per_token: bool = False):
        super().__init__()
        self.per_token = per_token
        self.patches = nn.Conv2d(3, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.encoder = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = self.encoder(torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1))
        return self.fc(tokens) if self.per_token else self.fc(tokens[:, 0])


class TwoBranches(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.body = build(ARCH)
        self.fc = nn.Linear(12, 4)
        self.fc_a, self.fc_b = nn.Linear(6, 4), nn.Linear(6, 4)

    def forward(self, x):
        # Pools of two maps at different resolutions (the first conv's 15×15, the features' 3×3): their
        # windows slide on different grids. (Pools of one map may mix; tests/test_convert.py.)
        f, early = self.body.features(x), self.body.features[0](x)
        if self.how == "cat":
            return self.fc(torch.cat([f.mean((2, 3)), early.amax((2, 3))], 1))
        if self.how == "sum":
            return self.fc_a(f.mean((2, 3))) + self.fc_b(F.adaptive_max_pool2d(early, 1).flatten(1))
        return self.fc_a(f.mean((2, 3)) * early.amax((2, 3)))  # "mul"


REFUSED = {
    "untraceable": (GatedCNN, SHAPE, r"(?s)torch\.fx could not trace GatedCNN.*leaf_modules=\[.*concrete_args="),
    "rnn head": (RNNHead, (3, 17, 17), r"'fc' \(Linear\).*sequences or tokens"),
    "vit class token": (TinyViT, (3, 16, 16), r"'fc' \(Linear\).*sequences or tokens"),
    "vit per token": (lambda: TinyViT(per_token=True), (3, 16, 16), r"output .* not a vector of class scores"),
    "two branches cat": (lambda: TwoBranches("cat"), SHAPE, r"separate branches"),
    "two branches sum": (lambda: TwoBranches("sum"), SHAPE, r"separate branches"),
    "two branches mul": (lambda: TwoBranches("mul"), SHAPE, r"separate branches"),
    "too small": (lambda: build(ARCH), (3, 4, 4), r"does not run on input_shape=\(3, 4, 4\)"),
    "wrong channels": (lambda: build(ARCH), (1, 17, 17), r"does not run on input_shape=\(1, 17, 17\)"),
    "flatten size differs": (lambda: build(ARCH), (3, 21, 21), r"does not run on input_shape=\(3, 21, 21\)"),
}


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_models_get_a_clear_error_and_stay_untouched(case, inplace):
    factory, shape, message = REFUSED[case]
    torch.manual_seed(0)
    model = factory().train()  # training mode too: the flag must come back unchanged
    snapshot = _snapshot(model)
    with warnings.catch_warnings(), pytest.raises(ConversionError, match=message):
        warnings.simplefilter("ignore")  # the training-mode warning, tested below
        fc2conv.convert(model, shape, inplace=inplace)
    _assert_unchanged(model, snapshot)


def test_the_untraceable_hints_work():
    """The two fixes the message suggests: keep the branching module whole, and fix the Python flag."""
    model = GatedCNN().eval()
    x = randn(2, *SHAPE)
    converted = fc2conv.convert(model, SHAPE, leaf_modules=[Gate], concrete_args={"flip": False})
    with torch.no_grad():
        for sign in (1, -1):  # both sides of the data-dependent branch
            assert_close(converted(sign * x).flatten(1), model(sign * x))
    with pytest.raises(ConversionError, match="could not trace"):  # either fix alone is not enough
        fc2conv.convert(model, SHAPE, leaf_modules=[Gate])


def test_geometry_and_verify_after_the_leaf_module_hint():
    model = GatedCNN().eval()
    converted = fc2conv.convert(model, SHAPE, leaf_modules=[Gate], concrete_args={"flip": False})
    assert fc2conv.geometry(converted).stride == (ARCH.stride, ARCH.stride)
    assert fc2conv.verify(model, converted).ok


@pytest.mark.parametrize("shape", [(17, 17), (1, 3, 17, 17), (3, 0, 17), (3, -17, 17), (3, 17.0, 17), "3x17x17"])
def test_malformed_input_shapes_are_value_errors(shape):
    with pytest.raises(ValueError, match="input_shape"):
        fc2conv.convert(build(ARCH), shape)


@pytest.mark.parametrize("inplace", [False, True])
def test_training_mode_converts_the_eval_behaviour_and_says_so(inplace):
    model = build(ARCH).train()
    snapshot = _snapshot(model)
    expected = copy.deepcopy(model).eval()
    with pytest.warns(UserWarning, match="training mode.*eval behaviour"):
        converted = fc2conv.convert(model, SHAPE, inplace=inplace)
    assert not converted.training
    x = randn(4, *SHAPE)
    with torch.no_grad():
        assert_close(converted(x).flatten(1), expected(x))  # dropout off, running statistics used
        training = copy.deepcopy(model).train()(x)  # on a copy: a training pass updates the statistics
        assert (training - expected(x)).abs().max() > 1e-3, "training and eval behaviour must differ here"
    # No forward pass in training mode happened: running statistics and batch counters are as they were.
    if inplace:
        assert not model.training  # documented: inplace=True leaves the model in eval mode
        model.train()
    _assert_unchanged(model, snapshot)


# ----------------------------------------------------------------------------------------------- files


@pytest.fixture
def weights() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in build(ARCH).state_dict().items()}


def _saved(weights, tmp_path: Path, kind: str) -> Path:
    """`weights` saved as "safetensors", "zip" (torch.save) or "legacy" (torch.save, pre-1.6 format)."""
    if kind == "safetensors":
        path = tmp_path / "w.safetensors"
        save_state_dict(weights, path)
    else:
        path = tmp_path / "w.pt"
        torch.save(weights, path, _use_new_zipfile_serialization=kind == "zip")
    return path


def _refused(path: Path, match: str | None = None, **kwargs) -> str:
    with pytest.raises(ConversionError, match=match) as error:
        load_state_dict(path, **kwargs)
    assert str(path) in str(error.value), "the message names the file"
    return str(error.value)


KINDS = ["safetensors", "zip", "legacy"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("keep", [1, 8, 0.1, 0.5, 0.9, "all but the last byte"])
def test_truncated_checkpoints(weights, tmp_path, kind, keep):
    path = _saved(weights, tmp_path, kind)
    data = path.read_bytes()
    end = keep if isinstance(keep, int) else int(len(data) * keep) if isinstance(keep, float) else len(data) - 1
    path.write_bytes(data[:end])
    _refused(path, r"truncated|corrupted|not a valid")


@pytest.mark.parametrize("kind,where", [
    ("safetensors", "header"), ("zip", "data.pkl"), ("zip", "directory"), ("legacy", "pickle"),
])
def test_corrupted_checkpoints(weights, tmp_path, kind, where):
    path = _saved(weights, tmp_path, kind)
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
    _refused(path, r"truncated|corrupted|not a valid|cannot be read")


def test_corrupted_tensor_bytes_in_a_zip_checkpoint(weights, tmp_path):
    path = _saved(weights, tmp_path, "zip")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        record = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    start = record.header_offset + 30 + len(record.filename.encode()) + len(record.extra) + 4
    data[start : start + 4] = b"\x7f\x7f\x7f\x7f"
    path.write_bytes(bytes(data))
    _refused(path, r"corrupted")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_foreign_and_empty_files(tmp_path):
    (tmp_path / "empty.pt").touch()
    _refused(tmp_path / "empty.pt", "empty")
    with zipfile.ZipFile(tmp_path / "notes.pt", "w") as archive:
        archive.writestr("notes/readme.txt", "not a checkpoint")
    _refused(tmp_path / "notes.pt", "not a PyTorch checkpoint")
    (tmp_path / "image.pt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    _refused(tmp_path / "image.pt")
    (tmp_path / "text.safetensors").write_text("hello, world: not a tensor file\n" * 4)
    _refused(tmp_path / "text.safetensors", "not a valid safetensors")
    _refused(tmp_path / "missing.pt", "no such file")
    (tmp_path / "dir.pt").mkdir()
    _refused(tmp_path / "dir.pt", "directory")
    scripted = torch.jit.script(nn.Linear(2, 2))
    scripted.save(str(tmp_path / "scripted.pt"))
    _refused(tmp_path / "scripted.pt", "TorchScript")


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
    _refused(path, "not a valid safetensors file")


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
        _refused(path, r"(?i)no tensors|holds no|empty|no state dict")


class Evil:
    """Unpickling this creates `marker`: proof that code in a checkpoint ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("kind", ["zip", "legacy", "raw pickle"])
def test_pickled_code_does_not_run_without_trust_pickle(tmp_path, kind):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": {"w": torch.ones(2)}, "extra": Evil(marker)}
    if kind == "raw pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=kind == "zip")
    message = _refused(path, "trust-pickle")
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
    model = build(ARCH)
    snapshot = _snapshot(model)
    other = build(Arch(SHAPE, ARCH.stages, hidden=(Hidden(8, batchnorm=True, dropout=True),), classes=7, seed=2))
    path = tmp_path / "other.safetensors"
    save_state_dict(other.state_dict(), path)
    state = load_state_dict(path)
    fits = r"(?s)other\.safetensors does not fit.*another number of classes.*shape mismatches \(2\)"
    with pytest.raises(ConversionError, match=fits + r".*head\.4\.weight: model \(4, 8\), file \(7, 8\)"):
        load_into(model, state, source=str(path))
    _assert_unchanged(model, snapshot)  # not even the layers that matched were loaded
    renamed = {f"backbone.{k}": v for k, v in state.items()}
    with pytest.raises(ConversionError, match=r"(?s)missing from the file \(\d+\).*unexpected in the file \(\d+\)"):
        load_into(model, renamed, source="renamed.pt")
    _assert_unchanged(model, snapshot)


def test_an_onnx_file_that_is_garbage_or_unsupported_writes_nothing(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from fc2conv.onnx import convert_onnx

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07" + os.urandom(256))
    out = tmp_path / "out.onnx"
    with pytest.raises(ConversionError, match=r"garbage\.onnx"):
        convert_onnx(garbage, out)
    # The head's vector scaled by the mean of the whole input: a second branch no map of scores can keep.
    rng = torch.Generator().manual_seed(0)
    init = [numpy_helper.from_array(torch.randn(4, 3, 3, 3, generator=rng).numpy(), "conv_w"),
            numpy_helper.from_array(torch.randn(5, 4, generator=rng).numpy(), "fc_w"),
            numpy_helper.from_array(torch.randn(5, generator=rng).numpy(), "fc_b"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis")]
    nodes = [helper.make_node("Conv", ["x", "conv_w"], ["f"]),
             helper.make_node("GlobalAveragePool", ["f"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["vector"]),
             helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Unsqueeze", ["mean", "axis"], ["scale"]),
             helper.make_node("Mul", ["vector", "scale"], ["scaled"]),
             helper.make_node("Gemm", ["scaled", "fc_w", "fc_b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "two_branches", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                              [1, 3, 10, 10])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    source = tmp_path / "two_branches.onnx"
    onnx.save(model, source)
    before = source.read_bytes()
    with pytest.raises(ConversionError, match=r"two_branches\.onnx: .*Mul.*comes from another branch"):
        convert_onnx(source, out)
    assert not out.exists() and source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.onnx", "two_branches.onnx"]


# ------------------------------------------------------------------------------------------ outputs


def test_existing_output_is_refused_and_kept(weights, tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"precious")
    with pytest.raises(ConversionError, match=r"already exists.*--force"):
        save_state_dict(weights, path)
    assert path.read_bytes() == b"precious"
    save_state_dict(weights, path, force=True)
    assert all(torch.equal(v, weights[k]) for k, v in load_state_dict(path).items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def _unwritable(tmp_path: Path, how: str) -> Path:
    if how == "parent is a file":
        (tmp_path / "file").write_text("x")
        return tmp_path / "file" / "w.pt"
    if how == "missing parent":
        return tmp_path / "no" / "such" / "w.pt"
    if how == "read-only /proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("needs Linux /proc")
        return Path("/proc/self/w.pt")
    if os.geteuid() == 0:
        pytest.skip("root can write to a read-only directory")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    return locked / "w.pt"


@pytest.mark.parametrize("how", ["parent is a file", "missing parent", "read-only /proc", "mode 0o555"])
def test_directory_that_cannot_be_written(weights, tmp_path, how):
    path = _unwritable(tmp_path, how)
    with pytest.raises(ConversionError, match=f"cannot write to directory {re.escape(str(path.parent))}"):
        save_state_dict(weights, path)
    assert not path.exists()


def test_output_that_is_a_directory(weights, tmp_path):
    (tmp_path / "w.pt").mkdir()
    with pytest.raises(ConversionError, match="is a directory"):
        save_state_dict(weights, tmp_path / "w.pt", force=True)


@pytest.mark.parametrize("failure", [RuntimeError("disk on fire"), KeyboardInterrupt()], ids=type)
def test_failed_writes_leave_the_old_file_and_no_temporary(tmp_path, failure):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(type(failure)), atomic_output(path, force=True) as tmp:
        tmp.write_bytes(b"new, half written")
        raise failure
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_failed_save_writes_nothing(weights, tmp_path):
    with pytest.raises(ConversionError, match="'bad' is a str"):
        save_state_dict({**weights, "bad": "not a tensor"}, tmp_path / "w.pt")
    with pytest.raises(ConversionError, match="unknown checkpoint format"):
        save_state_dict(weights, tmp_path / "w.npz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", KINDS)
def test_loading_never_changes_the_file(weights, tmp_path, kind):
    """Not even when the caller edits the loaded tensors in place (zip files are memory-mapped)."""
    path = _saved(weights, tmp_path, kind)
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    for tensor in load_state_dict(path).values():
        tensor.add_(1)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert all(torch.equal(v, weights[k]) for k, v in load_state_dict(path).items())


# ----------------------------------------------------------------------------- killed mid-write

CHILD_SETUP = f"import os, sys, time\nsys.path.insert(0, {str(ROOT)!r})\n"
# Writes part of the new file, reports it, and waits to be killed.
MID_WRITE = CHILD_SETUP + """
from fc2conv.checkpoint import atomic_output
with atomic_output(sys.argv[1], force=True) as tmp:
    with open(tmp, "wb") as f:
        f.write(b"partial" * 100_000)
        f.flush()
        print("written", flush=True)
        time.sleep(120)
"""
# The whole new file written and fsynced; killed just before the rename.
BEFORE_RENAME = CHILD_SETUP + """
import torch
def paused(*args):
    print("written", flush=True)
    time.sleep(120)
os.replace = paused
from fc2conv.checkpoint import save_state_dict
save_state_dict({"w": torch.ones(512, 512)}, sys.argv[1], force=True)
"""
# A real save of 64 MB, killed by the kernel once its temporary file holds LIMIT bytes: past RLIMIT_FSIZE a write
# raises SIGXFSZ, whose default action ends the process at once like SIGKILL (Python ignores the signal at start-up,
# turning it into an error: the child restores the default). So the real writers, safetensors' Rust code and the
# .pt bytes alike, stop at a known byte with no Python code run after it.
LIMIT = 1 << 20
LARGE_SAVE = CHILD_SETUP + f"""
import resource, signal, torch
from fc2conv.checkpoint import save_state_dict
state = {{f"w{{i}}": torch.full((1024, 1024), float(i)) for i in range(16)}}
sys.dont_write_bytecode = True  # no other file may reach the limit first
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_FSIZE, ({LIMIT}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
save_state_dict(state, sys.argv[1], force=True)
"""


def _spawn(code: str, path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)


def _kill(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    child.stdout.close()


@pytest.mark.parametrize("old", [b"old, complete file", None], ids=["over an old file", "new file"])
@pytest.mark.parametrize("child", [MID_WRITE, BEFORE_RENAME], ids=["mid-write", "before rename"])
def test_killed_writer_leaves_the_old_file_or_none(tmp_path, child, old):
    path = tmp_path / "out.safetensors"
    if old is not None:
        path.write_bytes(old)
    process = _spawn(child, path)
    assert next_line(process) == "written"  # the child is paused at that point: the kill lands there
    _kill(process)
    assert process.returncode == -signal.SIGKILL
    assert path.read_bytes() == old if old is not None else not path.exists()
    # SIGKILL cannot be caught: the child's hidden temporary file stays behind, never under the output's name.
    assert listing(tmp_path, process.pid) == [*(["out.safetensors"] if old else []), "out.safetensors~tmp"]
    (tmp,) = (p for p in tmp_path.iterdir() if p != path)
    if child is MID_WRITE:
        assert tmp.read_bytes() == b"partial" * 100_000
    else:
        assert torch.equal(load_state_dict(tmp)["w"], torch.ones(512, 512))  # written whole, not renamed


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_killed_real_save_leaves_the_old_file(tmp_path, tmp_path_factory, suffix):
    """Killed as its temporary file would pass LIMIT bytes of 64 MB (see LARGE_SAVE): the old file is intact, and the
    only other files are the child's hidden temporaries, holding the start of the new file. The .pt bytes stop at
    byte LIMIT. safetensors sizes its file to the whole length before writing any data (since 0.8 a temporary file
    of its own, ".tmpXXXXXX", renamed over ours when complete), so it is killed there."""
    path = tmp_path / f"big{suffix}"
    path.write_bytes(b"old, complete file")
    process = subprocess.Popen([sys.executable, "-c", LARGE_SAVE, str(path)], stderr=subprocess.PIPE, text=True)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == -signal.SIGXFSZ, stderr
    assert path.read_bytes() == b"old, complete file"
    names = listing(tmp_path, process.pid)
    own = [name for name in names if re.fullmatch(r"\.tmp\w{6}", name)] if suffix == ".safetensors" else []
    assert names == sorted([path.name, f"{path.name}~tmp", *own]) and len(own) <= 1
    complete = tmp_path_factory.mktemp("complete") / path.name  # the same save, not interrupted
    save_state_dict({f"w{i}": torch.full((1024, 1024), float(i)) for i in range(16)}, complete)
    expected = complete.read_bytes()
    assert len(expected) > 60 * LIMIT
    for tmp in (p for p in tmp_path.iterdir() if p != path):
        data = tmp.read_bytes()
        assert data == expected[: len(data)] and len(data) <= LIMIT
        if suffix == ".pt":
            assert len(data) == LIMIT  # the kill landed mid-write, at byte LIMIT
