"""The one exception fc2conv raises for models, files and arguments it cannot handle, and the guard that keeps every
other exception inside the public functions."""

from __future__ import annotations

import functools
import os
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["ConversionError", "first_line", "out_of_memory", "reported"]

_PACKAGE = os.path.dirname(__file__)
Function = TypeVar("Function", bound=Callable[..., Any])


def first_line(error: BaseException | str, *, limit: int = 300, named: bool = False) -> str:
    """The first non-blank line of `error`'s message, at most `limit` characters, without a trailing full stop:
    deep libraries (torch, onnx, zarr) put pages of context after it, and fc2conv's messages stay a few lines.
    An empty message gives "" (or only the type's name when `named`); `named` prefixes "TypeName: "."""
    text = str(error)
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    if len(line) > limit:
        line = line[:limit - 1].rstrip() + "…"
    line = line.rstrip(".")
    if named and isinstance(error, BaseException):
        return f"{type(error).__name__}: {line}" if line else type(error).__name__
    return line


class ConversionError(ValueError):
    """A model, file or argument fc2conv cannot make convolutional.

    The message names the layer, node, file or flag at fault and says what to do next. Whatever raised it
    left the caller's model and files untouched.
    """


def reported(doing: str) -> Callable[[Function], Function]:
    """Make `function` raise nothing but `ConversionError` and fc2conv's own `ValueError`/`TypeError` for bad
    arguments: anything else (an exception from deep inside torch, onnx or a user's model) becomes a
    `ConversionError` saying what fc2conv was `doing`, with the original chained as its cause."""

    def decorate(function: Function) -> Function:
        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except ConversionError:
                raise
            except (ValueError, TypeError) as e:
                if _raised_by_fc2conv(e):
                    raise
                raise _unexpected(doing, e) from e
            except Exception as e:
                raise _unexpected(doing, e) from e

        return guarded  # type: ignore[return-value]

    return decorate


def _raised_by_fc2conv(error: BaseException) -> bool:
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(_PACKAGE)


def out_of_memory(error: BaseException) -> bool:
    """PyTorch's allocators raise RuntimeError (CPU) or OutOfMemoryError (GPU), numpy MemoryError."""
    return (isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in str(error) or "out of memory" in str(error).lower())


def _unexpected(doing: str, error: Exception) -> ConversionError:
    if out_of_memory(error):
        return ConversionError(
            f"fc2conv ran out of memory while {doing} ({first_line(error, limit=160)}): the model's activations at "
            "input_shape (--input-shape) do not fit. Give the size the model was trained on; the converted model "
            "takes any larger input, and `fc2conv scan` scans images of any size in tiles")
    return ConversionError(
        f"fc2conv failed while {doing}: {first_line(error, named=True)}. "
        "This model does something fc2conv did not foresee; please report it with the model definition"
    )
