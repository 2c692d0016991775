"""Explain why a model cannot be traced, or does not run at the input shape it was given: the user's file and line,
the real cause, and the fix. Each function returns the message of a `ConversionError`.

Shape suggestions come from running the traced model on meta tensors (shapes only, milliseconds): the channels
its first convolution takes, and the input size at which its first Linear receives as many features as it
expects, found by bisection over square (cubic) sizes.
"""

from __future__ import annotations

import inspect
import os
import re
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from ..errors import first_line

__all__ = ["node_line", "shape_failure", "size_dependent", "suggest_input_shape", "untraceable",
           "user_function_of_stack", "user_line", "user_line_of_stack"]

_TORCH_DIR = os.path.dirname(torch.__file__)
_FC2CONV_DIR = os.path.dirname(__file__)
_LARGEST_SIDE = 4096


def user_line(error: BaseException) -> str | None:
    """`FILE:LINE: code` of the innermost frame of `error`'s traceback in the user's code (not torch, not fc2conv)."""
    return _innermost(traceback.extract_tb(error.__traceback__))


def user_line_of_stack() -> str | None:
    """`FILE:LINE: code` of the innermost frame of the current call stack in the user's code."""
    return _innermost(traceback.extract_stack())


def user_function_of_stack() -> Callable | None:
    """The module-level function of the innermost frame of the user's code in the current call stack, when that
    frame is one (not a method or a closure): what fx's `autowrap_functions` can keep as one node."""
    frame = inspect.currentframe()
    while frame is not None and not _is_users(frame.f_code.co_filename):
        frame = frame.f_back
    found = frame.f_globals.get(frame.f_code.co_name) if frame is not None else None
    return found if inspect.isfunction(found) and found.__code__ is frame.f_code else None


def node_line(node: fx.Node) -> str | None:
    """`FILE:LINE: code` of the user's code that made `node`, from the stack trace fx recorded while tracing."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in \S+\n\s+(.+)', node.stack_trace or "")
    users = [(file, line, code) for file, line, code in frames if _is_users(file)]
    return f"{users[-1][0]}:{users[-1][1]}: {users[-1][2].strip()}" if users else None


def _innermost(frames: list[traceback.FrameSummary]) -> str | None:
    users = [f for f in frames if _is_users(f.filename)]
    return f"{users[-1].filename}:{users[-1].lineno}: {(users[-1].line or '').strip()}" if users else None


def _is_users(filename: str) -> bool:
    return not filename.startswith((_TORCH_DIR, _FC2CONV_DIR)) and "<" not in filename


def untraceable(name: str, error: Exception) -> str:
    """Why torch.fx could not trace model `name`, where, and what to do."""
    line = user_line(error)
    code = line.rsplit(": ", 1)[-1] if line else ""
    if "int(" in code or "float(" in code or "cannot be interpreted as an integer" in str(error):
        cause = ("a traced size is turned into a Python number (int(x.size(1)), range(x.size(0)), ...), which "
                 "fx cannot follow")
        fix = ("use the size as it is (x.size(1) works in view/reshape), keep this module whole with "
               "leaf_modules=[ItsClass] if it is not the head, or fix the value with concrete_args")
    elif "cannot be iterated" in str(error):
        cause = ("a traced size or tensor is unpacked or looped over (*x.shape[2:], a, b = x.shape[2:], "
                 "for t in x), which needs its length before the model runs")
        fix = ("index it instead (x.shape[2], x.shape[3]), keep this module whole with leaf_modules=[ItsClass] if "
               "it is not the head, or fix the value with concrete_args")
    elif "control flow" in str(error):
        cause = "an `if`, `while` or `assert` depends on tensor values, which differ from input to input"
        fix = ("keep the submodule that branches whole with leaf_modules=[ItsClass] (it must not contain the "
               "Linear head), or fix a Python-level flag with concrete_args={'flag': value}")
    else:
        cause = first_line(error, named=True)
        fix = ("keep the offending submodule whole with leaf_modules=[ItsClass] (it must not contain the Linear "
               "head), wrap a helper function with autowrap_functions=[fn], or fix Python-level branches with "
               "concrete_args={'flag': value}")
    where = f" at {line}" if line else ""
    return f"torch.fx could not trace {name}{where}: {cause}.\nHint: {fix}."


def size_dependent(name: str, error: Any, blocker: str | None, attention: bool = False) -> str:
    """Why model `name` cannot be traced once for every input size: the line that turns a varying size into a
    number or a branch (`fc2conv.tracing.sized.SizeDependent`), and, when fc2conv could not keep it whole, why
    (`blocker`; `attention` when that is a transformer's attention)."""
    where = f" at {error.line}" if error.line else ""
    if blocker is None:
        cause = "it is in the model's own forward, so there is nothing smaller to keep whole"
        fix = ("compute it from sizes that do not change with the input (channel counts), keep it as a tensor "
               "operation on x.size(i), or move it into a submodule that does not hold the Linear head")
    else:
        cause = f"fc2conv cannot keep that module whole: {blocker}"
        fix = ("fc2conv converts classifiers whose head reads convolutional feature maps; run this model at its own "
               "input size" if attention else
               "move the size-dependent code into a submodule or function of its own, without the Linear head")
    return (f"{name} {error.what}{where}: a graph traced at one size would be wrong at another, and {cause}.\n"
            f"Hint: {fix}.")


def shape_failure(name: str, input_shape: tuple[int, ...], problem: str, suggestion: str) -> str:
    """Why model `name` does not run at `input_shape`, and the shape it seems to expect."""
    return (f"{name} does not run on input_shape={input_shape} (--input-shape {','.join(map(str, input_shape))}): "
            f"{problem}\nHint: give the shape the model was built for, without the batch dimension "
            f"(input_shape=..., --input-shape on the command line){suggestion}.")


def suggest_input_shape(gm: fx.GraphModule, features_at: Callable[[fx.Node, tuple[int, ...]], int | None]) -> str:
    """A hint naming the input shape the model expects, when it can be told: its first convolution's channels,
    and the size at which `features_at(linear, shape)` (the features per example that reach a Linear) equals
    that Linear's input, for the first of its Linears where some size does."""
    modules = dict(gm.named_modules(remove_duplicate=False))
    first = next((m for m in modules.values() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)), None)
    if first is None:
        return ""
    channels, spatial = first.in_channels, len(first.kernel_size)
    linears = [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(modules[n.target], nn.Linear)]
    for node in linears[:3]:
        wanted = modules[node.target].in_features
        reaching = lambda n, node=node: features_at(node, (channels, *(n,) * spatial))  # noqa: E731
        side = _bisect(reaching, wanted)
        if side is not None and reaching(2 * side) != wanted:  # a Linear after a global pool says nothing of size
            shape = (channels, *(side,) * spatial)
            return (f"; it seems to expect --input-shape {','.join(map(str, shape))} (its Linear '{node.target}' "
                    f"takes {wanted} features, which that size gives)")
    return f"; its first convolution takes {channels} channels and {spatial} spatial axes"


def _bisect(features: Callable[[int], int | None], wanted: int) -> int | None:
    """The smallest side n at which `features(n)` is `wanted`, if there is one (features grow with n)."""
    low, high = 1, _LARGEST_SIDE
    while low < high:
        middle = (low + high) // 2
        found = features(middle)
        if found is None or found < wanted:
            low = middle + 1
        else:
            high = middle
    return low if features(low) == wanted else None

