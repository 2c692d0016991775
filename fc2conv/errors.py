"""The one exception fc2conv raises for models, files and arguments it cannot handle, and the guard that keeps every
other exception inside the public functions."""

from __future__ import annotations

import functools
import os
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["ConversionError", "reported"]

_PACKAGE = os.path.dirname(__file__)
Function = TypeVar("Function", bound=Callable[..., Any])


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


def _unexpected(doing: str, error: Exception) -> ConversionError:
    text = str(error).strip()
    first = text.splitlines()[0][:300].rstrip(".") if text else ""
    return ConversionError(
        f"fc2conv failed while {doing}: {type(error).__name__}: {first}. "
        "This model does something fc2conv did not foresee; please report it with the model definition"
    )
