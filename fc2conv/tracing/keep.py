"""What to keep whole when a model turns a size that varies with the input into a Python number or a branch
(`fc2conv.tracing.sized.SizeDependent`): the module-level function it happened in, as one node of the graph, or else the
innermost module being traced, as a leaf. Either then computes at run time, at every size, what the original does;
fc2conv only loses sight of how it moves values between positions (`geometry(...).exact` is None there).

Refused, naming the line: the model's own forward (nothing smaller to keep whole), and a module that holds a
Linear (keeping it whole would hide what may be the head; a transformer's blocks, whose attention mixes tokens).
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from ..errors import ConversionError
from .diagnose import size_dependent
from .options import TraceOptions
from .sized import SizeDependent

__all__ = ["keep_whole"]


def keep_whole(model: nn.Module, options: TraceOptions, error: SizeDependent) -> tuple[TraceOptions, str]:
    """`options` with the function or module type that raised `error` kept whole, and a note for the plan; a
    `ConversionError` naming the line when neither can be."""
    where = f" at {error.line}" if error.line else ""
    function = error.function
    if function is not None and function not in options.autowrap_functions:
        note = (f"{function.__qualname__}() kept as one node: it {error.what}{where}, so it runs at every size as "
                "in the original")
        return replace(options, autowrap_functions=(*options.autowrap_functions, function)), note
    if error.module is not None and error.module[1] not in options.leaf_modules:
        name, kind = error.module
        linear = _linear_inside(model, kind)
        if linear is None:
            note = (f"'{name}' ({kind.__name__}) and every {kind.__name__} kept whole: it {error.what}{where}, so "
                    "it runs at every size as in the original")
            return replace(options, leaf_modules=(*options.leaf_modules, kind)), note
        blocker = f"'{name}' ({kind.__name__}) holds the Linear '{linear}'"
        attention = _in_attention(model, linear)
        if attention:
            blocker += (", part of its attention: the model mixes tokens by attention, so its head reads tokens, "
                        "not a map of convolutional features that could slide")
        raise ConversionError(size_dependent(type(model).__name__, error, blocker, attention))
    raise ConversionError(size_dependent(type(model).__name__, error, None))


def _linear_inside(model: nn.Module, kind: type[nn.Module]) -> str | None:
    """The qualified name of a Linear inside any module of type `kind` in `model`, or None."""
    for name, module in model.named_modules():
        if type(module) is kind:
            for inner, sub in module.named_modules():
                if isinstance(sub, nn.Linear):
                    return f"{name}.{inner}".strip(".")
    return None


def _in_attention(model: nn.Module, name: str) -> bool:
    """Whether the module at `name`, or one it sits in, is attention (by its type's name, as libraries call it)."""
    parts = name.split(".")
    for end in range(1, len(parts) + 1):
        module = model.get_submodule(".".join(parts[:end]))
        if isinstance(module, nn.MultiheadAttention) or "attention" in type(module).__name__.lower():
            return True
    return False
