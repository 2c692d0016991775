"""Shared test helpers: the one tolerance check (`assert_close`) and the exact equality of state dicts, seeded inputs,
the torchvision zoo, checkpoints of every kind, the `fc2conv` command in this process or a fresh one and its clean
refusals, child processes (same torch threads, pause points) and the hidden files of fc2conv.runtime.files.atomic."""

from __future__ import annotations

import functools
import os
import re
import resource
import runpy
import select
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
import torchvision
from torch import nn
from typer.testing import CliRunner

import fc2conv
from fc2conv.cli import EXIT_USAGE, app
from fc2conv.errors import ConversionError
from fc2conv.storage.checkpoint import save_state_dict
from fc2conv.tolerance import max_errors, tolerance

# Every CNN classifier in torchvision.models: all classification models but the transformers.
TRANSFORMERS = ("vit_", "swin_", "maxvit")
ZOO = [n for n in torchvision.models.list_models(module=torchvision.models) if not n.startswith(TRANSFORMERS)]
# torchvision's video classifiers, and the clip each is checked at in CI (frames, height, width); `-m slow`
# checks them at 16 frames of their weights' crop.
VIDEO = {"r3d_18": (8, 64, 64), "mc3_18": (8, 64, 64), "r2plus1d_18": (8, 64, 64), "s3d": (16, 224, 224)}
# One model of every family, for the checks that are too slow to repeat on all 68.
FAMILIES = [
    "alexnet", "vgg11_bn", "resnet18", "resnext50_32x4d", "wide_resnet50_2", "densenet121", "mobilenet_v2",
    "mobilenet_v3_large", "efficientnet_b0", "efficientnet_v2_s", "regnet_x_400mf", "regnet_y_400mf",
    "shufflenet_v2_x0_5", "mnasnet0_5", "googlenet", "inception_v3", "convnext_tiny", "squeezenet1_1",
]


ROOT = Path(__file__).resolve().parents[1]
# The example SmallCNN of models/, as the command's flags give it.
SMALL_CNN_ARGS = ["--model-def", "models/small_cnn.py:SmallCNN", "--input-shape", "3,32,32"]
# What `saved_checkpoint` writes: safetensors, torch.save's zip format, and its pre-1.6 ("legacy") format.
CHECKPOINT_KINDS = ["safetensors", "zip", "legacy"]


def assert_close(actual: Any, expected: Any, *, across_runtimes: bool = False, limit: float | None = None,
                 what: str = "") -> None:
    """`actual` equals `expected` (torch tensors or numpy arrays of one shape) within a relative error: fc2conv's
    measure, max |actual − expected| / max |expected| (`fc2conv.tolerance.max_errors`), at most `limit`, by
    default fc2conv's tolerance for expected's dtype (and runtimes). `what` names the comparison in the failure."""
    if limit is not None and across_runtimes:
        raise ValueError("give either limit or across_runtimes")
    max_abs, max_rel = max_errors(actual, expected)
    if limit is None:
        limit = tolerance(expected.dtype, across_runtimes=across_runtimes)
    prefix = f"{what}: " if what else ""
    assert max_rel <= limit, f"{prefix}max rel error {max_rel:.3e} > {limit:.0e} (max abs {max_abs:.3e})"


