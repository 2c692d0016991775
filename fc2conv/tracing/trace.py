"""Trace a model with torch.fx and record every node's output shape at the reference input.

How the graph is traced is `fc2conv.tracing.tracers`'s job (a model fx cannot trace as it is, is traced knowing its
sizes); the graph returns the class scores (`fc2conv.tracing.scores`: the `logits` of an output dataclass), with
TensorFlow's SAME padding in a form exporters keep symbolic (`fc2conv.tracing.padding`). Shapes come from running the
graph once (`ShapeProp`) on a batch of two, so the batch dimension is never confused with a size-1 dimension;
the run is on meta tensors (shapes only, no arithmetic, any model size in milliseconds), and on real random
inputs for the rare model that calls something meta tensors cannot do.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import replace
from itertools import chain
from typing import Any

import torch
from torch import fx, nn
from torch.fx.immutable_collections import immutable_list

from ..compat import tensor_metadata
from ..errors import ConversionError, first_line, out_of_memory
from ..shapes import times
from .arguments import positional_arguments
from .diagnose import node_line, shape_failure, suggest_input_shape
from .options import TraceOptions
from .padding import substitute_same_padding
from .scores import scores_of
from .tracers import Traced, trace_graph

__all__ = ["META_FAILURES", "NodeFailure", "TraceOptions", "example_input", "meta_state", "trace", "traced_with"]

BATCH = 2
_TRACED = "fc2conv.traced"
# What a model raises on meta tensors for what they cannot do: an op without a meta kernel (NotImplementedError),
# a value read from a tensor, `.item()` or `if x.sum() > 0` (RuntimeError). Another exception is a real failure.
META_FAILURES = (NotImplementedError, RuntimeError)


def example_input(input_shape: Sequence[int], *, batch: int = BATCH, dtype: torch.dtype = torch.float32,
                  seed: int = 0) -> torch.Tensor:
    """A reproducible standard-normal batch of `input_shape`; `ConversionError` naming the shape when the batch
    alone would not fit in the memory this machine has available."""
    _refuse_beyond_memory((batch, *input_shape), dtype)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *input_shape), generator=generator, dtype=dtype)


def _refuse_beyond_memory(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    needed, available = math.prod(shape) * dtype.itemsize, available_memory()
    if available is not None and needed > available:
        raise ConversionError(
            f"input_shape (--input-shape) {times(shape[1:])} does not fit in memory: a batch of {shape[0]} is "
            f"{needed / 2**30:,.1f} GiB and this machine has {available / 2**30:,.1f} GiB available. Give the size "
            "the model was trained on; the converted model takes any larger input")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable), or None where it cannot be told."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # not Linux: the allocation itself will tell
        pass
    return None


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
        line = node_line(self.node)
        return f"'{self.node.name}' ({target})" + (f" at {line}" if line else "")


class _RecordShapes(fx.Interpreter):
    """`ShapeProp` without its printed traceback: runs the graph and sets `node.meta["tensor_meta"]`."""

    def call_module(self, target: str, args: tuple, kwargs: dict) -> Any:
        # fx hands list arguments over as immutable lists; modules that append to theirs (timm's HRNet) need real
        # lists, as the model's own code gives them.
        args = tuple(list(a) if isinstance(a, immutable_list) else a for a in args)
        return super().call_module(target, args, kwargs)

    def run_node(self, node: fx.Node) -> Any:
        try:
            result = super().run_node(node)
        except Exception as e:  # the user's code at this node: any error, kept with the node that raised it
            raise NodeFailure(node, e) from e
        found = False

        def extract(value: Any) -> Any:
            nonlocal found
            if isinstance(value, torch.Tensor):
                found = True
                return tensor_metadata(value)
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


def _propagate_on_meta(gm: fx.GraphModule, input_shape: tuple[int, ...]) -> None:
    x = torch.empty((BATCH, *input_shape), dtype=_model_dtype(gm), device="meta")  # no memory, at any size
    with torch.no_grad():
        torch.func.functional_call(_Propagate(gm), meta_state(gm, "gm."), (x,))


def _propagate_shapes(gm: fx.GraphModule, input_shape: tuple[int, ...]) -> None:
    """Shapes from a run on meta tensors; from a real run for a model that does what meta tensors cannot (a node
    of the model fails on them: `.item()`, an op without a meta kernel). Anything else is fc2conv's own bug and
    propagates."""
    try:
        _propagate_on_meta(gm, input_shape)
    except NodeFailure:
        with torch.no_grad():
            _RecordShapes(gm).run(example_input(input_shape, dtype=_model_dtype(gm)))


def trace(model: nn.Module, input_shape: Sequence[int], options: TraceOptions = TraceOptions()) -> fx.GraphModule:
    """The traced model (eval behaviour) with `node.meta["tensor_meta"]` set for every tensor-valued node.

    Models built from timm are traced with timm's own registries of untraceable modules and functions (timm is
    never imported for other models). Raises `ConversionError` when fx cannot trace the model (naming the
    user's file and line, the cause and the fix) or the model does not run at `input_shape` (naming the layer
    and, when it can be told, the shape the model expects); the model's training flag is restored either way.
    """
    name = type(model).__name__
    options = _with_library_registries(model, options)
    input_shape = tuple(input_shape)
    was_training = model.training
    model.eval()
    try:
        traced = trace_graph(model, options, input_shape, BATCH)
        gm = fx.GraphModule(model, traced.graph, class_name=f"{name}Converted")
        positional_arguments(gm)  # one spelling of every call: the analysis reads arguments by position
        _return_scores(gm)
        traced = replace(traced, notes=(*traced.notes, *substitute_same_padding(gm)))
        gm.meta[_TRACED] = replace(traced, graph=None)
        gm.eval()
        try:
            _propagate_shapes(gm, input_shape)
        except NodeFailure as e:
            suggestion = suggest_input_shape(gm, lambda node, shape: _features_reaching(gm, node, shape))
            problem = (f"{e.where()} ran out of memory: its activations at this size do not fit"
                       if out_of_memory(e.error) else f"{e.where()} raised {first_line(e.error, named=True)}")
            raise ConversionError(shape_failure(name, input_shape, problem, suggestion)) from e
        rows = _batch_of_output(gm)
        if rows not in (None, BATCH):
            suggestion = suggest_input_shape(gm, lambda node, shape: _features_reaching(gm, node, shape))
            raise ConversionError(shape_failure(
                name, input_shape, f"it returns {rows} rows for a batch of {BATCH}: a reshape such as view(-1, "
                "features) folds positions into the batch when the input is larger than the model was built for",
                suggestion))
    finally:
        model.train(was_training)
    return gm


def traced_with(gm: fx.GraphModule) -> Traced:
    """How `trace` traced `gm`: the options, with what fc2conv kept whole, and notes for the plan."""
    return gm.meta[_TRACED]


def _return_scores(gm: fx.GraphModule) -> None:
    """The graph returns the class scores alone (`fc2conv.tracing.scores`); whatever else was returned is dropped."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    scores = scores_of(output.args[0])
    if scores is not output.args[0]:
        output.args = (scores,)
        gm.graph.eliminate_dead_code()
        gm.recompile()


