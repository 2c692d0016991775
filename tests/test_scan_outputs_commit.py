"""`fc2conv scan`'s outputs (issue 19, section 5) put in place all together or not at all.

Failures at the end, once every tile is done (a writer's error, a full disk, a failing rename in the commit,
Ctrl-C, SIGTERM), each injected at every step: every path is as it was before the command (a store replaced with
--force comes back), no staging file or folder is left, and a resumed store keeps its tiles where it was. The commit
itself (`fc2conv.runtime.files.atomic.staged_outputs`) takes a prepared folder into the same all-or-none rename.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from scan_helpers import ROOT, write_tiff
from scan_output_helpers import IMAGE, TILE, as_flags, state
from typer.testing import CliRunner

import fc2conv.runtime.files.atomic as atomic
import fc2conv.scan.driver as scanner  # where scan() looks its helpers up
from fc2conv.cli import EXIT_USAGE, app
from fc2conv.errors import ConversionError
from fc2conv.runtime import scan
from fc2conv.runtime.files.atomic import staged_outputs
from fc2conv.scan import finish, ngff, outputs, qupath, stitch

zarr = pytest.importorskip("zarr")  # the scan extra: Python 3.11 or later
pytest.importorskip("tifffile")


# --- failures at the end --------------------------------------------------------------------------------------------

EXTRAS = {"overview": "o.png", "detections": "d.csv", "ome_tiff": "m.ome.tif"}
TARGETS = ["out.zarr", "o.png", "d.csv", "d.geojson", "m.ome.tif"]
# What a scenario's folder holds before the failing scan, and the options of that scan.
SCENARIOS = {
    "new": {},
    "replaced": {"force": True},  # an older store and older files at every output
    "resumed unfinished": {"resume": True, "force": True},  # .out.zarr.partial, one tile still to compute
    "resumed finished": {"resume": True, "force": True},  # a finished out.zarr
}  # and for all but "new", older files at the other outputs


def _make(folder: Path, scenario: str, model: Path) -> None:
    """`scenario`'s folder: in.tif and model.onnx, and what the scan to fail finds at its outputs."""
    write_tiff(folder / "in.tif", IMAGE)
    shutil.copy(model, folder / "model.onnx")
    if scenario == "new":
        return
    with pytest.MonkeyPatch.context() as patched:
        if scenario == "resumed unfinished":  # killed once every tile was computed, before its end
            patched.setattr(scanner, "finish", lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt) if scenario == "resumed unfinished" else contextlib.nullcontext():
            scan(folder / "in.tif", model=folder / "model.onnx", out=folder / "out.zarr",
                 tile=64 if scenario == "replaced" else TILE)  # replaced: another layout, and another token
    if scenario == "resumed unfinished":
        zarr.open_array(str(folder / ".out.zarr.partial" / "done"), mode="r+")[0, 0] = 0  # a tile left to compute
    for target in TARGETS[1:]:
        (folder / target).write_bytes(b"an older " + target.encode())


@pytest.fixture(scope="module")
def templates(digits_onnx, tmp_path_factory):
    """Folders to copy for the scenarios that do not depend on where they are (a resumed store records its
    input's path, so those are made in place)."""
    made = {}
    for scenario in ("new", "replaced"):
        made[scenario] = tmp_path_factory.mktemp(scenario)
        _make(made[scenario], scenario, digits_onnx)
    return made


@pytest.fixture
def scenario_in(templates, digits_onnx, tmp_path, monkeypatch):
    """`scenario_in(name)`: the scenario's folder, made the current directory."""
    def make(scenario: str) -> Path:
        folder = tmp_path / "work"
        if scenario in templates:
            shutil.copytree(templates[scenario], folder, symlinks=True)
        else:
            folder.mkdir()
            _make(folder, scenario, digits_onnx)
        monkeypatch.chdir(folder)
        return folder

    return make


def _fails(kind: str, filename: str | None = None) -> BaseException:
    return KeyboardInterrupt() if kind == "Ctrl-C" else OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)


