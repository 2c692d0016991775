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

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import fx, nn

from ..errors import ConversionError, first_line, reported
from ..layers import im2col
from ..metadata import ONE_CELL
from ..shapes import as_map, is_vector_input, map_size, times
from ..tolerance import ACROSS_RUNTIMES, TOLERANCE, max_errors, tolerance
from ..tracing.scores import scores_of
from ..tracing.trace import example_input, trace
from .geometry import geometry
from .rewrite import convert_with

__all__ = ["ACROSS_RUNTIMES", "TOLERANCE", "Check", "Report", "larger_size", "max_errors", "runs_on", "tolerance",
           "verify"]

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
            lines.append(f"  {c.name:<14} input {times(c.input_size):<10} output {times(c.output_shape):<16} "
                         f"{errors}{result}"
                         + (f"  ({c.note})" if c.note else ""))
        return "\n".join(lines)


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


def _dense_windows(original: nn.Module, info: Any, x: torch.Tensor) -> torch.Tensor:
    """The original head on every window of the original features: the dense map as it must be, N×K×(cells)."""
    parts = _head_parts(original, info)
    features = parts.backbone(x)
    last = getattr(info, "cut_channels_last", False)  # N×(positions)×C: windows cut from the channels-first map
    rank = features.dim()
    if last:
        features = features.permute(0, rank - 1, *range(1, rank - 1))
    cells = tuple(s - w + 1 for s, w in zip(features.shape[2:], info.window, strict=True))
    windows = im2col(features, info.window)  # N × (C·window) × L
    n, _, count = windows.shape
    channels_first = (parts.cut_shape[-1], *parts.cut_shape[1:-1]) if last else parts.cut_shape[1:]
    windows = windows.transpose(1, 2).reshape(n * count, *channels_first)
    if last:
        windows = windows.permute(0, *range(2, rank), 1)
    scores = parts(windows).reshape(n, count, -1)
    return scores.transpose(1, 2).reshape(n, -1, *cells)


class _Skip(Exception):
    """The original itself does not run at this size: the check is skipped, with this reason."""


