"""Prove a conversion numerically: the one tolerance, the error measure, and the checks of every mode.

Error measure and tolerances: `fc2conv.tolerance` (max |actual − expected| / max |expected|; 1e-5 in float32,
1e-10 in float64).

Checks, each on a batch of seeded random inputs:
- reference: at `input_shape` the converted output, flattened (dense, global) or spatially averaged
  (cam), equals the original's logits;
- larger input, global and cam: the same against the original run at that size;
- larger input, dense: every cell equals the original's own head applied to the reference-size window
  of the original's features at that cell. This is the exact meaning of a dense map, for every network,
  padded or not (a crop of the image differs near its border when the backbone pads).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .grid import geometry
from .tolerance import ACROSS_RUNTIMES, TOLERANCE, max_errors, tolerance
from .trace import example_input, trace

__all__ = ["ACROSS_RUNTIMES", "TOLERANCE", "Check", "Report", "max_errors", "tolerance", "verify"]

@dataclass(frozen=True)
class Check:
    name: str
    input_size: tuple[int, ...]
    output_shape: tuple[int, ...]
    max_abs: float | None
    max_rel: float | None
    passed: bool | None  # None: could not be checked (see note)
    note: str = ""


@dataclass(frozen=True)
class Report:
    """The outcome of `verify`; truthy when every check that could run passed."""

    mode: str
    dtype: str
    tolerance: float
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.passed is not False for c in self.checks) and any(c.passed for c in self.checks)

    def __bool__(self) -> bool:
        return self.ok

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def __str__(self) -> str:
        lines = [f"mode={self.mode} dtype={self.dtype} tolerance={self.tolerance:.0e} "
                 "(max |converted - original| / max |original|)"]
        for c in self.checks:
            result = {True: "ok", False: "FAILED", None: "not checked"}[c.passed]
            errors = "" if c.max_rel is None else f"max abs {c.max_abs:.2e}  max rel {c.max_rel:.2e}  "
            size = "×".join(map(str, c.input_size))
            shape = "×".join(map(str, c.output_shape))
            lines.append(f"  {c.name:<14} input {size:<10} output {shape:<16} {errors}{result}"
                         + (f"  ({c.note})" if c.note else ""))
        return "\n".join(lines)


def _to_converted_input(x: torch.Tensor) -> torch.Tensor:
    """An MLP's N×D batch is an N×D×1×1 map for the converted model."""
    return x.view(*x.shape, 1, 1) if x.dim() == 2 else x


def _head_parts(original: nn.Module, info: Any) -> tuple[Any, fx.GraphModule, tuple[int, ...]]:
    """The original split where the dense head starts: features, head, and the head input's shape."""
    gm = trace(original, info.input_shape, info.trace_options)
    nodes = list(gm.graph.nodes)
    cut = next(n for n in nodes if n.name == info.cut)
    features, env = fx.Graph(), {}
    for node in nodes[: nodes.index(cut) + 1]:
        env[node] = features.node_copy(node, env.__getitem__)
    features.output(env[cut])
    head, head_env, reached = fx.Graph(), {}, {cut}
    head_env[cut] = head.placeholder("features")
    for node in nodes[nodes.index(cut) + 1 :]:
        inputs = node.all_input_nodes
        if node.op == "output":
            head.output(fx.map_arg(node.args[0], head_env.__getitem__))
        elif any(n in reached for n in inputs) and all(n in head_env or n.op == "get_attr" for n in inputs):
            for n in inputs:
                if n not in head_env:
                    head_env[n] = head.node_copy(n)
            head_env[node] = head.node_copy(node, head_env.__getitem__)
            reached.add(node)
    # An MLP's head starts at its input: the converted input map is already the features.
    backbone = (lambda x: x) if cut.op == "placeholder" else fx.GraphModule(gm, features)
    return backbone, fx.GraphModule(gm, head), tuple(cut.meta["tensor_meta"].shape)


def _dense_windows(original: nn.Module, converted: nn.Module, x: torch.Tensor, out: torch.Tensor):
    """The original head on every window of the original features, shaped like the dense output."""
    info = converted.fc2conv
    backbone, head, cut_shape = _head_parts(original, info)
    windows = F.unfold(backbone(x), info.window)  # N × (C·h·w) × L
    n, _, count = windows.shape
    if count != out.shape[2] * out.shape[3]:
        raise ValueError(f"{count} windows for a {tuple(out.shape[2:])} map")
    windows = windows.transpose(1, 2).reshape(n * count, *cut_shape[1:])
    scores = head(windows).reshape(n, count, -1)
    return scores.transpose(1, 2).reshape(out.shape)


def _larger_size(converted: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    height, width = input_shape[1:] if len(input_shape) == 3 else (1, 1)
    if converted.fc2conv.mode == "global":
        return height + max(height // 2, 2), width + max(width // 4, 1)
    stride = geometry(converted).stride
    return height + 2 * stride[0], width + stride[1]


def verify(
    original: nn.Module,
    converted: nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    sizes: Sequence[tuple[int, int]] | None = None,
    batch: int = 2,
    seed: int = 0,
) -> Report:
    """Check `converted` (from `fc2conv.convert`) against `original` at the reference and larger sizes.

    Runs in the models' own dtype (convert both with `.double()` for a float64 proof). `sizes` are the
    larger (H, W) to try; by default one larger, non-square size. Neither model is changed; both are run
    in eval mode and the original's training flag is restored.
    """
    info = converted.fc2conv
    input_shape = tuple(input_shape or info.input_shape)
    parameter = next(original.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    tol = tolerance(dtype)
    image = len(input_shape) == 3
    was_training = original.training
    original.eval()
    converted.eval()
    checks = []

    def run_check(name: str, x: torch.Tensor) -> None:
        x_converted = _to_converted_input(x)
        size = tuple(x_converted.shape[2:])
        with torch.no_grad():
            out = converted(x_converted)
            try:
                if name == "reference" or (info.mode != "dense" and image):
                    expected = original(x)
                    actual = out.mean((2, 3)) if info.mode == "cam" else out.flatten(1)
                else:
                    expected, actual = _dense_windows(original, converted, x, out), out
            except Exception as e:
                checks.append(Check(name, size, tuple(out.shape), None, None, None,
                                    f"the original does not run here: {type(e).__name__}: {e}"[:200]))
                return
        max_abs, max_rel = max_errors(actual, expected)
        checks.append(Check(name, size, tuple(out.shape), max_abs, max_rel, max_rel <= tol))

    try:
        run_check("reference", example_input(input_shape, batch=batch, dtype=dtype, seed=seed))
        for height, width in sizes or [_larger_size(converted, input_shape)]:
            # An MLP's larger input is a map of vectors, checked pixel by pixel like dense windows.
            x = example_input((input_shape[0], height, width), batch=batch, dtype=dtype, seed=seed + 1)
            run_check(f"{info.mode} larger", x)
    finally:
        original.train(was_training)
    return Report(info.mode, str(dtype).removeprefix("torch."), tol, tuple(checks))