def _inject(monkeypatch, step: str, kind: str) -> None:
    """Make the end of the scan fail at `step`: a writer (after it wrote: its staging file is whole), or the commit's
    rename onto a target ("→ d.csv"), or its setting aside of an older target ("aside d.csv")."""
    writers = {"marking the store complete": (stitch, "mark_complete"), "the OME-Zarr pyramid": (ngff, "write"),
               "the overview": (finish, "overview"), "the CSV": (outputs, "write_csv"),
               "the GeoJSON": (outputs, "write_geojson"), "the OME-TIFF": (qupath, "write_ome_tiff")}
    if step in writers:
        module, name = writers[step]
        real = getattr(module, name)

        def written_then_failed(*args, **kwargs):
            real(*args, **kwargs)
            raise _fails(kind, str(next(a for a in reversed(args) if isinstance(a, Path))))

        monkeypatch.setattr(module, name, written_then_failed)
        return
    how, target = step.split(" ")
    replace, failed = os.replace, []

    def failing_rename(source, destination):
        """The first rename of that step fails (the rollback's renames then succeed)."""
        moved, to = Path(source).name, Path(destination).name
        if not failed and ((to == target and moved.startswith(".")) if how == "→" else
                           (moved == target and to.startswith("."))):
            failed.append(source)
            raise _fails(kind, str(source))
        replace(source, destination)

    monkeypatch.setattr(atomic.os, "replace", failing_rename)


def _failing_scan(step: str, kind: str, scenario: str):
    expected = KeyboardInterrupt if kind == "Ctrl-C" else ConversionError
    with pytest.raises(expected) as failed:
        scan("in.tif", model="model.onnx", out="out.zarr", tile=TILE, **EXTRAS, **SCENARIOS[scenario])
    return failed.value


def _assert_as_before(folder: Path, before: dict[str, str], scenario: str) -> None:
    """Every path as before; a resumed store changed only inside, keeping all its tiles (so --resume finishes it
    without computing one)."""
    store = {"resumed unfinished": ".out.zarr.partial", "resumed finished": "out.zarr"}.get(scenario)
    after = state(folder)
    if store is None:
        assert after == before
        return
    assert {k: v for k, v in after.items() if not k.startswith(store + "/")} == \
        {k: v for k, v in before.items() if not k.startswith(store + "/")}
    assert zarr.open_array(str(folder / store / "done"), mode="r")[...].all()


WRITER_STEPS = ["marking the store complete", "the OME-Zarr pyramid", "the overview", "the CSV", "the GeoJSON",
                "the OME-TIFF"]
COMMIT_STEPS = [f"→ {target}" for target in TARGETS]
ASIDE_STEPS = [f"aside {target}" for target in TARGETS]
AT_THE_END = ([(step, "new", "OSError") for step in WRITER_STEPS + COMMIT_STEPS]
              + [(step, "replaced", kind) for step in WRITER_STEPS + COMMIT_STEPS + ASIDE_STEPS
                 for kind in ("OSError", "Ctrl-C")]
              + [(step, scenario, kind) for scenario in ("resumed unfinished", "resumed finished")
                 for step, kind in (("the OME-Zarr pyramid", "OSError"), ("the OME-TIFF", "OSError"),
                                    ("→ out.zarr", "Ctrl-C"), ("→ m.ome.tif", "Ctrl-C"), ("aside o.png", "OSError"))
                 if not (scenario == "resumed finished" and step == "→ out.zarr")])


@pytest.mark.parametrize(("step", "scenario", "kind"), AT_THE_END, ids=[" ".join(case) for case in AT_THE_END])
def test_a_failure_at_the_end_leaves_every_path_as_it_was(scenario_in, monkeypatch, step, scenario, kind):
    folder = scenario_in(scenario)
    before = state(folder)
    with monkeypatch.context() as patched:
        _inject(patched, step, kind)
        error = _failing_scan(step, kind, scenario)
    if kind == "OSError":
        kept = "keeps its tiles: run again with resume=True" if scenario.startswith("resumed") else \
            "this scan's store was removed"
        named = {"marking the store complete": "finish out.zarr", "the OME-Zarr pyramid": "finish out.zarr",
                 "the overview": "write o.png", "the CSV": "write d.csv", "the GeoJSON": "write d.geojson",
                 "the OME-TIFF": "write m.ome.tif"}.get(step, f"write {step.split(' ')[1]}")
        said = str(error)
        assert said.startswith(f"could not {named}: ") and "No space left on device" in said, said
        assert "; no output was changed, and " in said and said.endswith(kept) and "\n" not in said, said
    _assert_as_before(folder, before, scenario)
    if scenario.startswith("resumed"):  # and --resume finishes it, computing no tile
        finished = scan("in.tif", model="model.onnx", out="out.zarr", tile=TILE, **EXTRAS, resume=True, force=True)
        assert finished.computed == 0 and sorted(p.name for p in folder.iterdir()) == sorted(
            ["in.tif", "model.onnx", *TARGETS])


