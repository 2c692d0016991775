"""The exceptions fc2conv raises for models, files and arguments it cannot handle, the one way a foreign exception
becomes one of them (`translated`), and the guard that keeps every other exception inside the public functions.

Every error fc2conv raises on purpose is an `Fc2convError` (a `ValueError`); what failed names the class:

- `ConversionError`: a model fc2conv cannot convert (analysis, tracing, conversion, export);
- `InputError`: a file, array, argument or metadata fc2conv cannot use (images, .npy arrays, checkpoints, ONNX files
  and their metadata, slides, keyword and CLI arguments);
- `ScanError`: a scan's store, tiles, masks, resume or outputs;
- `BackendError`: a runtime or optional library failing to load or run a model (onnxruntime, OpenVINO), or
  missing.

Catch `Fc2convError` for "anything fc2conv refused". For compatibility, in this release `InputError`, `ScanError`
and `BackendError` are also subclasses of `ConversionError` (so code that catches `ConversionError` around `run`,
`scan` or `export_onnx` still catches what it caught); in a later release they stop being `ConversionError`s and
derive from `Fc2convError` only. The CLI maps every `Fc2convError` to exit code 2 with its message.
"""

from __future__ import annotations

import functools
import os
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = [
    "BackendError", "ConversionError", "Fc2convError", "InputError", "ScanError", "first_line", "out_of_memory",
    "reported", "translated",
]

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


class Fc2convError(ValueError):
    """What fc2conv raises for a model, file or argument it cannot handle: catch this one.

    The message names the layer, node, file or flag at fault and says what to do next. Whatever raised it
    left the caller's model and files untouched.
    """


class ConversionError(Fc2convError):
    """A model fc2conv cannot make convolutional: analysis, tracing, conversion, export. (In this release also the
    base of `InputError`, `ScanError` and `BackendError`; see the module docstring.)"""


class InputError(ConversionError):
    """A file, array, argument or metadata fc2conv cannot use: an image, a .npy array, a checkpoint, an ONNX file
    or its metadata, a slide, a keyword or CLI argument."""


class ScanError(ConversionError):
    """A scan's store, tiles, masks, resume or outputs."""


class BackendError(ConversionError):
    """A runtime or optional library that fc2conv needs is missing, or fails to load or run a model (onnxruntime,
    OpenVINO, Dask, napari)."""


@contextmanager
def translated(error: type[Fc2convError], prefix: str, *types: type[BaseException], end: str = "",
               named: bool = False, limit: int = 300) -> Iterator[None]:
    """Turn an exception of `types` (any `Exception` when none are given) raised in the block into `error` with the
    message `prefix + first_line(e) + end`; fc2conv's own errors pass through unchanged.

    Always chained `from None`: the message already quotes the first line of the foreign one, and what follows it
    (pages of torch, onnx or zarr context, the library's own frames) is what fc2conv's messages leave out, so the
    traceback shows fc2conv's error alone. The original stays reachable as `__context__` for a debugger.
    (Unforeseen failures, where the foreign traceback is the evidence, go through `reported`, which chains
    `from e`.)"""
    caught = types or (Exception,)
    try:
        yield
    except Fc2convError:
        raise
    except caught as e:
        raise error(f"{prefix}{first_line(e, named=named, limit=limit)}{end}") from None


def reported(doing: str) -> Callable[[Function], Function]:
    """Make `function` raise nothing but `Fc2convError` and fc2conv's own `ValueError`/`TypeError` for bad
    arguments: anything else (an exception from deep inside torch, onnx or a user's model) becomes a
    `ConversionError` saying what fc2conv was `doing`, with the original chained as its cause."""

    def decorate(function: Function) -> Function:
        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except Fc2convError:
                raise
            except (ValueError, TypeError) as e:
                if _raised_by_fc2conv(e):
                    raise
                raise _unexpected(doing, e) from e
            except Exception as e:  # the guard exists to catch what nobody foresaw
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
