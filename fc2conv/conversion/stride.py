"""The stride of a converted model's map and the input sizes it runs at, measured from shapes alone.

The model is run on meta tensors (shapes only, no arithmetic) at sizes along one axis, the others at the reference,
and `count(n)` is the number of cells along that axis for an input n long. A map of windows on a grid of one
stride S gains exactly one cell every S positions: count(n) = count(ref) + ⌊(n − ref + a) / S⌋ for one offset
0 ≤ a < S (a > 0 when the model pads an input up, so a last window runs past it). That is what is measured and
checked, never assumed; whatever breaks it is refused with the sizes that show it:

- at every size: where the count reaches +1, +2 and +3 of count(ref) (doubling, then bisection); the steps between
  them are the stride, and must be equal, and the count must never jump by two cells between neighbouring sizes
  (a model that resizes its map to sizes it takes, as MobileViT's F.interpolate does, has no grid of windows);
- when some size fails (a window-partition model reshapes its map into fixed windows, so it runs only where the map
  divides into them): every size from the reference up in turn, until the sizes that run and their counts repeat
  with a period P ≤ `MAX_PERIOD`, seen twice over; the map gains Δ cells per period, so S = P / Δ, and the sizes
  it runs at are those of one period, repeated (`fc2conv.shapes.Sizes`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConversionError
from ..shapes import Sizes, axis_names
from ..tracing.trace import META_FAILURES, meta_state

__all__ = ["MAX_PERIOD", "measure"]

MAX_PERIOD = 256  # the longest period of sizes looked for: a stride of 32 times a window of 8


def _spatial_output(model: nn.Module, channels: int, reference: tuple[int, ...]
                    ) -> Callable[[tuple[int, ...]], tuple[int, ...]]:
    """Output sizes for an input size, from shapes-only (meta) runs; from real runs on zeros for a model that does
    what meta tensors cannot (a leaf module with data-dependent control flow)."""
    state = meta_state(model)
    dtype = next(iter(state.values())).dtype if state else torch.float32

    def on_meta(size: tuple[int, ...]) -> torch.Tensor:
        x = torch.empty(1, channels, *size, device="meta", dtype=dtype)
        return torch.func.functional_call(model, state, (x,))

    def on_zeros(size: tuple[int, ...]) -> torch.Tensor:
        return model(torch.zeros(1, channels, *size, dtype=dtype))

    run = on_meta
    with torch.no_grad():
        try:
            on_meta(reference)
        except META_FAILURES:
            run = on_zeros

    def output(size: tuple[int, ...]) -> tuple[int, ...]:
        with torch.no_grad():
            return tuple(run(size).shape[2:])

    return output


class _Fails(Exception):
    """The model does not run at some size along the axis: its sizes are looked for one by one."""


def _everywhere(count: Callable[[int], int], start: int, name: str) -> int:
    """The stride of a model that runs at every size tried (see the module docstring)."""
    base = count(start)

    def first_size(target: int) -> int:
        low, high = start, start + 1
        while count(high) < target:
            if high > start + 64 * max(start, 8):
                raise ConversionError("the output map does not grow with the input; no sliding geometry")
            low, high = high, start + 2 * (high - start)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if count(middle) >= target else (middle, high)
        return high

    firsts = [first_size(base + k) for k in (1, 2, 3)]
    for k, size in enumerate(firsts, start=1):
        if count(size) != base + k:
            raise _not_a_grid(name, size - 1, count(size - 1), size, count(size))
    steps = {b - a for a, b in itertools.pairwise(firsts)}
    if len(steps) > 1:
        raise ConversionError(f"along the {name} the map gains its next cells at input sizes "
                              f"{', '.join(map(str, firsts))}: steps of {' and '.join(map(str, sorted(steps)))}, not "
                              "one stride, so its cells are not windows on a grid; fc2conv cannot place them")
    return steps.pop()


def _not_a_grid(name: str, before: int, had: int, size: int, has: int) -> ConversionError:
    return ConversionError(
        f"along the {name} the map grows from {had} to {has} cells between input sizes {before} and {size}: its "
        "cells are not windows on a grid of one stride (a layer resizes the map to a size it takes, as F.interpolate "
        "does), so fc2conv cannot place them; mode='global' keeps the model's own function")


def _period(counts: dict[int, int | None], start: int, period: int) -> int | None:
    """Δ when the sizes that run and their counts over [start, start + 2·period] repeat every `period`, the count
    growing by Δ ≥ 1 cells, a divisor of `period`; else None."""
    delta = None
    for m in range(start, start + period + 1):
        a, b = counts[m], counts[m + period]
        if (a is None) != (b is None):
            return None
        if a is None:
            continue
        if delta is None:
            delta = b - a
        elif b - a != delta:
            return None
    return delta if delta and delta > 0 and period % delta == 0 else None


def _periodic(count: Callable[[int], int], start: int, name: str) -> tuple[int, Sizes | None]:
    """(stride, the sizes it runs at) of a model that fails at some sizes (see the module docstring)."""
    counts: dict[int, int | None] = {}
    for n in range(start, start + 2 * MAX_PERIOD + 1):
        try:
            counts[n] = count(n)
        except Exception:  # this size does not run, others may: the model's code decides what it raises
            counts[n] = None
        if counts[start] is None:
            raise ConversionError(f"the converted model does not run at its reference size along the {name}")
        if n == start or (n - start) % 2:
            continue
        period = (n - start) // 2
        delta = _period(counts, start, period)
        if delta is not None:
            stride = period // delta
            _check_grid(counts, start, stride, name)
            runs = sorted({m % period for m in range(start, start + period) if counts[m] is not None})
            return stride, None if len(runs) == period else Sizes(period, _ranges(runs))
    runs = [n for n, c in counts.items() if c is not None]
    raise ConversionError(
        f"along the {name} the converted model runs only at sizes {', '.join(map(str, runs[:12]))}"
        f"{', …' if len(runs) > 12 else ''} of {start}…{start + 2 * MAX_PERIOD}, with no period of at most "
        f"{MAX_PERIOD} sizes seen twice, so fc2conv cannot measure its stride; convert at a reference size where it "
        "runs and give it inputs of the sizes it takes")


def _check_grid(counts: dict[int, int | None], start: int, stride: int, name: str) -> None:
    """ConversionError unless the counts are those of one grid of `stride` (one offset a for every size)."""
    runs = [(m, c) for m, c in counts.items() if c is not None]
    base = counts[start]
    if any(all(c - base == (m - start + a) // stride for m, c in runs) for a in range(stride)):
        return
    jumps = [(p, q) for p, q in itertools.pairwise(runs) if q[1] - p[1] > 1]
    if jumps:
        (before, had), (size, has) = jumps[0]
        raise _not_a_grid(name, before, had, size, has)
    shown = ", ".join(f"{c} at {m}" for m, c in runs[:6])
    raise ConversionError(f"along the {name} the map's cells ({shown}, …) do not lie on one grid of stride {stride}, "
                          "so fc2conv cannot place them")


def _ranges(values: list[int]) -> tuple[tuple[int, int], ...]:
    """Sorted whole numbers as inclusive ranges of consecutive ones."""
    ranges: list[list[int]] = []
    for v in values:
        if ranges and v == ranges[-1][1] + 1:
            ranges[-1][1] = v
        else:
            ranges.append([v, v])
    return tuple((lo, hi) for lo, hi in ranges)


def measure(converted: nn.Module, channels: int, reference: tuple[int, ...]
            ) -> tuple[tuple[int, ...], tuple[Sizes | None, ...] | None]:
    """(stride, sizes) of `converted`'s map: a positive stride per axis, and the sizes it runs at per axis (None:
    every size; None for all when it runs at every size). ConversionError naming the axis and the sizes that show
    it when the cells are not windows on a grid or the stride cannot be measured."""
    output = _spatial_output(converted, channels, reference)
    names = axis_names(len(reference))
    strides, sizes = [], []
    for axis, name in enumerate(names):
        seen: dict[int, int] = {}

        def count(n: int, axis: int = axis, seen: dict[int, int] = seen) -> int:
            if n not in seen:
                seen[n] = output((*reference[:axis], n, *reference[axis + 1:]))[axis]
            return seen[n]

        def strict(n: int, count: Callable[[int], int] = count) -> int:
            try:
                return count(n)
            except Exception as e:  # whatever the model's code raises at a size it does not take
                raise _Fails from e

        try:
            stride, allowed = _everywhere(strict, reference[axis], name), None
        except _Fails:
            stride, allowed = _periodic(count, reference[axis], name)
        strides.append(stride)
        sizes.append(allowed)
    return tuple(strides), tuple(sizes) if any(s is not None for s in sizes) else None
