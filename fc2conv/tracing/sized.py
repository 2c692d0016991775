"""Trace with the sizes a trained model fixes known, and the sizes the input sets kept symbolic.

torch.fx alone cannot trace code that reads a size as a Python number (`int(x.size(1) * ratio)`,
`N, C, H, W = x.size()`) or branches on one (`if x.size(2) != prev.size(2)`). Yet a trained model's channel
counts are fixed; only the batch and the spatial sizes vary. `SizedTracing` runs every traced op on meta tensors
(shapes only, no arithmetic) at the reference input and at other batches and sizes (`fc2conv.tracing.runs`), next to
fx's proxies:

- a Python value that is the same in every run (a channel count, a rank, a dtype, a branch that goes the same
  way at every size tried) becomes a constant of the graph;
- a size that differs between runs stays a node of the graph, so the converted model computes it at run time;
- a Python number or a branch that differs between runs raises `SizeDependent`, naming the line: the graph
  traced at one size would be wrong at another. The caller keeps the function or module that reads it whole
  (computed at run time, as the original does) or refuses.

Runs in which the model fails (a concatenation of branches that round differently at odd sizes) are dropped:
the original does not run at those sizes either. Values stay as plain fx proxies when fc2conv cannot tell what
they are in every run (an op without a meta kernel, or too few runs left to tell a fixed size from a varying one).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate
from torch.fx.proxy import Attribute

from .diagnose import user_function_of_stack, user_line_of_stack
from .runs import Runs, Unknown, among, meta, untraced

__all__ = ["SizeDependent", "SizedTracing", "TracedSize"]

# Ops that may give a Python value (a size, a rank, a flag) from a tensor: run at once, where other ops run only when
# a Python value computed after them is asked for.
_SCALAR_METHODS = frozenset({"size", "dim", "ndimension", "numel", "nelement", "is_floating_point", "is_complex",
                             "is_contiguous", "element_size", "stride", "storage_offset", "__len__"})
_SCALAR_FUNCTIONS = frozenset({getattr, len, torch.numel, torch.is_floating_point, torch.is_complex,
                               torch.is_tensor})
_PENDING = object()
# Python values that may become constants of the graph; the device never does (meta runs know only "meta").
_FIXED_TYPES = (bool, int, float, str, torch.dtype)
_DEVICE_ATTRIBUTES = frozenset({"device", "is_cuda", "is_cpu", "is_meta", "is_mps", "is_xpu", "get_device",
                                "data_ptr"})
# Tensor attributes that are Python values the model fixes (x.shape is `size()`); reading one runs the ops before it.
_PYTHON_ATTRIBUTES = frozenset({"ndim", "dtype", "layout", "requires_grad", "is_sparse", "is_quantized", "is_nested"})


class SizeDependent(BaseException):
    """The model turned a size that differs between runs into a Python number or a branch (a BaseException: the
    model's own `except Exception` must not catch it).

    `line` is the user's code, `what` says what it did and with which values; `function` is the module-level
    function it happened in (None inside a method), `module` the qualified name and type of the innermost module
    being traced (None at the top level)."""

    def __init__(self, line: str | None, what: str, function: Callable | None,
                 module: tuple[str, type[nn.Module]] | None):
        super().__init__(what)
        self.line, self.what, self.function, self.module = line, what, function, module


class TracedSize(tuple):
    """`x.size()` / `x.shape` while tracing: fixed sizes as ints, varying ones as proxies."""

    def numel(self) -> Any:
        return math.prod(self)


class SizedProxy(fx.Proxy):
    """A proxy that knows its value in every run (`values`, None where unknown), once asked."""

    _values: Any = None

    @property
    def values(self) -> list[Any] | None:
        if self._values is _PENDING:
            self.tracer.run_pending()
        return self._values

    def __getattr__(self, name: str) -> Any:
        if name == "shape":
            return self.size()
        if name in _PYTHON_ATTRIBUTES and self.values is not None:
            found = self.tracer.fixed_attribute(self, name)
            if found is not None:
                return found[0]
        return Attribute(self, name)  # a method (x.view), or an attribute read at run time (x.device)

    def __len__(self) -> int:
        return self.tracer.as_number(self, len, "takes a length that depends on the input's size")

    def __int__(self) -> int:
        return self.tracer.as_number(self, int, "turns a size of the input into a Python number")

    def __index__(self) -> int:
        return self.tracer.as_number(self, operator.index, "uses a size of the input as an index")

    def __float__(self) -> float:
        return self.tracer.as_number(self, float, "turns a size of the input into a Python number")

    def __ceil__(self) -> Any:
        return self.tracer.create_proxy("call_function", math.ceil, (self,), {})

    def __floor__(self) -> Any:
        return self.tracer.create_proxy("call_function", math.floor, (self,), {})

    def __trunc__(self) -> Any:
        return self.tracer.create_proxy("call_function", math.trunc, (self,), {})

    def __round__(self, digits: int | None = None) -> Any:
        return self.tracer.create_proxy("call_function", round, (self, *(() if digits is None else (digits,))), {})


class SizedTracing:
    """A mixin for an `fx.Tracer` (see the module docstring); `start` before tracing."""

    def start(self, input_shape: Sequence[int], batch: int, dtype: torch.dtype) -> None:
        self.runs = Runs(input_shape, batch, dtype)
        self.kept_branches: list[str] = []  # the user's lines of branches that went one way at every size
        self._placeholders = 0
        self._pending: list[tuple[SizedProxy, str, Any, tuple, dict]] = []  # in the order fx made them

    # -- fx hooks
    def proxy(self, node: fx.Node) -> fx.Proxy:
        return SizedProxy(node, self)

    def create_arg(self, a: Any) -> Any:
        return super().create_arg(tuple(a) if isinstance(a, TracedSize) else a)

    def create_proxy(self, kind: str, target: Any, args: tuple, kwargs: dict, *rest: Any, **options: Any) -> Any:
        if not self._may_give_python_value(kind, target, args, kwargs):
            proxy = super().create_proxy(kind, target, args, kwargs, *rest, **options)
            if isinstance(proxy, SizedProxy):
                proxy._values = _PENDING
                self._pending.append((proxy, kind, target, args, kwargs))
            return proxy
        values = self._evaluate(kind, target, args, kwargs)
        if kind == "call_method" and target == "size" and len(args) == 1 and not kwargs and values is not None:
            return self._size(args[0], values)
        if kind in ("call_function", "call_method") and target is not getattr and not among(target, _DEVICE_ATTRIBUTES):
            fixed = self._fixed(values)
            if fixed is not None:
                self._note_branch(args, kwargs, fixed[0])
                return fixed[0]
        proxy = super().create_proxy(kind, target, args, kwargs, *rest, **options)
        if isinstance(proxy, SizedProxy):
            proxy._values = values
        return proxy

    def run_pending(self) -> None:
        """Run, in every run, the ops traced so far whose values nobody asked for yet."""
        with untraced():
            while self._pending:
                proxy, *call = self._pending.pop(0)
                proxy._values = self._evaluate(*call)

    def to_bool(self, obj: fx.Proxy) -> bool:
        if self._known(obj, bool) is None:  # a value read from data (`if x.sum() > 0`): fx's own error
            return super().to_bool(obj)
        return self.as_number(obj, bool, "branches on a size of the input")

    def iter(self, obj: fx.Proxy) -> Iterator:
        lengths = self._known(obj, len)
        if lengths is not None and self.runs.same(lengths):
            return iter([obj[i] for i in range(lengths[0])])
        return super().iter(obj)

    # -- what proxies ask
    def fixed_attribute(self, proxy: SizedProxy, name: str) -> tuple[Any] | None:
        return self._fixed(self._each(proxy, lambda value: getattr(value, name)))

    def as_number(self, proxy: fx.Proxy, convert: Callable[[Any], Any], doing: str) -> Any:
        """`convert` of the proxy's value when it is the same in every run; else `SizeDependent`."""
        found = self._known(proxy, convert)
        if found is None:  # worded as Python words it, which fc2conv.tracing.diagnose recognises
            raise TypeError(f"'{type(proxy).__name__}' object cannot be interpreted as an integer")
        if self.runs.same(found):
            return found[0]
        k = self.runs.differing(found)
        what = f"{doing} ({found[0]!r} at {self.runs.describe(0)}, {found[k]!r} at {self.runs.describe(k)})"
        raise SizeDependent(user_line_of_stack(), what, user_function_of_stack(), self._innermost_module())

    # -- runs
    def _may_give_python_value(self, kind: str, target: Any, args: tuple, kwargs: dict) -> bool:
        """Whether the op may give a Python value rather than tensors: it reads one from a tensor (`size`, `dim`), or
        computes with one (size arithmetic). Placeholders and attributes are cheap to know at once."""
        if kind in ("placeholder", "get_attr") or (kind == "call_method" and target in _SCALAR_METHODS):
            return True
        if kind == "call_function" and among(target, _SCALAR_FUNCTIONS):
            return True
        found = []
        map_aggregate((args, kwargs), lambda v: found.append(v) if isinstance(v, Attribute) or (
            isinstance(v, SizedProxy) and v._values is not _PENDING and v._values is not None
            and not isinstance(v._values[0], torch.Tensor)) else v)
        return bool(found)

    def _evaluate(self, kind: str, target: Any, args: tuple, kwargs: dict) -> list[Any] | None:
        if kind == "placeholder":
            self._placeholders += 1
            return list(self.runs.inputs) if self._placeholders == 1 else None
        if kind == "get_attr":
            with untraced():
                value = meta(operator.attrgetter(target)(self.root))
            return [value] * len(self.runs)
        if kind not in ("call_function", "call_method", "call_module") or among(target, _DEVICE_ATTRIBUTES) or (
                target is getattr and args[1:] and args[1] in _DEVICE_ATTRIBUTES):
            return None  # meta runs know only the "meta" device: a branch on the device stays fx's to refuse
        return self.runs.run(self.root, kind, target, lambda k: self._sample((args, kwargs), k))

    def _sample(self, value: Any, k: int) -> Any:
        def one(v: Any) -> Any:
            if isinstance(v, Attribute):
                return getattr(self._sample(v.root, k), v.attr)
            if isinstance(v, fx.Proxy):
                if not isinstance(v, SizedProxy) or v.values is None or v.values[k] is None:
                    raise Unknown
                return v.values[k]
            return meta(v)

        return map_aggregate(value, one)

    def _known(self, proxy: fx.Proxy, convert: Callable[[Any], Any]) -> list[Any] | None:
        """`convert` of the proxy's value in every live run, when every run is known and they tell fixed sizes
        from varying ones."""
        if not isinstance(proxy, SizedProxy) or proxy.values is None or not self._determined():
            return None
        return self._each(proxy, convert)

    def _each(self, proxy: fx.Proxy, read: Callable[[Any], Any]) -> list[Any] | None:
        """`read` of the proxy's value in every live run (None in the others), or None when one fails."""
        try:
            return [read(self._sample(proxy, k)) if self.runs.alive[k] else None for k in range(len(self.runs))]
        except Exception:  # reading a value the model computes may raise anything: then it is not known
            return None

    def _fixed(self, values: list[Any] | None) -> tuple[Any] | None:
        """(the value,) when it is a Python constant, the same in every live run; None otherwise."""
        if values is None or not self._determined():
            return None
        first = values[0]
        plain = isinstance(first, _FIXED_TYPES) or (isinstance(first, tuple) and all(
            isinstance(v, _FIXED_TYPES) for v in first))
        return (first,) if plain and self.runs.same(values) else None

    def _determined(self) -> bool:
        """Whether the live runs vary the batch and every spatial axis, so a value the same in all of them is
        fixed by the model, not by the input."""
        self.run_pending()  # a run may have failed in an op traced before this question
        return self.runs.determined()

    def _size(self, tensor: fx.Proxy, values: list[Any]) -> TracedSize:
        """`tensor.size()`: an int for every dimension the same in every run, a node for the others."""
        if not self._determined():
            node = super().create_proxy("call_method", "size", (tensor,), {})
            node._values = values
            return node
        ranks = {len(v) for k, v in enumerate(values) if self.runs.alive[k]}
        if len(ranks) != 1:
            return super().create_proxy("call_method", "size", (tensor,), {})
        node, sizes = None, []
        for dim in range(ranks.pop()):
            column = [None if v is None else v[dim] for v in values]
            if self.runs.same(column):
                sizes.append(column[0])
                continue
            if node is None:
                node = super().create_proxy("call_method", "size", (tensor,), {})
                node._values = values
            sizes.append(self.create_proxy("call_function", operator.getitem, (node, dim), {}))
        return TracedSize(sizes)

    def _note_branch(self, args: tuple, kwargs: dict, value: Any) -> None:
        """Record a decision taken from sizes that differ between runs, and is the same in all of them."""
        varying = []
        map_aggregate((args, kwargs), lambda v: varying.append(v) if isinstance(v, SizedProxy) and v.values
                      is not None and not isinstance(v.values[0], torch.Tensor) and not self.runs.same(v.values)
                      else v)
        line = user_line_of_stack() if varying and isinstance(value, bool) else None
        if line is not None and line not in self.kept_branches:
            self.kept_branches.append(line)

    def _innermost_module(self) -> tuple[str, type[nn.Module]] | None:
        stack = getattr(self, "module_stack", None)
        if not stack:
            return None
        name, kind = next(reversed(stack.values()))
        return (name, kind) if name else None
