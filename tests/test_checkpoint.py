"""fc2conv.storage.checkpoint: every checkpoint format in, every refusal, strict loading, atomic writes."""

from __future__ import annotations

import os
import pickle
import zipfile

import pytest
import torch
from helpers import assert_equal_state_dicts, randn
from safetensors.torch import save_file
from torch import nn

from fc2conv.errors import ConversionError
from fc2conv.runtime.files.atomic import staged_outputs
from fc2conv.storage.checkpoint import atomic_output, load_into, load_state_dict, read_metadata, save_state_dict
from models.small_cnn import SmallCNN


@pytest.fixture(scope="module")
def conv_bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


def wrap(state_dict: dict, how: str) -> object:
    prefixed = {f"module.{k}": v for k, v in state_dict.items()}
    return {
        "bare": state_dict,
        "state_dict": {"state_dict": state_dict, "epoch": 3, "optimizer": {"lr": 0.1}},
        "model": {"model": state_dict, "args": ["--lr", "0.1"]},
        "model_state_dict": {"model_state_dict": state_dict, "loss": 0.5},
        "ema": {"ema": state_dict, "step": 100},
        "two levels": {"model": {"state_dict": state_dict}, "epoch": 1},
        "DataParallel": prefixed,
        "DDP in a training checkpoint": {"state_dict": prefixed},
        "torch.compile": {f"_orig_mod.{k}": v for k, v in state_dict.items()},
        "compiled DDP": {f"module._orig_mod.{k}": v for k, v in state_dict.items()},
    }[how]


FORMATS = ["bare", "state_dict", "model", "model_state_dict", "ema", "two levels", "DataParallel",
           "DDP in a training checkpoint", "torch.compile", "compiled DDP"]


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
@pytest.mark.parametrize("how", FORMATS)
def test_torch_formats_load_as_the_state_dict(tmp_path, conv_bn_model, how, suffix):
    path = tmp_path / f"weights{suffix}"
    torch.save(wrap(conv_bn_model.state_dict(), how), path)
    assert_equal_state_dicts(load_state_dict(path), conv_bn_model.state_dict())


def test_legacy_torch_format(tmp_path, conv_bn_model):
    path = tmp_path / "legacy.pt"
    torch.save(conv_bn_model.state_dict(), path, _use_new_zipfile_serialization=False)
    assert_equal_state_dicts(load_state_dict(path), conv_bn_model.state_dict())


@pytest.mark.parametrize("prefix", ["", "module."])
def test_safetensors(tmp_path, conv_bn_model, prefix):
    path = tmp_path / "weights.safetensors"
    save_file({f"{prefix}{k}": v.contiguous() for k, v in conv_bn_model.state_dict().items()}, path)
    assert_equal_state_dicts(load_state_dict(path), conv_bn_model.state_dict())


def test_a_prefix_not_shared_by_every_key_is_kept(tmp_path):
    weights = {"module.a": torch.ones(1), "b": torch.zeros(1)}
    torch.save(weights, tmp_path / "w.pt")
    assert list(load_state_dict(tmp_path / "w.pt")) == ["module.a", "b"]


