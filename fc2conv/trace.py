"""Trace a model with torch.fx and record every node's output shape at the reference input.

Standard `torch.nn` modules stay leaf modules (one node each, so a Linear is one `call_module`); user
modules are traced through unless listed in `leaf_modules`. Shapes come from running the graph once
(`ShapeProp`) on a batch of two, so the batch dimension is never confused with a size-1 dimension; the run
is on meta tensors (shapes only, no arithmetic, any model size in milliseconds), and on real random
inputs for the rare model that calls something meta tensors cannot do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .errors import ConversionError

__all__ = ["TraceOptions", "example_input", "meta_state", "trace"]

BATCH = 2


@dataclass(frozen=True)
class TraceOptions:
    """How to trace: module types kept whole, functions kept as one node, fixed forward arguments, and
    submodules (by qualified name) kept whole because the conversion does not touch them."""

    leaf_modules: tuple[type[nn.Module], ...] = ()
    autowrap_functions: tuple[Any, ...] = ()
    concrete_args: dict[str, Any] | None = field(default=None, hash=False)
    leaf_names: frozenset[str] = frozenset()


class _Tracer(fx.Tracer):
    def __init__(self, options: TraceOptions):
        super().__init__(autowrap_functions=options.autowrap_functions)
        self.leaf_types, self.leaf_names = options.leaf_modules, options.leaf_names

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (isinstance(m, self.leaf_types) or module_qualified_name in self.leaf_names
                or super().is_leaf_module(m, module_qualified_name))


def example_input(input_shape: Sequence[int], *, batch: int = BATCH, dtype: torch.dtype = torch.float32,
                  seed: int = 0) -> torch.Tensor:
    """A reproducible standard-normal batch of `input_shape`."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *input_shape), generator=generator, dtype=dtype)


def _model_dtype(model: nn.Module) -> torch.dtype:
    tensor = next(model.parameters(), None)
    return torch.float32 if tensor is None else tensor.dtype


def meta_state(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Meta copies (shape and dtype, no data) of `module`'s parameters and buffers, for `functional_call`."""
    return {f"{prefix}{name}": torch.empty_like(t, device="meta")
            for name, t in chain(module.named_parameters(), module.named_buffers())}


class _Propagate(nn.Module):
    """ShapeProp as a module, so `functional_call` can run it with meta parameters."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__()
        self.gm = gm

    def forward(self, x: torch.Tensor) -> None:
        ShapeProp(self.gm).propagate(x)


def _propagate_shapes(gm: fx.GraphModule, x: torch.Tensor) -> None:
    with torch.no_grad():
        try:
            torch.func.functional_call(_Propagate(gm), meta_state(gm, "gm."), (x.to("meta"),))
        except Exception:
            ShapeProp(gm).propagate(x)


def trace(model: nn.Module, input_shape: Sequence[int], options: TraceOptions = TraceOptions()) -> fx.GraphModule:
    """The traced model (eval behaviour) with `node.meta["tensor_meta"]` set for every tensor-valued node.

    Raises `ConversionError` when fx cannot trace the model or the model rejects `input_shape`; the model's
    training flag is restored either way.
    """
    name = type(model).__name__
    was_training = model.training
    model.eval()
    try:
        try:
            graph = _Tracer(options).trace(model, concrete_args=options.concrete_args)
        except Exception as e:
            raise ConversionError(
                f"torch.fx could not trace {name}: {type(e).__name__}: {e}\n"
                "Hint: data-dependent control flow (an `if` or loop on tensor values) cannot be traced. "
                "Keep the offending submodule whole with leaf_modules=[ItsClass] (it must not contain the "
                "Linear head), wrap a helper function with autowrap_functions=[fn], or fix Python-level "
                "branches with concrete_args={'flag': value}."
            ) from e
        gm = fx.GraphModule(model, graph, class_name=f"{name}Converted")
        gm.eval()
        try:
            _propagate_shapes(gm, example_input(input_shape, dtype=_model_dtype(model)))
        except Exception as e:
            raise ConversionError(
                f"{name} does not run on input_shape={tuple(input_shape)} (a batch of {BATCH}): "
                f"{type(e).__name__}: {e}\nHint: give the shape the model was built for, without the batch "
                "dimension, e.g. (3, 224, 224) for an image model or (D,) for an MLP."
            ) from e
    finally:
        model.train(was_training)
    return gm