def _pair(original: nn.Module, converted: nn.Module, x: torch.Tensor, out: torch.Tensor, check: str
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(actual, expected) for one check of `converted`'s output `out` on `x` (see the module docstring)."""
    info = converted.fc2conv
    spatial = tuple(range(2, out.dim()))
    if check == "stitched":
        return _stitched(_ordinary(original, info), x, out, info.density)
    reference = check == "reference"
    if reference or (info.mode in ("global", "cam") and not is_vector_input(info.input_shape)):
        try:
            expected = scores_of(original(x)).flatten(1)
        except Exception as e:  # the original's own code decides what it raises at a size it does not take
            raise _Skip(f"the original does not run at this size ({first_line(e, named=True)})") from e
        if info.mode == "cam":
            return out.mean(spatial), expected
        return (out[(..., *(0,) * len(spatial))] if info.density > 1 else out.flatten(1)), expected
    if info.mode == "pool":
        cells = _dense_windows(original, info, x)
        return out.flatten(1), _REDUCE[info.reduce](cells, tuple(range(2, cells.dim()))).flatten(1)
    if info.density > 1:  # the cells r·i are the ordinary dense map
        expected = _ordinary(original, info)(as_map(x))
        phase = out[(slice(None), slice(None), *(slice(None, None, info.density),) * len(spatial))]
        common = (slice(None), slice(None), *(slice(0, min(a, b)) for a, b in zip(phase.shape[2:],
                                                                                    expected.shape[2:], strict=True)))
        return phase[common], expected[common]
    return out, _dense_windows(original, info, x)


def _ordinary(original: nn.Module, info: Any) -> nn.Module:
    """The dense conversion of `original` without density: the map a denser one interleaves."""
    return convert_with(original, info.input_shape, replace(info.options, density=1))


def _stitched(ordinary: nn.Module, x: torch.Tensor, out: torch.Tensor, density: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(cells of `out`, the same cells by shift-and-stitch): cell r·i + a of the denser map against cell i of the
    ordinary map of `x` shifted by a·(S / r), for every phase a along every axis, on the cells whose whole
    receptive field lies inside the shifted input (at its border the shifted input pads, the image does not)."""
    grid = geometry(ordinary)
    step = tuple(s // density for s in grid.stride)
    expected = torch.full_like(out, float("nan"))
    for phase in itertools.product(range(density), repeat=out.dim() - 2):
        shifted = x[(slice(None), slice(None), *(slice(a * t, None) for a, t in zip(phase, step, strict=True)))]
        try:
            cells = ordinary(shifted)
        except Exception:  # shifted past the last whole window: no cells of this phase (the model's own code
            # decides what it raises for an input smaller than it takes)
            continue
        inside = tuple(min(n, (size - w - after) // s + 1) for n, size, w, s, (before, after)
                       in zip(cells.shape[2:], shifted.shape[2:], grid.window, grid.stride, grid.receptive_field,
                              strict=True))
        first = tuple(-(-before // s) for s, (before, _) in zip(grid.stride, grid.receptive_field, strict=True))
        target = expected[(slice(None), slice(None), *(slice(a, None, density) for a in phase))]
        common = (slice(None), slice(None), *(slice(f, min(n, t)) for f, n, t in zip(first, inside, target.shape[2:],
                                                                                       strict=True)))
        target[common] = cells[common]
    defined = ~expected.isnan()
    return out[defined], expected[defined]


_REDUCE = {"avg": lambda t, d: t.mean(d), "max": lambda t, d: t.amax(d),
           "avgmax": lambda t, d: 0.5 * (t.mean(d) + t.amax(d))}


def larger_size(converted: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """A size larger along every axis, by more along the first (so maps are not square), that the model takes."""
    reference = map_size(input_shape)
    growth = (64, *(32,) * (len(reference) - 1))  # two and one steps of 32: many models take only such sizes
    if converted.fc2conv.mode in ONE_CELL:
        return tuple(r + g for r, g in zip(reference, growth, strict=True))
    try:
        grid = geometry(converted)
    except ConversionError:  # no geometry (its cells are no grid): the rewrite is still checked at a larger size
        return tuple(r + g for r, g in zip(reference, growth, strict=True))
    growth = (2 * grid.stride[0], *grid.stride[1:])
    return grid.taken(tuple(r + g for r, g in zip(reference, growth, strict=True)))


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
        x_converted = as_map(x)
        size = tuple(x_converted.shape[2:])

        def done(output_shape=(), errors=(None, None), passed=None, note=""):
            checks.append(Check(name, size, tuple(output_shape), *errors, passed, note[:300]))

        with torch.no_grad():
            try:
                out = converted(x_converted)
            except Exception as e:  # a failing size is a result of the check, whatever the model raises
                if name != "reference" and not runs_on(original, x):
                    return done(note=f"skipped: neither model runs at this size ({first_line(e, named=True)})")
                return done(passed=False, note=f"the converted model fails here: {first_line(e, named=True)}")
            if name != "reference" and info.widened:
                return done(out.shape, note="skipped: above its reference size the original's fixed pool covers "
                                            "only part of the map, where the converted model pools all of it")
            try:
                actual, expected = _pair(original, converted, x, out, name)
            except _Skip as e:
                return done(out.shape, note=f"skipped: {e}")
            except Exception as e:  # a failing size is a result of the check, whatever the model raises
                return done(out.shape, passed=False,
                            note=f"fc2conv could not evaluate the original here: {first_line(e, named=True)}")
        if actual.numel() == 0:
            return done(out.shape, note="skipped: no cell to compare at this size")
        if actual.shape != expected.shape:
            return done(out.shape, passed=False, note=f"{tuple(actual.shape)} scores, the original gives "
                                                      f"{tuple(expected.shape)}")
        errors = max_errors(actual, expected)
        done(out.shape, errors, errors[1] <= tol)

    try:
        run_check("reference", example_input(input_shape, batch=batch, dtype=dtype, seed=seed))
        for spatial in sizes or [larger_size(converted, input_shape)]:
            # An MLP's larger input is a map of vectors, checked pixel by pixel like dense windows.
            x = example_input((input_shape[0], *spatial), batch=batch, dtype=dtype, seed=seed + 1)
            run_check(f"{info.mode} larger", x)
        if info.density > 1:  # an input wide enough for cells whose receptive field lies inside it
            grid = geometry(_ordinary(original, info))
            spatial = tuple(w + b + a + 2 * s for w, s, (b, a) in zip(grid.window, grid.stride, grid.receptive_field,
                                                                      strict=True))
            run_check("stitched", example_input((input_shape[0], *spatial), batch=batch, dtype=dtype, seed=seed + 2))
    finally:
        original.train(was_training)
    return Report(info.mode, str(dtype).removeprefix("torch."), tol, tuple(checks))


def runs_on(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether `model` runs on `x` at all (no gradients)."""
    try:
        model(x)
    except Exception:  # the model's own code decides what it raises at a size it does not take
        return False
    return True