class Payload:
    """Unpickling this runs os.system: the attack weights_only=True prevents."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_runs_code_is_refused_and_not_run(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.ones(1)}, "hook": Payload(marker)}, path)
    with pytest.raises(ConversionError, match=r"evil\.pt holds a pickle that needs .*system.*--trust-pickle"):
        load_state_dict(path)
    assert not marker.exists()


def test_a_whole_pickled_module_needs_trust_pickle(tmp_path):
    torch.manual_seed(0)
    module = SmallCNN().eval()
    path = tmp_path / "whole.pt"
    torch.save(module, path)
    with pytest.raises(ConversionError, match=r"SmallCNN.*--trust-pickle.*state_dict"):
        load_state_dict(path)
    assert_equal_state_dicts(load_state_dict(path, trust_pickle=True), module.state_dict())


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_is_refused_with_a_recipe(tmp_path, conv_bn_model):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(conv_bn_model, randn(1, 3, 8, 8)), path)
    with pytest.raises(ConversionError, match=r"TorchScript.*torch\.jit\.load\(path\)\.state_dict\(\)"):
        load_state_dict(path)


def test_non_tensor_dict_says_what_it_holds(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(ConversionError, match=r"holds no state dict: it is a dict of \{'epoch': int, 'lr': float\}"):
        load_state_dict(tmp_path / "meta.pt")


def truncated(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("missing.pt", None, "no such file"),
        ("empty.pt", lambda p: p.write_bytes(b""), "is empty"),
        ("noise.pt", lambda p: p.write_bytes(bytes(range(7, 250, 3))), "corrupted"),
        ("text.pth", lambda p: p.write_text("not a checkpoint"), "corrupted"),
        ("other.zip.pt", lambda p: zipfile.ZipFile(p, "w").writestr("a.txt", "x"), "not a PyTorch checkpoint"),
        ("plain.pkl.bin", lambda p: p.write_bytes(pickle.dumps([1, 2])), r"holds no state dict|cannot be read"),
        ("bad.safetensors", lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}"), "not a valid safetensors"),
    ],
)
def test_unreadable_files_are_refused(tmp_path, name, make, message):
    path = tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises(ConversionError, match=message) as info:
        load_state_dict(path)
    assert name in str(info.value)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_files_are_refused(tmp_path, conv_bn_model, suffix):
    path = tmp_path / f"cut{suffix}"
    save_state_dict(conv_bn_model.state_dict(), path)
    truncated(path)
    with pytest.raises(ConversionError, match=r"truncated|corrupted|not a valid"):
        load_state_dict(path)


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(ConversionError, match="is a directory"):
        load_state_dict(tmp_path)


def test_load_into_reports_every_mismatch_and_changes_nothing(conv_bn_model):
    target = SmallCNN()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    weights = dict(SmallCNN(num_classes=7).state_dict())
    weights["extra.weight"] = torch.ones(1)
    del weights["fc1.bias"]
    with pytest.raises(ConversionError) as info:
        load_into(target, weights, source="ck.pt")
    text = str(info.value)
    assert "ck.pt does not fit this SmallCNN" in text
    assert "missing from the file (1): fc1.bias\n" in text
    assert "unexpected in the file (1): extra.weight\n" in text
    assert len(text.splitlines()) <= 4
    assert "fc2.weight: model (10, 128), file (7, 128)" in text
    assert_equal_state_dicts(target.state_dict(), before)


def test_load_into_allows_a_missing_num_batches_tracked(conv_bn_model):
    weights = {k: v for k, v in conv_bn_model.state_dict().items() if not k.endswith("num_batches_tracked")}
    target = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    load_into(target, weights, source="old.pt")
    assert torch.equal(target[0].weight, conv_bn_model[0].weight)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth", ".bin"])
def test_save_round_trip_with_metadata(tmp_path, conv_bn_model, suffix):
    path = tmp_path / f"out{suffix}"
    save_state_dict(conv_bn_model.state_dict(), path, metadata={"fc2conv.recipe": "{}", "note": "é"})
    assert_equal_state_dicts(load_state_dict(path), conv_bn_model.state_dict())
    assert read_metadata(path) == {"fc2conv.recipe": "{}", "note": "é"}
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_plain_files_have_no_metadata(tmp_path, conv_bn_model):
    torch.save(conv_bn_model.state_dict(), tmp_path / "plain.pt")
    assert read_metadata(tmp_path / "plain.pt") == {}


def test_shared_storage_is_saved_separately(tmp_path):
    base = torch.arange(6.0)
    save_state_dict({"a": base[:3], "b": base[3:], "c": base}, tmp_path / "s.safetensors")
    found = load_state_dict(tmp_path / "s.safetensors")
    assert found["b"].tolist() == [3.0, 4.0, 5.0] and found["c"].tolist() == base.tolist()


def test_save_refuses_unknown_suffix_and_non_tensors(tmp_path):
    with pytest.raises(ConversionError, match="unknown checkpoint format"):
        save_state_dict({"a": torch.ones(1)}, tmp_path / "w.npz")
    with pytest.raises(ConversionError, match="'a' is a int, not a tensor"):
        save_state_dict({"a": 1}, tmp_path / "w.pt")


def test_atomic_output_never_overwrites_without_force(tmp_path):
    path = tmp_path / "out.bin"
    path.write_text("old")
    with pytest.raises(ConversionError, match="already exists; pass --force"), atomic_output(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "old"
    with atomic_output(path, force=True) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_staged_outputs_appear_together_or_not_at_all(tmp_path):
    targets = [tmp_path / "a.pt2", tmp_path / "b.onnx"]
    targets[0].write_text("old")
    with pytest.raises(KeyboardInterrupt), staged_outputs(targets, force=True) as staged:
        staged[0].write_text("new")
        raise KeyboardInterrupt  # killed before the second output was written
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt2"] and targets[0].read_text() == "old"
    with staged_outputs(targets, force=True) as staged:
        assert [p.suffix for p in staged] == [".pt2", ".onnx"] and not any(p.exists() for p in targets[1:])
        for stage in staged:
            stage.write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt2", "b.onnx"]
    assert all(p.read_text() == "new" for p in targets)
    with pytest.raises(ConversionError, match="already exists"), staged_outputs(targets):
        pass


@pytest.mark.parametrize("interruption", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_staged_outputs_renames_all_or_none(tmp_path, monkeypatch, interruption):
    """Interrupted between its renames (a failing rename, or SIGTERM unwinding like Ctrl-C), every target is
    as it was before, and nothing else is left in the directory."""
    import fc2conv.runtime.files.atomic as files

    targets = [tmp_path / "a.pt2", tmp_path / "b.safetensors", tmp_path / "c.onnx"]
    for path in targets[:2]:
        path.write_text("old")
    replace, calls = os.replace, []

    def second_rename_of_a_staged_file_fails(source, target):
        if ".staged." in str(source):
            calls.append(target)
            if len(calls) == 2:
                raise interruption
        replace(source, target)

    monkeypatch.setattr(files.os, "replace", second_rename_of_a_staged_file_fails)
    with pytest.raises((ConversionError, KeyboardInterrupt)), staged_outputs(targets, force=True) as staged:
        for stage in staged:
            stage.write_text("new")
    assert len(calls) == 2  # the first target had been renamed into place when the second failed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt2", "b.safetensors"]
    assert all(path.read_text() == "old" for path in targets[:2])


def test_atomic_output_temp_file_keeps_the_suffix(tmp_path):
    with atomic_output(tmp_path / "model.pt2") as tmp:
        assert tmp.suffix == ".pt2" and tmp.name.startswith(".model.") and tmp.parent == tmp_path
        tmp.write_text("x")


@pytest.mark.parametrize("where", ["missing dir", "a file as dir", "unwritable"])
def test_atomic_output_refuses_unwritable_places(tmp_path, where):
    if where == "missing dir":
        path = tmp_path / "nowhere" / "out.pt"
    elif where == "a file as dir":
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "out.pt"
    else:
        path = _unwritable_dir(tmp_path) / "out.pt"
    with pytest.raises(ConversionError, match="cannot write to directory"), atomic_output(path):
        pass


def _unwritable_dir(tmp_path):
    """A directory this process cannot create files in, even as root (/proc), else a read-only one."""
    if os.geteuid() == 0:
        if not os.path.isdir("/proc/self"):
            pytest.skip("needs /proc when running as root")
        return __import__("pathlib").Path("/proc")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    return locked
