"""The runs `fc2conv.tracing.sized` traces alongside: every op of a model run on meta tensors (shapes only) at the
reference input and at other batches and sizes, to tell the sizes a model fixes from the sizes its input sets.

Meta tensors cost no memory, but many of their kernels are Python (about a millisecond for an addition), so ops
that keep their input's shape (activations, norms, dropout, sums of two same-shaped tensors) take their input's
meta tensor as their value without running. A run in which an op fails is dropped: the model does not run at that
size.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.ops import (
    BINARY_FUNCTIONS,
    BINARY_METHODS,
    POINTWISE_FUNCTIONS,
    POINTWISE_METHODS,
    POINTWISE_MODULES,
)
from ..compat import BatchNormBase, InstanceNormBase, original_module_methods
from ..shapes import times

__all__ = ["Runs", "Unknown", "among", "meta", "untraced"]

# Growth of the runs over the reference size along the spatial axes (never square): odd and even, the usual strides
# 8, 16 and 32 and their neighbours, multiples of 32 on every axis (for models that run at such sizes only), and far
# beyond.
_GROWTH = ((1, 2, 3), (2, 3, 1), (3, 1, 2), (16, 33, 8), (32, 8, 17), (64, 32, 96), (97, 224, 64))
_SHAPE_KEEPING_MODULES = (*POINTWISE_MODULES, BatchNormBase, nn.LayerNorm, nn.GroupNorm,
                          InstanceNormBase, nn.Softmax, nn.LogSoftmax)
_SHAPE_KEEPING_FUNCTIONS = POINTWISE_FUNCTIONS | {F.batch_norm, F.layer_norm, F.group_norm, F.softmax, F.log_softmax}
_SHAPE_KEEPING_METHODS = POINTWISE_METHODS | {"softmax", "log_softmax"}
_IN_PLACE = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


class Unknown(Exception):
    """A value of some run is not known."""


class Runs:
    """The runs' inputs and which of them the model still runs on."""

    def __init__(self, input_shape: Sequence[int], batch: int, dtype: torch.dtype):
        channels, *spatial = input_shape
        self.shapes = [(batch, *input_shape), (batch + 1, *input_shape)]  # the reference first, then another batch
        for k, growth in enumerate(_GROWTH if spatial else ()):
            self.shapes.append((batch + 2 + k % 2, channels, *(s + g for s, g in zip(spatial, growth, strict=False))))
        self.inputs = [torch.empty(shape, dtype=dtype, device="meta") for shape in self.shapes]
        self.alive = [True] * len(self.shapes)
        self._states: dict[int, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.shapes)

    def determined(self) -> bool:
        """Whether a value the same in every live run is fixed by the model, not by the input: the live runs vary
        the batch. They vary every spatial axis too, unless the model fails at every larger size tried (a position
        embedding of one size): then it runs at its reference size only, and its sizes there are fixed."""
        return any(shape[0] != self.shapes[0][0] for shape, alive in zip(self.shapes, self.alive, strict=True)
                   if alive)

    def same(self, values: list[Any]) -> bool:
        """Whether `values` (one per run) are equal, and of one type, in every live run."""
        live = [v for k, v in enumerate(values) if self.alive[k]]
        return all(type(v) is type(live[0]) and v == live[0] for v in live)

    def differing(self, values: list[Any]) -> int:
        """A live run whose value differs from the reference's."""
        return next(k for k, value in enumerate(values) if self.alive[k] and value != values[0])

    def describe(self, k: int) -> str:
        shape = self.shapes[k]
        return times(shape[2:]) + (f" (batch {shape[0]})" if shape[2:] == self.shapes[0][2:] else "")

    def run(self, root: nn.Module, kind: str, target: Any, arguments: Callable[[int], tuple[tuple, dict]]
            ) -> list[Any] | None:
        """The op's value in every live run (None in the others), `arguments(k)` giving run k's; None when it is
        unknown at the reference (an op without a meta kernel, a value read from data, an unknown argument)."""
        values: list[Any] = [None] * len(self.shapes)
        with untraced(), torch.no_grad(), torch.device("meta"):
            module = root.get_submodule(target) if kind == "call_module" else None
            for k in range(len(self.shapes)):
                if not self.alive[k]:
                    continue
                try:
                    args, kwargs = arguments(k)
                except Unknown:
                    return None
                try:
                    values[k] = self._one(kind, target, module, args, kwargs)
                except Exception:  # a user's model may raise anything at another size: that run ends there
                    if k == 0:
                        return None
                    self.alive[k] = False
        return values

    def _one(self, kind: str, target: Any, module: nn.Module | None, args: tuple, kwargs: dict) -> Any:
        kept = _shape_kept(kind, target, module, args, kwargs)
        if kept is not None:
            return kept
        if kind == "call_function":
            return target(*args, **kwargs)
        if kind == "call_method":
            return getattr(args[0], target)(*args[1:], **kwargs)
        if id(module) not in self._states:
            self._states[id(module)] = {name: meta(t) for name, t in
                                        [*module.named_parameters(), *module.named_buffers()]}
        return torch.func.functional_call(module, self._states[id(module)], args, kwargs)


def _shape_kept(kind: str, target: Any, module: nn.Module | None, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The op's input, when the op is known to give a tensor of that shape and dtype (see the module docstring)."""
    first = args[0] if args else None
    if not isinstance(first, torch.Tensor) or "dtype" in kwargs:
        return None
    if kind == "call_module":
        standard = type(module).__module__.startswith("torch.nn")  # not a subclass with a forward of its own
        return first if standard and isinstance(module, _SHAPE_KEEPING_MODULES) and len(args) == 1 else None
    unary = (target in _SHAPE_KEEPING_METHODS) if kind == "call_method" else among(target, _SHAPE_KEEPING_FUNCTIONS)
    if unary:
        return first
    binary = (target in BINARY_METHODS) if kind == "call_method" else (
        among(target, BINARY_FUNCTIONS) or among(target, _IN_PLACE))
    if binary and len(args) == 2 and not kwargs:
        other = args[1]
        if isinstance(other, torch.Tensor):
            return first if other.shape == first.shape and other.dtype == first.dtype else None
        return first if isinstance(other, int | float) and first.is_floating_point() else None
    return None


def among(target: Any, found: set | frozenset) -> bool:
    """`target in found`, false for an unhashable callable."""
    try:
        return target in found
    except TypeError:  # an unhashable callable
        return False


def meta(value: Any) -> Any:
    """A meta tensor of `value`'s shape and dtype; anything else as it is."""
    return torch.empty_like(value, device="meta") if isinstance(value, torch.Tensor) else value


_depth = 0


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Modules called as themselves: while fx traces, calling a module (a leaf run on meta tensors) would record it
    in the graph, and reading a parameter would give a proxy. Re-entrant; patching nn.Module costs a fraction of a
    millisecond (every subclass's method cache is invalidated), so runs are batched inside one."""
    global _depth
    if _depth:
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    patched = nn.Module.__call__, nn.Module.__getattr__
    nn.Module.__call__, nn.Module.__getattr__ = original_module_methods()
    _depth = 1
    try:
        yield
    finally:
        _depth = 0
        nn.Module.__call__, nn.Module.__getattr__ = patched
