"""The torch.fx tracers fc2conv uses, and the order it tries them in (`trace_graph`).

Standard `torch.nn` modules stay leaf modules (one node each, so a Linear is one `call_module`); user modules are
traced through unless listed in `leaf_modules`. The model is traced as fc2conv calls it, `model(x)`: when its
`forward` takes optional inputs (`labels=None`, `return_dict=None`, `**kwargs`), every argument after the input
takes its default, so `if labels is not None` is not mistaken for true.

A model plain fx traces keeps that graph. One it cannot (a size read as a number, a branch on a size, sizes
unpacked) is traced again knowing the sizes (`fc2conv.tracing.sized`): channel counts become constants, sizes the input
sets stay symbolic, and a function or module that turns a varying size into a number or a branch is kept whole
(`fc2conv.tracing.keep`), so it computes at run time what the original computes.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from ..compat import BatchNormBase, DropoutBase
from ..errors import ConversionError
from ..layers import SamePad
from .diagnose import untraceable, user_line_of_stack
from .keep import keep_whole
from .options import TraceOptions
from .sized import SizeDependent, SizedTracing

__all__ = ["TraceOptions", "Traced", "trace_graph"]

# Modules whose training mode computes something else than their eval mode.
_TRAINING_DIFFERS = (DropoutBase, BatchNormBase)
_MOST_KEPT = 32  # functions and module types kept whole before fc2conv gives up on a model


@dataclass(frozen=True)
class Traced:
    """A traced graph, the options that traced it (with what fc2conv chose to keep whole), and notes for the plan."""

    graph: fx.Graph
    options: TraceOptions
    notes: tuple[str, ...] = ()


class Tracer(fx.Tracer):
    def __init__(self, options: TraceOptions):
        super().__init__(autowrap_functions=options.autowrap_functions)
        self.leaf_types, self.leaf_names = options.leaf_modules, options.leaf_names
        self.record_stack_traces = True  # errors can then name the user's file and line

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (isinstance(m, (*self.leaf_types, SamePad)) or module_qualified_name in self.leaf_names
                or super().is_leaf_module(m, module_qualified_name))

    def create_args_for_root(self, root_fn: Callable, is_module: bool, concrete_args: Any = None) -> Any:
        if is_module and concrete_args is None and _takes_optional_inputs(root_fn):
            root_fn = _with_input_only(root_fn)
        return super().create_args_for_root(root_fn, is_module, concrete_args)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        # A module built inside forward (`nn.ReLU(inplace=True)(x)`) belongs to no model: trace through it, so its
        # functional ops (F.relu, F.avg_pool2d, ...) land in the graph, with its eval behaviour like the rest (a
        # new module is in training mode: an inline nn.Dropout would otherwise stay random at inference).
        if self.submodule_paths is not None and m not in self.submodule_paths:
            if m.training and any(isinstance(sub, _TRAINING_DIFFERS) for sub in m.modules()):
                warnings.warn(f"{type(m).__name__} built inside forward() ({user_line_of_stack()}) is in training "
                              "mode even when the model is not, so the original is random at inference and cannot "
                              "be verified; fc2conv converts its eval behaviour", stacklevel=2)
            m.eval()
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)


class SizedTracer(SizedTracing, Tracer):
    """A `Tracer` that knows every value's sizes in several runs (`fc2conv.tracing.sized`)."""

    def __init__(self, options: TraceOptions, input_shape: Sequence[int], batch: int, dtype: torch.dtype):
        super().__init__(options)
        self.start(input_shape, batch, dtype)


def _takes_optional_inputs(forward: Callable) -> bool:
    """Whether `forward` takes, after its input, arguments a caller leaves out: defaulting to None (`labels=None`,
    `return_dict=None`), `*args` or `**kwargs`. As graph inputs fx would trace `if labels is not None` as true and
    fail on `**kwargs`; flags with other defaults stay graph inputs, which fx refuses to branch on."""
    try:
        parameters = list(inspect.signature(inspect.unwrap(forward)).parameters.values())[2:]  # after self and input
    except (TypeError, ValueError):
        return False
    return any(p.default is None or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters)


def _with_input_only(forward: Callable) -> Callable:
    """`forward` called as `model(x)`, under the name of its first argument."""

    def forward_input_only(self, x):
        return forward(self, x)

    parameters = list(inspect.signature(inspect.unwrap(forward)).parameters)
    name = parameters[1] if len(parameters) > 1 and parameters[1].isidentifier() else "x"
    code = forward_input_only.__code__
    forward_input_only.__code__ = code.replace(co_varnames=(code.co_varnames[0], name, *code.co_varnames[2:]))
    return forward_input_only


def trace_graph(model: nn.Module, options: TraceOptions, input_shape: Sequence[int], batch: int) -> Traced:
    """The graph of `model` (see the module docstring); `ConversionError` when fx cannot trace it."""
    name = type(model).__name__
    try:
        return Traced(Tracer(options).trace(model, concrete_args=options.concrete_args), options)
    except Exception as e:  # fx raises many types for code it cannot trace; the sized tracer tries next
        if options.concrete_args is not None:  # the caller fixed the arguments: their trace is the answer
            raise ConversionError(untraceable(name, e)) from e
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    notes: list[str] = []
    for _ in range(_MOST_KEPT):
        tracer = SizedTracer(options, input_shape, batch, dtype)
        try:
            graph = tracer.trace(model)
        except SizeDependent as e:
            options, note = keep_whole(model, options, e)
            notes.append(note)
            continue
        except Exception as e:  # whatever the user's code raised under tracing, named with its line
            raise ConversionError(untraceable(name, e)) from e
        branches = [f"the branch at {line} goes the same way at every input size tried: traced as it goes"
                    for line in tracer.kept_branches]
        return Traced(graph, options, (*notes, *branches))
    raise ConversionError(f"{name}: fc2conv kept {_MOST_KEPT} functions and module types whole and the model still "
                          "reads its input's size as a number; it cannot be traced")
