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

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import fx, nn

from .errors import ConversionError, reported
from .grid import geometry
from .layers import im2col
from .tolerance import ACROSS_RUNTIMES, TOLERANCE, max_errors, tolerance
from .trace import example_input, trace

__all__ = ["ACROSS_RUNTIMES", "TOLERANCE", "Check", "Report", "max_errors", "runs_on", "tolerance", "verify"]

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
            result = {True: "ok", False: "FAILED", None: "skipped"}[c.passed]
            errors = "" if c.max_rel is None else f"max abs {c.max_abs:.2e}  max rel {c.max_rel:.2e}  "
            size = "×".join(map(str, c.input_size))
            shape = "×".join(map(str, c.output_shape))
            lines.append(f"  {c.name:<14} input {size:<10} output {shape:<16} {errors}{result}"
                         + (f"  ({c.note})" if c.note else ""))
        return "\n".join(lines)


def _to_converted_input(x: torch.Tensor) -> torch.Tensor:
    """An MLP's N×D batch is an N×D×1×1 map for the converted model."""
    return x.view(*x.shape, 1, 1) if x.dim() == 2 else x


@dataclass(frozen=True)
class _HeadParts:
    """The original split where the dense head starts: the backbone up to the cut, the head after it, the cut's
    shape, and the backbone tensors the head reads only for their size (`x.view(x.size(0), -1)`)."""

    backbone: Any
    head: fx.GraphModule
    cut_shape: tuple[int, ...]
    sized: tuple[tuple[int, ...], ...]

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        """The head on a batch of feature windows; sized tensors are stood in for by meta tensors of that batch."""
        stand_ins = [torch.empty((len(windows), *shape[1:]), device="meta") for shape in self.sized]
        return self.head(windows, *stand_ins)


def _head_parts(original: nn.Module, info: Any) -> _HeadParts:
    gm = trace(original, info.input_shape, info.trace_options)
    nodes = list(gm.graph.nodes)
    cut = next((n for n in nodes if n.name == info.cut), None)
    if cut is None:
        raise ConversionError(f"the original traced again has no node {info.cut!r} where its head starts")
    features, env = fx.Graph(), {}
    for node in nodes[: nodes.index(cut) + 1]:
        env[node] = features.node_copy(node, env.__getitem__)
    features.output(env[cut])
    head, head_env, reached, sized = fx.Graph(), {}, {cut}, []
    head_env[cut] = head.placeholder("features")

    def bring(node: fx.Node) -> fx.Node:
        """A value from before the cut into the head: weights as they are, tensors as stand-ins for their size,
        Python values (sizes, shapes) recomputed from those."""
        if node not in head_env:
            if node.op == "get_attr":
                head_env[node] = head.node_copy(node)
            elif hasattr(node.meta.get("tensor_meta"), "shape"):
                head_env[node] = head.placeholder(f"size_of_{node.name}")
                sized.append(tuple(node.meta["tensor_meta"].shape))
            else:
                for source in node.all_input_nodes:
                    bring(source)
                head_env[node] = head.node_copy(node, head_env.__getitem__)
        return head_env[node]

    for node in nodes[nodes.index(cut) + 1 :]:
        if node.op == "output":
            head.output(fx.map_arg(node.args[0], bring))
        elif any(n in reached for n in node.all_input_nodes):
            head_env[node] = head.node_copy(node, bring)
            reached.add(node)
    # An MLP's head starts at its input: the converted input map is already the features.
    backbone = (lambda x: x) if cut.op == "placeholder" else fx.GraphModule(gm, features)
    return _HeadParts(backbone, fx.GraphModule(gm, head), tuple(cut.meta["tensor_meta"].shape), tuple(sized))