def _batch_of_output(gm: fx.GraphModule) -> int | None:
    output = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    meta = output.meta.get("tensor_meta") if isinstance(output, fx.Node) else None
    return int(meta.shape[0]) if hasattr(meta, "shape") and len(meta.shape) else None


def _features_reaching(gm: fx.GraphModule, linear: fx.Node, input_shape: tuple[int, ...]) -> int | None:
    """The number of values per example that reach node `linear` at `input_shape` (meta tensors: shapes only);
    None when the model fails before it."""
    source = linear.args[0]
    _forget_shapes(gm)  # shapes of an earlier run must not pass for this one's
    with contextlib.suppress(NodeFailure):  # a node past the Linear's input may fail at this size
        _propagate_on_meta(gm, input_shape)
    meta = source.meta.get("tensor_meta") if isinstance(source, fx.Node) else None
    _forget_shapes(gm)
    return math.prod(meta.shape) // BATCH if hasattr(meta, "shape") else None


def _forget_shapes(gm: fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        node.meta.pop("tensor_meta", None)


def _with_library_registries(model: nn.Module, options: TraceOptions) -> TraceOptions:
    """`options` plus timm's registries of modules and functions fx cannot trace, for a model made by timm."""
    if not any(type(m).__module__.startswith("timm.") for m in model.modules()):
        return options
    try:
        from timm.layers import get_notrace_functions, get_notrace_modules
    except ImportError:
        return options
    return replace(options, leaf_modules=(*options.leaf_modules, *get_notrace_modules()),
                   autowrap_functions=(*options.autowrap_functions, *get_notrace_functions()))