def test_a_failing_writer_is_one_line_from_the_command_naming_its_file(scenario_in, monkeypatch):
    folder = scenario_in("replaced")
    before = state(folder)
    _inject(monkeypatch, "the OME-TIFF", "OSError")
    done = CliRunner().invoke(app, ["scan", "in.tif", "--model", "model.onnx", "--out", "out.zarr", "--tile",
                                    str(TILE), *as_flags({**EXTRAS, "force": True})])
    assert done.exit_code == EXIT_USAGE, done.output
    assert done.stderr.startswith("error: could not write m.ome.tif: ") and len(done.stderr.splitlines()) <= 5
    assert "No space left on device" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert state(folder) == before


# A scan whose end is interrupted by SIGTERM (the command turns it into an exit, as for Ctrl-C) while the OME-TIFF is
# written, or between two renames of the commit: the child prints where it was, then signals itself.
SIGTERM_AT_THE_END = """
import os, signal, sys
from pathlib import Path
import fc2conv.scan.qupath as qupath
import fc2conv.runtime.files.atomic as atomic

def terminated():
    print(sorted(os.listdir(".")), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

if sys.argv[1] == "writer":
    def write_ome_tiff(*args):
        terminated()
    qupath.write_ome_tiff = write_ome_tiff
else:
    replace = os.replace
    def rename(source, destination):
        if Path(destination).name == "d.csv" and Path(source).name.startswith("."):
            terminated()
        replace(source, destination)
    atomic.os.replace = rename
from fc2conv.cli import main
sys.argv[1:] = sys.argv[2:]
main()
"""


@pytest.mark.parametrize("where", ["writer", "commit"])
def test_sigterm_at_the_end_leaves_every_path_as_it_was(scenario_in, where):
    folder = scenario_in("replaced")
    before = state(folder)
    done = subprocess.run([sys.executable, "-c", SIGTERM_AT_THE_END, where, "scan", "in.tif", "--model", "model.onnx",
                           "--out", "out.zarr", "--tile", str(TILE), *as_flags({**EXTRAS, "force": True})], cwd=folder,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1].replace("'", '"'))
    assert ".out.zarr.partial" in seen and any(".staged." in name for name in seen)  # when the signal came
    if where == "commit":
        assert any(".old." in name for name in seen)  # the older outputs set aside, one new one in place
    assert state(folder) == before


def test_staged_outputs_commits_a_prepared_folder_with_the_files(tmp_path, monkeypatch):
    """`prepared` folders join the all-or-none commit: an older folder target comes back when a later rename fails,
    the prepared one is left at its staging name for its owner; on success the older one is gone."""
    store, staging, overview = tmp_path / "out.zarr", tmp_path / ".out.zarr.partial", tmp_path / "o.png"
    for folder, text in ((store, "older"), (staging, "newer")):
        folder.mkdir()
        (folder / "data").write_text(text)
    overview.write_text("older")
    before = state(tmp_path)
    replace = os.replace

    def last_rename_fails(source, destination):
        if Path(destination) == store and Path(source) == staging:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(source), None, str(destination))
        replace(source, destination)

    with monkeypatch.context() as patched:
        patched.setattr(atomic.os, "replace", last_rename_fails)
        with pytest.raises(ConversionError, match=r"could not write \S*out\.zarr: .*No space left"), \
                staged_outputs([overview], force=True, prepared={staging: store}) as (staged,):
            staged.write_text("newer")
    assert state(tmp_path) == before
    with staged_outputs([overview], force=True, prepared={staging: store}) as (staged,):
        staged.write_text("newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png", "out.zarr"]
    assert (store / "data").read_text() == overview.read_text() == "newer"