def assert_equal_state_dicts(found: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    """The same keys, and every tensor equal bit for bit (not a tolerance comparison)."""
    assert sorted(found) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(found[key], value), f"{key} differs"


def snapshot(model: nn.Module) -> tuple[bool, dict[str, torch.Tensor]]:
    """The model's training flag and a copy of its state dict, for `assert_unchanged`."""
    return model.training, {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: tuple[bool, dict[str, torch.Tensor]]) -> None:
    """`model` is as its `snapshot` was: training flag, state dict keys and every tensor."""
    training, state = before
    assert model.training == training
    assert_equal_state_dicts(model.state_dict(), state)


def saved_checkpoint(weights: Mapping[str, torch.Tensor], folder: Path, kind: str) -> Path:
    """`weights` saved in `folder` as "safetensors", "zip" (torch.save) or "legacy" (torch.save, pre-1.6 format)."""
    if kind == "safetensors":
        path = folder / "w.safetensors"
        save_state_dict(weights, path)
    else:
        path = folder / "w.pt"
        torch.save(weights, path, _use_new_zipfile_serialization=kind == "zip")
    return path


class PickledCode:
    """Unpickling this creates `marker`: proof that a pickle's code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def assert_onnx_overwrite_needs_force(write: Callable[[bool], object], target: Path) -> None:
    """`write(force)` refuses an existing `target` and leaves it as it was; with force it writes a valid model."""
    target.write_bytes(b"keep me")
    with pytest.raises(ConversionError, match="already exists"):
        write(False)
    assert target.read_bytes() == b"keep me"
    write(True)
    onnx.checker.check_model(str(target), full_check=True)


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def seeded_model(factory: Callable[[], nn.Module]) -> nn.Module:
    """`factory()` built after seed 0, in eval mode, with batch-norm statistics that are not the identity."""
    torch.manual_seed(0)
    model = factory().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


@functools.cache
def crop_size(name: str) -> int:
    """The evaluation crop in the metadata of the model's default weights."""
    return torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size[0]


def build_torchvision(name: str, seed: int = 0) -> nn.Module:
    """A randomly initialised torchvision model in eval mode (no download)."""
    torch.manual_seed(seed)
    kwargs = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    if kwargs:
        _calibrate_batch_norm(model, crop_size(name))
    return model.eval()


def _calibrate_batch_norm(model: nn.Module, size: int) -> None:
    """Batch-norm statistics from one random batch. GoogLeNet's and Inception v3's own initialisation makes
    their features vanish (GoogLeNet's logits equal the fc bias to 1e-5) or explode (Inception v3: 1e12),
    so a comparison of logits would not test their backbones."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches seen
    model.train()
    with torch.no_grad():
        model(randn(2, 3, size, size, seed=1))


def measured_receptive_field(dense: nn.Module, channels: int) -> tuple[tuple[int, int], ...]:
    """The receptive field of `dense`'s cells found by perturbation: one NaN input position at every phase of
    the stride, along each axis in turn (NaN reaches every output it touches, whatever the weights); the cells
    that turn NaN say how far before and after its window the input still changes a cell."""
    geo = fc2conv.geometry(dense)
    claimed = geo.receptive_field or tuple((0, 0) for _ in geo.stride)
    # Room for every cell the NaN can reach: a margin M past the claim, the NaN at window + M, the input 2(window + M).
    room = [max(b, a) + 4 * s for s, (b, a) in zip(geo.stride, claimed, strict=True)]
    sizes = [2 * (w + m) for w, m in zip(geo.window, room, strict=True)]
    centre = [(w + m) // s * s for w, m, s in zip(geo.window, room, geo.stride, strict=True)]
    margins = []
    for axis, (stride, window) in enumerate(zip(geo.stride, geo.window, strict=True)):
        x = torch.zeros(stride, channels, *sizes)
        for phase in range(stride):
            position = list(centre)
            position[axis] += phase
            x[(phase, slice(None), *position)] = float("nan")
        with torch.no_grad():
            hit = dense(x)[:, 0].isnan()
        offsets = []
        for phase in range(stride):
            cells = {int(i) for i in hit[phase].nonzero()[:, axis]}  # their index along this axis
            offsets += [centre[axis] + phase - i * stride for i in cells]
        margins.append((max(0, -min(offsets)), max(0, max(offsets) - (window - 1))))
    return tuple(margins)


def invoke(*args):
    """`fc2conv ARGS` run in this process by typer's runner; exceptions inside propagate."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def cli_process(*args, limit_file_size: int | None = None) -> subprocess.CompletedProcess:
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


def saved_weights(models: Path, name: str, path: Path, *args, **kwargs) -> Path:
    """`path`, holding the seeded state dict of `name(*args, **kwargs)` from the Python file `models`."""
    torch.manual_seed(0)
    torch.save(runpy.run_path(str(models))[name](*args, **kwargs).state_dict(), path)
    return path


def same_threads_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's environment) for a child process whose PyTorch runs on as many intra-op
    threads as this one. conftest.py gives each xdist worker one thread; a child left at its default (one per
    core) sums in another order, so a bit-for-bit comparison of its outputs with ours depends on the machine."""
    threads = str(torch.get_num_threads())
    return {**(os.environ if env is None else env), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def next_line(process: subprocess.Popen, timeout: float = 300) -> str:
    """The next line `process` prints on its stdout (a text pipe), stripped; "" if it exited first. Tests wait
    for a child's "I am at point X" line with it; `timeout` only turns a hung child into a failure."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        process.kill()
        raise AssertionError(f"the child printed nothing within {timeout} s")
    return process.stdout.readline().strip()


# fc2conv.runtime.files.atomic names its hidden siblings of a target ".{stem}.{pid}.{8 hex}.{tag}{suffix}"
# (`_hidden_sibling`).
_HIDDEN = re.compile(r"\.(?P<stem>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.(?P<tag>tmp|staged)(?P<suffix>\.[^.]+|)")


def listing(folder: Path | Iterable[str], pid: int | None = None) -> list[str]:
    """The names in `folder` (or the names given), sorted, each hidden file of `fc2conv.runtime.files.atomic` written
    as its target and tags: "out.pt2~staged~tmp" is `atomic_output`'s temporary file for `staged_outputs`' staging file
    of out.pt2. With `pid`, only hidden names made by that process are translated; others stay as they are."""
    names = [p.name for p in folder.iterdir()] if isinstance(folder, Path) else list(folder)
    return sorted(_hidden_target(name, pid) for name in names)


def _hidden_target(name: str, pid: int | None) -> str:
    tags = []
    while (found := _HIDDEN.fullmatch(name)) and (pid is None or int(found["pid"]) == pid):
        name = found["stem"] + found["suffix"]
        tags.append(found["tag"])
    return "~".join([name, *reversed(tags)])
