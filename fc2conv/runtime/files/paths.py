"""Where a command writes, checked before any work: every output apart from every other output and from every input.

A command may write several paths (a scan up to six: the store, the unfinished store beside it, the overview, the
detections' CSV and the GeoJSON beside it, and the OME-TIFF). Two of them that are one file under two names make the
second writer destroy the first, and one inside another is destroyed when the outer one is put in place (a store's
final rename replaces a folder with everything in it). An output that is an input, lies inside one (a zarr input is a
folder) or holds one destroys that input. So each pair is compared as the file system will
resolve it: symbolic links and `..` followed, existing files by identity (hard links, bind mounts), and names that
differ only in case on a file system that ignores case. Nothing here writes, not even a probe file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ...errors import InputError

__all__ = ["check_apart", "file_sha256", "named"]

_SAME, _INSIDE, _HOLDS = "same", "inside", "holds"


def check_apart(outputs: dict[str, Path], inputs: dict[str, Path]) -> None:
    """`InputError` naming both when two `outputs` ({name: path}) are the same file or one lies inside the
    other, or when an output is one of the `inputs` ({name: path}, e.g. "image", "model="), lies inside one or
    holds one. Called before anything is read, computed or written; `force` changes none of it. A name is a flag
    ("--heatmap": `--heatmap PATH`), a keyword ("out=": `out=PATH`) or a phrase holding the path ("{} (the GeoJSON
    beside detections=)")."""
    pairs = list(outputs.items())
    for n, (flag, path) in enumerate(pairs):
        for other_flag, other in pairs[n + 1:]:
            relation = _relation(path, other)
            if relation == _SAME:
                raise InputError(f"{named(flag, path)} and {named(other_flag, other)} are the same file; each "
                                 "output needs a path of its own")
            if relation is not None:
                inner, outer = ((flag, path), (other_flag, other)) if relation == _INSIDE else \
                    ((other_flag, other), (flag, path))
                raise InputError(f"{named(*inner)} lies inside {named(*outer)}, which the scan replaces as a "
                                 "whole: name an output outside it")
        for what, given in inputs.items():
            relation = _relation(path, given)
            if relation == _SAME:
                raise InputError(f"{named(flag, path)} is the input {named(what, given)}; writing it would "
                                 "destroy that input: name another output")
            if relation == _INSIDE:
                raise InputError(f"{named(flag, path)} lies inside the input {named(what, given)}; fc2conv "
                                 "never writes into its inputs: name an output outside it")
            if relation == _HOLDS:
                raise InputError(f"{named(flag, path)} holds the input {named(what, given)}; replacing it would "
                                 "destroy that input: name another output")


def named(name: str, path: Path) -> str:
    """`path` as `name` gives it: after a flag or a word, after a keyword's `=`, or where a phrase's `{}` is."""
    if "{}" in name:
        return name.replace("{}", str(path))
    return f"{name}{path}" if name.endswith("=") else f"{name} {path}"


def _relation(a: Path, b: Path) -> str | None:
    """Whether `a` is the same file as `b`, lies inside it, holds it, or none of these (None)."""
    real_a, real_b = Path(os.path.realpath(a)), Path(os.path.realpath(b))
    if _same_existing(real_a, real_b):
        return _SAME
    if _existing_ancestor_is(real_a, real_b):
        return _INSIDE
    if _existing_ancestor_is(real_b, real_a):
        return _HOLDS
    fold = _ignores_case(_nearest_folder(real_a)) or _ignores_case(_nearest_folder(real_b))
    parts_a, parts_b = (tuple(p.casefold() if fold else p for p in real.parts) for real in (real_a, real_b))
    if parts_a == parts_b:
        return _SAME
    if parts_a[:len(parts_b)] == parts_b:
        return _INSIDE
    if parts_b[:len(parts_a)] == parts_a:
        return _HOLDS
    return None


def _same_existing(a: Path, b: Path) -> bool:
    """Both exist and are one file: hard links, or one name in two cases where the file system ignores case."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _existing_ancestor_is(path: Path, folder: Path) -> bool:
    """Whether an existing folder above `path` is `folder` (an existing one), whatever the names that lead there."""
    if not folder.is_dir():
        return False
    return any(_same_existing(parent, folder) for parent in path.parents if parent.exists())


def _nearest_folder(path: Path) -> Path:
    """The deepest existing folder at or above `path` (whose file system decides how names compare)."""
    for folder in (path, *path.parents):
        if folder.is_dir():
            return folder
    return Path(path.anchor or os.sep)


def _ignores_case(folder: Path) -> bool:
    """Whether the file system of the existing `folder` finds names whatever their case (macOS and Windows by
    default, or a casefolded Linux folder): asked of a name it holds, or else of its own name or an ancestor's,
    by looking that name up with its ASCII letters' case swapped. Nothing is written to find out."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.isascii() and entry.name.swapcase() != entry.name:
                    return _same_existing(folder / entry.name, folder / entry.name.swapcase())
    except OSError:
        pass
    for place in (folder, *folder.parents):
        if place.name.isascii() and place.name.swapcase() != place.name:
            return _same_existing(place, place.with_name(place.name.swapcase()))
    return sys.platform in ("darwin", "win32")  # nothing to ask: these ignore case unless set up otherwise


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content, read a MiB at a time: which file a model is, whatever its name."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
