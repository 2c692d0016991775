"""Writes that fail or are refused, and nothing lost: an existing output is kept without --force, a directory that
cannot be written, an output that is a directory or the input itself (also by a link, or a heatmap over its own
image) are refused, and loading never changes a file. A failed, interrupted or killed write (an exception, a full
disk, no space left, SIGTERM during `fc2conv convert`, SIGKILL mid-write) leaves the old file or none, never part of
a new one under the output's name.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    CHECKPOINT_KINDS,
    ROOT,
    SMALL_CNN_ARGS,
    assert_clean_refusal,
    cli_process,
    invoke,
    listing,
    next_line,
    saved_checkpoint,
)
from PIL import Image

from fc2conv import ConversionError
from fc2conv.storage.checkpoint import atomic_output, load_state_dict, save_state_dict

# ------------------------------------------------------------------------------------------ outputs


def test_existing_output_is_refused_and_kept(small_arch_weights, tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"precious")
    with pytest.raises(ConversionError, match=r"already exists.*--force"):
        save_state_dict(small_arch_weights, path)
    assert path.read_bytes() == b"precious"
    save_state_dict(small_arch_weights, path, force=True)
    assert all(torch.equal(v, small_arch_weights[k]) for k, v in load_state_dict(path).items())
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
def test_directory_that_cannot_be_written(small_arch_weights, tmp_path, how):
    path = _unwritable(tmp_path, how)
    with pytest.raises(ConversionError, match=f"cannot write to directory {re.escape(str(path.parent))}"):
        save_state_dict(small_arch_weights, path)
    assert not path.exists()


def test_output_that_is_a_directory(small_arch_weights, tmp_path):
    (tmp_path / "w.pt").mkdir()
    with pytest.raises(ConversionError, match="is a directory"):
        save_state_dict(small_arch_weights, tmp_path / "w.pt", force=True)


@pytest.mark.parametrize("failure", [RuntimeError("disk on fire"), KeyboardInterrupt()], ids=type)
def test_failed_writes_leave_the_old_file_and_no_temporary(tmp_path, failure):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(type(failure)), atomic_output(path, force=True) as tmp:
        tmp.write_bytes(b"new, half written")
        raise failure
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_failed_save_writes_nothing(small_arch_weights, tmp_path):
    with pytest.raises(ConversionError, match="'bad' is a str"):
        save_state_dict({**small_arch_weights, "bad": "not a tensor"}, tmp_path / "w.pt")
    with pytest.raises(ConversionError, match="unknown checkpoint format"):
        save_state_dict(small_arch_weights, tmp_path / "w.npz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", CHECKPOINT_KINDS)
def test_loading_never_changes_the_file(small_arch_weights, tmp_path, kind):
    """Not even when the caller edits the loaded tensors in place (zip files are memory-mapped)."""
    path = saved_checkpoint(small_arch_weights, tmp_path, kind)
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    for tensor in load_state_dict(path).values():
        tensor.add_(1)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert all(torch.equal(v, small_arch_weights[k]) for k, v in load_state_dict(path).items())


@pytest.mark.parametrize("how", ["same path", "hard link", "symbolic link"])
def test_an_output_that_is_the_input_is_refused_even_with_force(small_files, tmp_path, how):
    checkpoint = tmp_path / "w.safetensors"
    save_state_dict(load_state_dict(small_files / "small.pt"), checkpoint)
    before = checkpoint.read_bytes()
    target = checkpoint
    if how == "hard link":
        target = tmp_path / "alias.safetensors"
        os.link(checkpoint, target)
    elif how == "symbolic link":
        target = tmp_path / "alias.safetensors"
        target.symlink_to(checkpoint)
    result = invoke("convert", checkpoint, *SMALL_CNN_ARGS, "-o", target, "--force")
    assert_clean_refusal(result, "would destroy that input", str(checkpoint))
    assert checkpoint.read_bytes() == before


def test_a_heatmap_over_its_own_image_is_refused(small_and_gray_onnx, tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    before = image.read_bytes()
    assert_clean_refusal(invoke("run", small_and_gray_onnx[0], image, "--heatmap", image, "--force"), "would destroy")
    assert image.read_bytes() == before


# ----------------------------------------------------------------------------- killed mid-write

CHILD_SETUP = f"import os, sys, time\nsys.path.insert(0, {str(ROOT)!r})\n"
# Writes part of the new file, reports it, and waits to be killed.
MID_WRITE = CHILD_SETUP + """
from fc2conv.storage.checkpoint import atomic_output
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
from fc2conv.storage.checkpoint import save_state_dict
save_state_dict({"w": torch.ones(512, 512)}, sys.argv[1], force=True)
"""
# A real save of 64 MB, killed by the kernel once its temporary file holds LIMIT bytes: past RLIMIT_FSIZE a write
# raises SIGXFSZ, whose default action ends the process at once like SIGKILL (Python ignores the signal at start-up,
# turning it into an error: the child restores the default). So the real writers, safetensors' Rust code and the
# .pt bytes alike, stop at a known byte with no Python code run after it.
LIMIT = 1 << 20
LARGE_SAVE = CHILD_SETUP + f"""
import resource, signal, torch
from fc2conv.storage.checkpoint import save_state_dict
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


# ------------------------------------------------------------------------- full disks and SIGTERM mid-write

DISK_LIMIT = 64 * 1024  # bytes any file may grow to (RLIMIT_FSIZE): the SmallCNN artifacts are larger


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pt2"])
def test_a_full_disk_is_one_line_and_leaves_nothing(small_files, tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    result = cli_process("convert", small_files / "small.pt", *SMALL_CNN_ARGS, "-o", out, limit_file_size=DISK_LIMIT)
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
def test_no_space_left_is_one_line_and_leaves_nothing(small_files, tiny_disk, suffix):
    out = tiny_disk / f"out{suffix}"
    result = cli_process("convert", small_files / "small.pt", *SMALL_CNN_ARGS, "-o", out)
    assert_clean_refusal(result, f"could not write {out}", "No space left on device")
    assert [p.name for p in tiny_disk.iterdir()] == ["filler"]


def test_sigterm_during_convert_removes_every_staged_output(small_files, tmp_path):
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
        [sys.executable, "-c", script, "convert", str(small_files / "small.pt"), *SMALL_CNN_ARGS, "-o", str(outputs[0]),
         "-o", str(outputs[1]), "--onnx", str(outputs[2])], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 128 + 15, result.stderr
    pid, names = json.loads(result.stdout.splitlines()[-1])
    assert listing(names, pid) == ["out.pt2~staged", "out.safetensors~staged"]  # when the signal came
    assert list(tmp_path.iterdir()) == []
