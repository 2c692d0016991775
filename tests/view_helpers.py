"""Shared helpers for the `fc2conv view` refusal tests (tests/test_view_store_refusals.py,
tests/test_view_input_refusals.py, tests/test_view_flag_refusals.py): one real scan to corrupt copies of, running
`fc2conv view` with no display and napari unimportable under a deadline, and checking that a refusal is clean and
changed nothing.

The fixtures the three modules share (`pristine`, `copy`, `view`, in tests/conftest.py) are built by `make_pristine`,
`copy_of` and `view_runner`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import assert_clean_refusal, invoke
from scan_helpers import noise, write_tiff

from fc2conv.runtime import scan

HEIGHT, WIDTH = 1060, 200  # the digits CNN's map: 258 × 43 cells, so the pyramid has two levels
DROP = object()  # a field to remove rather than set
NAN, INF = float("nan"), float("inf")


@dataclass(frozen=True)
class Copy:
    """A copy of the scanned directory: the store, the slide it read and the detections it wrote, each recorded in
    the store by its path here."""

    folder: Path

    @property
    def store(self) -> Path:
        return self.folder / "slide.zarr"

    @property
    def slide(self) -> Path:
        return self.folder / "slide.tif"

    @property
    def csv(self) -> Path:
        return self.folder / "found.csv"

    @property
    def geojson(self) -> Path:
        return self.folder / "found.geojson"


def make_pristine(tmp_path_factory) -> Path:
    """A folder with a finished scan (slide.zarr) of a two-level slide (slide.tif) by the digits CNN, with found.csv
    and found.geojson."""
    from scan_helpers import export

    folder = tmp_path_factory.mktemp("view-pristine")
    digits_onnx = export("digits", folder)
    slide = write_tiff(folder / "slide.tif", noise(HEIGHT, WIDTH, channels=1), levels=2, tile=64)
    scan(slide, model=digits_onnx, out=folder / "slide.zarr", tile=512, detections=folder / "found.csv")
    return folder


def copy_of(pristine: Path, tmp_path: Path) -> Copy:
    """A copy of `make_pristine`'s folder in `tmp_path`, whose store records the paths of the copy."""
    made = Copy(tmp_path / "scan")
    shutil.copytree(pristine, made.folder, symlinks=True)
    set_field(made.store / "zarr.json", "attributes.fc2conv.source.path", str(made.slide))
    set_field(made.store / "zarr.json", "attributes.fc2conv.outputs", {"detections": str(made.csv),
                                                                       "geojson": str(made.geojson)})
    return made


class _Hung(BaseException):
    """`fc2conv view` ran past its deadline: a read that blocks (a pipe opened as a file)."""


@contextlib.contextmanager
def _deadline(seconds: int):
    def expire(signum, frame):
        raise _Hung(f"fc2conv view still ran after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def view_runner(monkeypatch):
    """`fc2conv view ARGS` in this process, with no display and napari unimportable."""
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setitem(sys.modules, "napari", None)

    def run(*args):
        with _deadline(60):
            return invoke("view", *args)

    return run


def set_field(document: Path, field: str, value) -> None:
    """Set a dotted field of a JSON file ("attributes.fc2conv.stride", list items by index), or remove it (DROP)."""
    data = json.loads(document.read_text())
    *parents, last = field.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    key = int(last) if isinstance(node, list) else last
    if value is DROP:
        del node[key]
    else:
        node[key] = value
    document.write_text(json.dumps(data))


def tree(folder: Path) -> dict[str, tuple]:
    """Every entry below `folder`: its kind, and a file's digest or a link's target (pipes are never opened)."""
    found = {}
    for parent, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(parent) / name
            mode = path.lstat().st_mode
            found[str(path.relative_to(folder))] = (
                ("link", os.readlink(path)) if stat.S_ISLNK(mode) else
                ("file", hashlib.sha256(path.read_bytes()).hexdigest()) if stat.S_ISREG(mode) else
                ("folder",) if stat.S_ISDIR(mode) else ("other", stat.S_IFMT(mode)))
    return found


def refused(copy: Copy, view, corrupt, fragments) -> None:
    """`corrupt` the copy, run `fc2conv view` on the arguments it gives: a clean refusal naming every fragment, with
    every entry of the copy as before."""
    args = corrupt(copy)
    before = tree(copy.folder)
    result = view(*args)
    assert_clean_refusal(result, *fragments)
    assert tree(copy.folder) == before, "fc2conv view wrote or changed a file"


def cases(table):
    """Parametrize `corrupt, fragments` by a table of (id, corrupt, fragments)."""
    return pytest.mark.parametrize(("corrupt", "fragments"), [case[1:] for case in table],
                                   ids=[case[0] for case in table])


# Corruptions of the store that more than one module uses.

def first_chunk(store: Path, level: int = 0) -> str:
    chunk = next(p for p in sorted((store / "probabilities" / str(level) / "c").rglob("*")) if p.is_file())
    return str(chunk.relative_to(store))


def linked_out(entry):
    """Move `entry` of the store (a name, or a function of the store giving one) out of it and link it back."""
    def corrupt(c: Copy):
        name = entry(c.store) if callable(entry) else entry
        outside = c.folder / "outside" / name
        outside.parent.mkdir(parents=True, exist_ok=True)
        os.replace(c.store / name, outside)
        os.symlink(outside, c.store / name)
        return [c.store]

    return corrupt


def store_field(name: str, value):
    """Set (or DROP) field `name` of the store's fc2conv attributes."""
    def corrupt(c: Copy):
        set_field(c.store / "zarr.json", f"attributes.fc2conv.{name}", value)
        return [c.store]

    return corrupt


def pyramid_field(field: str, value, document: str = "zarr.json"):
    """Set (or DROP) `field` of a metadata document of the probability pyramid."""
    def corrupt(c: Copy):
        set_field(c.store / "probabilities" / document, field, value)
        return [c.store]

    return corrupt