def _dense_windows(original: nn.Module, converted: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The original head on every window of the original features, shaped like the dense output."""
    info = converted.fc2conv
    parts = _head_parts(original, info)
    windows = im2col(parts.backbone(x), info.window)  # N × (C·window) × L
    n, _, count = windows.shape
    if count != math.prod(out.shape[2:]):
        raise ConversionError(f"{count} windows for a {tuple(out.shape[2:])} map")
    scores = parts(windows.transpose(1, 2).reshape(n * count, *parts.cut_shape[1:])).reshape(n, count, -1)
    return scores.transpose(1, 2).reshape(out.shape)


def _larger_size(converted: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """A size larger along every axis, by more along the first (so maps are not square)."""
    reference = tuple(input_shape[1:]) or (1, 1)
    if converted.fc2conv.mode == "global":  # two and one steps of 32: many models take only such sizes
        growth = (64, *(32,) * (len(reference) - 1))
    else:
        stride = geometry(converted).stride
        growth = (2 * stride[0], *stride[1:])
    return tuple(r + g for r, g in zip(reference, growth, strict=True))


@reported("verifying the conversion")
def verify(
    original: nn.Module,
    converted: nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    sizes: Sequence[tuple[int, ...]] | None = None,
    batch: int = 2,
    seed: int = 0,
) -> Report:
    """Check `converted` (from `fc2conv.convert`) against `original` at the reference and larger sizes.

    Runs in the models' own dtype (convert both with `.double()` for a float64 proof). `sizes` are the
    larger spatial sizes to try (one entry per spatial axis); by default one size larger along every axis.
    A check fails when the outputs differ or when fc2conv cannot evaluate it; it is skipped, with the
    reason, only when the original itself does not run at that size. Neither model is changed; both are run
    in eval mode and the original's training flag is restored.
    """
    info = converted.fc2conv
    input_shape = tuple(input_shape or info.input_shape)
    parameter = next(original.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    tol = tolerance(dtype)
    was_training = original.training
    original.eval()
    converted.eval()
    checks = []

    def run_check(name: str, x: torch.Tensor) -> None:
        x_converted = _to_converted_input(x)
        size = tuple(x_converted.shape[2:])

        def done(output_shape=(), errors=(None, None), passed=None, note=""):
            checks.append(Check(name, size, tuple(output_shape), *errors, passed, note[:300]))

        with torch.no_grad():
            try:
                out = converted(x_converted)
            except Exception as e:
                if name != "reference" and not runs_on(original, x):
                    return done(note=f"skipped: neither model runs at this size ({_first_line(e)})")
                return done(passed=False, note=f"the converted model fails here: {_first_line(e)}")
            if name != "reference" and info.widened:
                return done(out.shape, note="skipped: above its reference size the original's fixed pool covers "
                                            "only part of the map, where the converted model pools all of it")
            if name == "reference" or (info.mode != "dense" and len(input_shape) > 1):
                try:
                    expected = original(x).flatten(1)
                except Exception as e:
                    return done(out.shape, note=f"skipped: the original does not run at this size ({_first_line(e)})")
                spatial = tuple(range(2, out.dim()))
                actual = out.mean(spatial) if info.mode == "cam" else out.flatten(1)
            else:
                try:
                    expected, actual = _dense_windows(original, converted, x, out), out
                except Exception as e:
                    return done(out.shape, passed=False,
                                note=f"fc2conv could not run the original's head on the windows: {_first_line(e)}")
        if actual.shape != expected.shape:
            return done(out.shape, passed=False, note=f"{tuple(actual.shape)} scores, the original gives "
                                                      f"{tuple(expected.shape)}")
        errors = max_errors(actual, expected)
        done(out.shape, errors, errors[1] <= tol)

    try:
        run_check("reference", example_input(input_shape, batch=batch, dtype=dtype, seed=seed))
        for spatial in sizes or [_larger_size(converted, input_shape)]:
            # An MLP's larger input is a map of vectors, checked pixel by pixel like dense windows.
            x = example_input((input_shape[0], *spatial), batch=batch, dtype=dtype, seed=seed + 1)
            run_check(f"{info.mode} larger", x)
    finally:
        original.train(was_training)
    return Report(info.mode, str(dtype).removeprefix("torch."), tol, tuple(checks))


def runs_on(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether `model` runs on `x` at all (no gradients)."""
    try:
        model(x)
    except Exception:
        return False
    return True


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
