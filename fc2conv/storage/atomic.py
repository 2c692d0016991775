"""Atomic file output, with no PyTorch import, for every writer in fc2conv (`fc2conv.runtime` and
`convert_onnx` must run where torch is not installed)."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConversionError

__all__ = ["atomic_output", "refuse_existing", "staged_outputs"]


def refuse_existing(path: str | os.PathLike, *, force: bool) -> None:
    """`ConversionError` if `path` exists and `force` is off; writers call it before slow work, too."""
    if os.path.exists(path) and not force:
        raise ConversionError(f"{os.fspath(path)} already exists; pass --force (force=True) to overwrite it")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path` to write to; on success it becomes `path` in one rename.

    The temporary file is fsynced, then `os.replace`d over `path`, so readers see the old file or the
    complete new one, never a partial one, even if the process is killed. If the body raises (including
    KeyboardInterrupt) the temporary file is removed and `path` is untouched. An existing `path` is refused
    unless `force`. `ConversionError` for an existing file, a directory at `path`, a directory that cannot
    be written, and an `OSError` while writing.
    """
    path = Path(path)
    if path.is_dir():
        raise ConversionError(f"{path} is a directory; give a file name to write")
    refuse_existing(path, force=force)
    tmp = _hidden_sibling(path, "tmp")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as e:
        raise ConversionError(f"cannot write to directory {path.parent}: {e.strerror}") from None
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # writers that recreate the file may have made it private
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise ConversionError(f"could not write {path}: {e}") from e
        raise
    _sync_directory(path.parent)


@contextlib.contextmanager
def staged_outputs(paths: list[Path], *, force: bool = False) -> Iterator[list[Path]]:
    """Yield one hidden staging path per target (same directory and suffix); all become targets together.

    For a command that writes several files: each writer writes its staging path (atomically, as usual), and
    only when the body returns are they renamed over their targets, so a failure in the last writer leaves none
    of the targets written or changed. The renames are all or none too: existing targets are set aside first and
    put back if a rename fails or the process is interrupted (SIGTERM, Ctrl-C) between them. If the body raises,
    the staged files are removed. Existing targets are refused unless `force`.
    """
    for path in paths:
        refuse_existing(path, force=force)
    staged = [_hidden_sibling(path, "staged") for path in paths]
    try:
        yield staged
        _rename_all(staged, paths)
    except BaseException as e:
        for stage in staged:
            stage.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise ConversionError(f"could not write {', '.join(map(str, paths))}: {e}") from e
        if isinstance(e, ConversionError):  # a writer named its staging file: name the user's file instead
            message = str(e)
            for stage, path in zip(staged, paths, strict=True):
                message = message.replace(str(stage), str(path))
            raise ConversionError(message) from e
        raise
    for directory in {path.parent for path in paths}:
        _sync_directory(directory)


def _rename_all(staged: list[Path], paths: list[Path]) -> None:
    """Rename every staged file over its target, or none: the old targets wait under hidden names until the last
    rename is done, and come back if any rename fails."""
    aside: dict[Path, Path] = {}
    renamed: list[Path] = []
    try:
        for path in paths:
            if os.path.lexists(path):
                aside[path] = _hidden_sibling(path, "old")
                os.replace(path, aside[path])
        for stage, path in zip(staged, paths, strict=True):
            os.replace(stage, path)
            renamed.append(path)
    except BaseException:
        for path in renamed:
            path.unlink(missing_ok=True)
        for path, old in aside.items():
            os.replace(old, path)
        raise
    for old in aside.values():
        old.unlink(missing_ok=True)


def _hidden_sibling(path: Path, tag: str) -> Path:
    """A new name next to `path`: hidden, unique, and ending in its suffix for writers that check it
    (torch.export.save)."""
    return path.parent / f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.{tag}{path.suffix}"


def _sync_directory(directory: Path) -> None:
    """Make renames in `directory` durable; not possible on every platform and file system."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
