"""Atomic file output, with no PyTorch import, for every writer in fc2conv (`fc2conv.runtime` and
`convert_onnx` must run where torch is not installed)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path

from ...errors import ConversionError, InputError

__all__ = ["atomic_output", "refuse_existing", "staged_outputs"]


def refuse_existing(path: str | os.PathLike, *, force: bool) -> None:
    """`InputError` if `path` exists and `force` is off; writers call it before slow work, too."""
    if os.path.exists(path) and not force:
        raise InputError(f"{os.fspath(path)} already exists; pass --force (force=True) to overwrite it")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path` to write to; on success it becomes `path` in one rename.

    The temporary file is fsynced, then `os.replace`d over `path`, so readers see the old file or the
    complete new one, never a partial one, even if the process is killed. If the body raises (including
    KeyboardInterrupt) the temporary file is removed and `path` is untouched. An existing `path` is refused
    unless `force`. `InputError` for an existing file, a directory at `path`, a directory that cannot
    be written, and an `OSError` while writing.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory; give a file name to write")
    refuse_existing(path, force=force)
    tmp = _hidden_sibling(path, "tmp")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as e:
        raise InputError(f"cannot write to directory {path.parent}: {e.strerror}") from None
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # writers that recreate the file may have made it private
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise InputError(f"could not write {path}: {e}") from e
        raise
    _sync_directory(path.parent)


@contextlib.contextmanager
def staged_outputs(paths: list[Path], *, force: bool = False,
                   prepared: Mapping[Path, Path] | None = None) -> Iterator[list[Path]]:
    """Yield one hidden staging path per target (same directory and suffix); all become targets together.

    For a command that writes several files: each writer writes its staging path (atomically, as usual), and
    only when the body returns are they renamed over their targets, so a failure in the last writer leaves none
    of the targets written or changed. The renames are all or none too: existing targets are set aside first and
    put back if a rename fails or the process is interrupted (SIGTERM, Ctrl-C) between them. If the body raises,
    the staged files are removed. Existing targets are refused unless `force`.

    `prepared`: outputs the caller staged itself, {staging path: target} (a file, or a folder such as a store built
    under a hidden name), put in place in the same all-or-none commit. The caller owns them: an existing target is
    replaced (the caller decided whether it may be) and comes back if the commit fails, and on any failure the
    staging path is left as it was (moved back if it had been renamed), for the caller to keep or remove.
    """
    for path in paths:
        refuse_existing(path, force=force)
    staged = [_hidden_sibling(path, "staged") for path in paths]
    moves = [*zip(staged, paths, strict=True), *(prepared or {}).items()]
    try:
        yield staged
        for stage in staged:  # the writers' data on disk before any name points at it
            _fsync_file(stage)
        _rename_all(moves)
    except BaseException as e:
        for stage in staged:
            stage.unlink(missing_ok=True)
        if isinstance(e, OSError | ConversionError):  # a writer named a staging path: name the user's file instead
            message = str(e)
            for stage, path in moves:
                message = message.replace(str(stage), str(path))
            if isinstance(e, OSError):
                named = {str(getattr(e, field, None)) for field in ("filename", "filename2")}
                failed = [path for stage, path in moves if named & {str(stage), str(path)}] or \
                    [path for _, path in moves]  # the file the error names, else every target
                message = f"could not write {', '.join(map(str, failed))}: {message}"
            raise InputError(message) from e
        raise
    for directory in {path.parent for _, path in moves}:
        _sync_directory(directory)


def _rename_all(moves: list[tuple[Path, Path]]) -> None:
    """Rename every staged file or folder over its target, or none: the old targets wait under hidden names until
    the last rename is done, and come back, the staged ones back to their staging names, if any rename fails. Ctrl-C
    and SIGTERM are held while they run: one that comes undoes the renames, then acts (so a second one cannot cut
    the undoing short either)."""
    aside: dict[Path, Path] = {}
    renamed: list[tuple[Path, Path]] = []
    with _signals_held() as held:
        try:
            for _, path in moves:
                if os.path.lexists(path):
                    aside[path] = _hidden_sibling(path, "old")
                    os.replace(path, aside[path])
            for stage, path in moves:
                os.replace(stage, path)
                renamed.append((stage, path))
        except BaseException:
            _undo(renamed, aside)
            raise
        if held:
            _undo(renamed, aside)
            return  # the held signal acts as the block ends
    for old in aside.values():  # committed: what was replaced goes, as far as it can
        _remove(old)


def _undo(renamed: list[tuple[Path, Path]], aside: dict[Path, Path]) -> None:
    for stage, path in reversed(renamed):  # each step on its own: one that fails must not strand the others
        with contextlib.suppress(OSError):
            os.replace(path, stage)
    for path, old in aside.items():
        with contextlib.suppress(OSError):
            os.replace(old, path)


@contextlib.contextmanager
def _signals_held() -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM back while the block runs (yielding those that came), then let the first act as it
    would have: its Python handler is called right there (KeyboardInterrupt, or the CLI's exit), or the default
    action taken. Handlers can only be set in the main thread; elsewhere nothing is held."""
    held: list[int] = []
    previous: dict[int, object] = {}
    try:
        for number in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(number)
            if handler is not None:  # None: set outside Python, and cannot be put back
                signal.signal(number, lambda signum, frame: held.append(signum))
                previous[number] = handler
    except ValueError:  # not the main thread
        pass
    try:
        yield held
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if held:
            handler = previous[held[0]]
            if callable(handler):
                handler(held[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(held[0])


def _remove(path: Path) -> None:
    """Remove a file, a link or a whole folder; what cannot be removed stays (it is hidden, and nothing uses it)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
