"""Shared helpers for the ONNX and runtime tests: running files in onnxruntime, counting ops, blocking torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort
import torch

from fc2conv.runtime.cpu import PIN

ROOT = Path(__file__).resolve().parents[1]

# Prepended to code run by `run_without_torch`: any import of torch (or a package needing it) fails.
_BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "safetensors"):
            raise ImportError(f"torch is blocked in this test: {name}")
sys.meta_path.insert(0, _NoTorch())
"""


def session(path: str | Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(model: str | Path | ort.InferenceSession, x: torch.Tensor) -> torch.Tensor:
    """The first output of the ONNX model (a path, or a session to reuse) on `x`, in onnxruntime on the CPU."""
    if not isinstance(model, ort.InferenceSession):
        model = session(model)
    (out, *_) = model.run(None, {model.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


def op_counts(model: str | Path | onnx.ModelProto) -> Counter:
    """How many nodes of each op type the main graph of `model` holds."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return Counter(node.op_type for node in model.graph.node)


def run_without_torch(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (cwd `tmp_path`) where importing torch raises ImportError."""
    script = tmp_path / "no_torch.py"
    script.write_text(_BLOCK_TORCH + textwrap.dedent(code))
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    if PIN in os.environ:  # the CPU class a run is pinned to (pytest --cpu-class) holds in the child too
        env[PIN] = os.environ[PIN]
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
