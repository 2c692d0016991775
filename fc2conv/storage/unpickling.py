"""Never run a pickle's code unless the caller trusts the file: checkpoints and `.pt2` programs alike.

`torch.load(weights_only=True)` unpickles tensors and plain containers only, refusing any other global. A
checkpoint is read that way. A `.pt2` archive is harder: `torch.export.load` unpickles some entries (sample
inputs, weights flagged as pickled, legacy payloads) and, when the safe load fails, silently retries with
`weights_only=False`. So `load_program` reads the archive into memory once (what is checked is what is
loaded), tries every `torch.save` payload in it with the weights-only unpickler and refuses the file naming
the first entry that needs more, and then loads the program with every `torch.load` forced to
`weights_only=True`, which catches any pickle the scan did not recognise.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import ConversionError, InputError, first_line, translated

__all__ = ["TRUST_HINT", "load_program", "safe_torch_load"]

TRUST_HINT = "pass --trust-pickle (trust_pickle=True) only if you trust this file"
_ZIP_MAGIC = b"PK\x03\x04"
_TORCH_LOAD = torch.load  # the real one, kept while `_weights_only_everywhere` swaps `torch.load`


def unpickling_refusal(label: str, error: pickle.UnpicklingError, *, hint: str = "") -> InputError:
    """The error for a weights-only load that failed: the global the file needs, or why it cannot be read;
    `hint` is a further way out, appended."""
    text = str(error)
    if "Weights only load failed" not in text:
        return InputError(f"{label} is corrupted or not a PyTorch checkpoint ({first_line(text)})")
    needed = re.search(r"GLOBAL ([\w.]+)", text)
    if needed:
        return InputError(
            f"{label} holds a pickle that needs {needed.group(1)}, not just tensors, and could run code from it; "
            f"{TRUST_HINT}{hint}"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    return InputError(
        f"{label} cannot be read as weights only ({detail.group(1) if detail else 'unknown opcode'}): it is "
        f"corrupted, or a pickle that is not a PyTorch checkpoint; {TRUST_HINT}{hint}"
    )


def safe_torch_load(source: str | os.PathLike | io.BytesIO, label: str, *, hint: str = "", **kwargs: Any) -> Any:
    """`torch.load(source, weights_only=True)`; `InputError` naming `label` when it holds more than weights."""
    try:
        return _TORCH_LOAD(source, map_location="cpu", weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        raise unpickling_refusal(label, e, hint=hint) from None



def load_program(path: str | os.PathLike, *, trust_pickle: bool = False,
                 extra_files: dict[str, str] | None = None) -> torch.export.ExportedProgram:
    """The `torch.export` program saved at `path`, loaded without running pickled code unless `trust_pickle`.

    `extra_files` is filled like `torch.export.load`'s. Raises `InputError` for a missing or unreadable
    file, and for an archive entry that is a pickle needing more than tensors (named, with the global it
    needs), unless `trust_pickle`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if trust_pickle:
        return _export_load(path, path, extra_files)
    data = path.read_bytes()
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise InputError(f"{path} is not a readable torch.export program (not a zip archive: {e})") from None
    with archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()}
    for name, payload in entries.items():
        if payload.startswith(_ZIP_MAGIC) or name.endswith((".pt", ".pkl")):
            _check_payload(path, name, payload)
    with _weights_only_everywhere() as refused:
        try:
            return _export_load(io.BytesIO(data), path, extra_files)
        except ConversionError:
            if refused:  # a pickle the scan did not recognise: name its entry
                payload, error = refused[0]
                name = next((n for n, p in entries.items() if p == payload), "an entry")
                raise unpickling_refusal(f"{path} (entry {name})", error) from None
            raise


def _check_payload(path: Path, name: str, payload: bytes) -> None:
    """Refuse an archive entry that the weights-only unpickler cannot load."""
    # not a torch.save payload at all: torch.export would fail on it too
    with translated(InputError, f"{path} is not a readable torch.export program (entry {name}: ", end=")",
                    named=True):
        safe_torch_load(io.BytesIO(payload), f"{path} (entry {name})")


@contextlib.contextmanager
def _weights_only_everywhere() -> Iterator[list[tuple[bytes, pickle.UnpicklingError]]]:
    """Every `torch.load` in the block runs with `weights_only=True`; yields the refused payloads."""
    refused: list[tuple[bytes, pickle.UnpicklingError]] = []

    @functools.wraps(_TORCH_LOAD)
    def forced(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return _TORCH_LOAD(f, *args, **kwargs)
        except pickle.UnpicklingError as e:
            payload = f.getvalue() if isinstance(f, io.BytesIO) else b""
            refused.append((payload, e))
            raise

    torch.load = forced
    try:
        yield refused
    finally:
        torch.load = _TORCH_LOAD


def _export_load(source: Path | io.BytesIO, path: Path, extra_files: dict[str, str] | None):
    """`torch.export.load` with its logged tracebacks silenced and every failure an `InputError`."""
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # it logs a traceback before trying its legacy format
    try:
        with translated(InputError, f"{path} is not a readable torch.export program (", end=")", named=True):
            return torch.export.load(source, extra_files=extra_files)
    finally:
        logger.setLevel(level)
