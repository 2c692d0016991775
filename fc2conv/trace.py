"""Trace a model with torch.fx and record every node's output shape at the reference input.

Standard `torch.nn` modules stay leaf modules (one node each, so a Linear is one `call_module`); user
modules are traced through unless listed in `leaf_modules`. Shapes come from running the graph once
(`ShapeProp`) on a batch of two, so the batch dimension is never confused with a size-1 dimension; the run
is on meta tensors (shapes only, no arithmetic, any model size in milliseconds), and on real random
inputs for the rare model that calls something meta tensors cannot do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from .errors import ConversionError

__all__ = ["NodeFailure", "TraceOptions", "example_input", "meta_state", "trace"]

BATCH = 2
_TORCH_DIR = os.path.dirname(torch.__file__)


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
        self.record_stack_traces = True  # errors can then name the user's file and line

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


class NodeFailure(Exception):
    """A node of a traced graph raised while running: the node, and where the user's code spelled it."""

    def __init__(self, node: fx.Node, error: Exception):
        super().__init__(str(error))
        self.node, self.error = node, error

    def where(self) -> str:
        """`'name' (target) at FILE:LINE: code`, from the stack trace fx recorded while tracing."""
        target = getattr(self.node.target, "__name__", self.node.target)
        place = f"'{self.node.name}' ({target})"
        frames = re.findall(r'File "([^"]+)", line (\d+), in \S+\n\s+(.+)', self.node.stack_trace or "")
        users = [frame for frame in frames if not frame[0].startswith(_TORCH_DIR)]
        if users:
            file, line, code = users[-1]
            place += f" at {file}:{line}: {code.strip()}"
        return place


class _RecordShapes(fx.Interpreter):
    """`ShapeProp` without its printed traceback: runs the graph and sets `node.meta["tensor_meta"]`."""

    def run_node(self, node: fx.Node) -> Any:
        try:
            result = super().run_node(node)
        except Exception as e:
            raise NodeFailure(node, e) from e
        found = False

        def extract(value: Any) -> Any:
            nonlocal found
            if isinstance(value, torch.Tensor):
                found = True
                return _extract_tensor_metadata(value)
            return value

        meta = fx.node.map_aggregate(result, extract)
        if found:
            node.meta["tensor_meta"] = meta
        return result


class _Propagate(nn.Module):
    """Shape recording as a module, so `functional_call` can run it with meta parameters."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__()
        self.gm = gm

    def forward(self, x: torch.Tensor) -> None:
        _RecordShapes(self.gm).run(x)


def _propagate_shapes(gm: fx.GraphModule, x: torch.Tensor) -> None:
    with torch.no_grad():
        try:
            torch.func.functional_call(_Propagate(gm), meta_state(gm, "gm."), (x.to("meta"),))
        except Exception:
            _RecordShapes(gm).run(x)


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
        except NodeFailure as e:
            error = str(e.error).strip().splitlines()[0] if str(e.error).strip() else ""
            raise ConversionError(
                f"{name} does not run on input_shape={tuple(input_shape)} (a batch of {BATCH}): {e.where()} "
                f"raised {type(e.error).__name__}: {error}\nHint: give the shape the model was built for, "
                "without the batch dimension (input_shape=..., --input-shape on the command line), e.g. "
                "(3, 224, 224) for an image model or (D,) for an MLP."
            ) from e
    finally:
        model.train(was_training)
    return gm
