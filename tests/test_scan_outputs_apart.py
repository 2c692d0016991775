"""`fc2conv scan`'s outputs (issue 19, section 5), checked against each other and against the inputs before any work.

Refusals: every pair of outputs (`--out`, its unfinished store `.OUT.partial`, `--overview`, `--detections`, the
GeoJSON beside it, `--ome-tiff`) that is one file, by the same name, through `..`, a symbolic link, a hard link, or
a name in another case where the file system ignores case; every output that is an input (the image, the model) by
those names, lies inside one (a zarr input is a folder) or holds one; every output inside another. Each ends, from
`fc2conv.scan.scan` and from the command, before any input is opened: exit 2, at most 5 lines naming both flags,
and every file below the test's folder byte for byte as before.
"""

from __future__ import annotations

import os
import shutil
import sys
from itertools import combinations
from pathlib import Path

import pytest
from scan_helpers import write_tiff
from scan_output_helpers import IMAGE, TILE, as_flags, state
from typer.testing import CliRunner

import fc2conv.scan.driver as scanner  # where scan() looks its helpers up
from fc2conv.cli import EXIT_USAGE, app
from fc2conv.errors import ConversionError
from fc2conv.runtime import scan
from fc2conv.runtime.files import paths
from fc2conv.scan import stitch

zarr = pytest.importorskip("zarr")  # the scan extra: Python 3.11 or later
pytest.importorskip("tifffile")

# The outputs of a scan as `scan` names them (by keyword) and as the command does (by flag): `{}` is the path, else it
# follows. Then the inputs, and a natural name for each output.
LABELS = {"out": ("out=", "--out "),
          "partial": ("{} (the unfinished store of out=)", "{} (the unfinished store of --out)"),
          "overview": ("overview=", "--overview "), "detections": ("detections=", "--detections "),
          "geojson": ("{} (the GeoJSON beside detections=)", "{} (the GeoJSON beside --detections)"),
          "ome_tiff": ("ome_tiff=", "--ome-tiff ")}
INPUTS = {"image": ("image ", "image "), "model": ("model=", "--model ")}
SUFFIXES = {"out": ".zarr", "overview": ".png", "detections": ".csv", "geojson": ".geojson", "ome_tiff": ".ome.tif"}
FILES = ["overview", "detections", "geojson", "ome_tiff"]


def _name(slot: str, stem: str) -> str:
    return f".{stem}.zarr.partial" if slot == "partial" else stem + SUFFIXES[slot]


def _options(slot: str, path: str) -> dict[str, str]:
    """`scan`'s keyword arguments that make output `slot` be `path` (the unfinished store and the GeoJSON are named
    after --out and --detections)."""
    given = Path(path)
    if slot == "partial":
        return {"out": str(given.parent / given.name[1:-len(".partial")])}
    if slot == "geojson":
        return {"detections": str(given.with_suffix(".csv"))}
    return {slot: path}


def _printed(slot: str, options: dict[str, str]) -> str:
    """Output `slot`'s path as a message names it."""
    derived = {"partial": lambda: stitch.partial_path(Path(options["out"])),
               "geojson": lambda: Path(options["detections"]).with_suffix(".geojson")}
    return str(derived[slot]() if slot in derived else Path(options[slot]))


def _named(label: tuple[str, str], path: str) -> tuple[str, str]:
    """`path` as `scan` and as the command name it."""
    return tuple(text.replace("{}", path) if "{}" in text else text + path for text in label)


def _output(slot: str, options: dict[str, str]) -> tuple[str, str]:
    return _named(LABELS[slot], _printed(slot, options))


def _joined(*parts: str | tuple[str, str]) -> tuple[str, str]:
    """A message fragment as `scan` and as the command say it, from parts that are the same in both or not."""
    return tuple("".join(part if isinstance(part, str) else part[k] for part in parts) for k in (0, 1))


@pytest.fixture
def no_input_read(monkeypatch):
    """Opening the model or the image fails the test: a refusal must come before either (so before any tile)."""
    def opened(*args, **kwargs):
        raise AssertionError("an input was opened before the outputs were checked")

    monkeypatch.setattr(scanner, "load", opened)
    monkeypatch.setattr(scanner, "open_source", opened)


def _assert_refused(source: str, model: str, options: dict, *fragments: tuple[str, str]) -> None:
    """Refused by `scan` and by the command alike, naming every fragment (by keyword, by flag), with nothing changed
    below the folder."""
    folder = Path.cwd()
    before = state(folder)
    with pytest.raises(ConversionError) as refused:
        scan(source, model=model, tile=TILE, **options)
    for fragment, _ in fragments:
        assert fragment in str(refused.value), (fragment, str(refused.value))
    done = CliRunner().invoke(app, ["scan", source, "--model", model, "--tile", str(TILE), *as_flags(options)])
    assert done.exit_code == EXIT_USAGE, done.output
    assert done.stderr.startswith("error: ") and len(done.stderr.splitlines()) <= 5, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    for _, fragment in fragments:
        assert fragment in done.stderr, (fragment, done.stderr)
    assert state(folder) == before


# --- outputs against each other -------------------------------------------------------------------------------------

# How the second output names the first's file: the same name, through `..`, through a link to the folder, a hard
# link to it (both exist: --force), or the name in another case (where the file system ignores case).
SPELLINGS = ["same name", "through ..", "through a link", "hard link", "another case"]
# Pairs no arguments can make one file: the unfinished store is named after --out, the GeoJSON after --detections.
IMPOSSIBLE = {("out", "partial"), ("partial", "geojson")}
PAIRS = [(a, b, spelling) for a, b in combinations(LABELS, 2) if (a, b) not in IMPOSSIBLE for spelling in SPELLINGS
         if spelling == "same name" or (a, b) != ("detections", "geojson")]


def _shared(a: str, b: str, stem: str) -> str:
    """A file name both outputs can have."""
    return _name("partial" if "partial" in (a, b) else "geojson" if "geojson" in (a, b) else a, stem)


@pytest.mark.parametrize(("a", "b", "spelling"), PAIRS, ids=[f"{a}={b} by {s}" for a, b, s in PAIRS])
def test_two_outputs_that_are_one_file_are_refused(digits_onnx, tmp_path, monkeypatch, no_input_read, a, b, spelling):
    monkeypatch.chdir(tmp_path)
    write_tiff(tmp_path / "in.tif", IMAGE)
    first = _shared(a, b, "same")
    second = {"same name": first, "through ..": f"sub/../{first}", "through a link": f"alias/{first}",
              "hard link": _shared(a, b, "other"), "another case": _shared(a, b, "SAME")}[spelling]
    (tmp_path / "sub").mkdir()
    (tmp_path / "alias").symlink_to(".")
    options = {"out": "out.zarr", **_options(b, second), **_options(a, first)}  # --detections x.geojson: both
    if spelling == "hard link":
        (tmp_path / first).write_bytes(b"an old output")
        os.link(tmp_path / first, tmp_path / second)
        options["force"] = True
    if spelling == "another case":
        monkeypatch.setattr(paths, "_ignores_case", lambda folder: True)
    _assert_refused("in.tif", str(digits_onnx), options, _output(a, options), _output(b, options))


def test_names_in_another_case_are_two_files_where_the_file_system_tells_case(digits_onnx, tmp_path, monkeypatch):
    """The counterpart of "another case": this file system tells case apart (asked without writing), so the scan
    goes on to open its inputs."""
    monkeypatch.chdir(tmp_path)
    write_tiff(tmp_path / "in.tif", IMAGE)
    assert paths._ignores_case(tmp_path) is (sys.platform in ("darwin", "win32"))
    if paths._ignores_case(tmp_path):
        pytest.skip("this file system ignores case")
    assert state(tmp_path) == {"in.tif": state(tmp_path)["in.tif"]}  # asking wrote nothing
    monkeypatch.setattr(scanner, "load", lambda spec: (_ for _ in ()).throw(KeyboardInterrupt("went on")))
    with pytest.raises(KeyboardInterrupt, match="went on"):
        scan("in.tif", model=digits_onnx, out="out.zarr", overview="map.png", ome_tiff="MAP.png")


# --- outputs inside outputs -----------------------------------------------------------------------------------------

# The GeoJSON lies beside the CSV: where one is inside a folder, so is the other, and the CSV is named first.
NESTED = [(inner, outer, existing) for outer in ("out", "partial") for inner in FILES if inner != "geojson"
          for existing in ("new", "existing", "existing, through a link")]


@pytest.mark.parametrize(("inner", "outer", "existing"), NESTED, ids=[f"{i} in {o}, {e}" for i, o, e in NESTED])
def test_an_output_inside_the_store_is_refused(digits_onnx, tmp_path, monkeypatch, no_input_read, inner, outer,
                                               existing):
    """`--overview out.zarr/x.png` and its kind: the store's final rename would replace it with the folder."""
    monkeypatch.chdir(tmp_path)
    write_tiff(tmp_path / "in.tif", IMAGE)
    folder = _name(outer, "out")
    options: dict = {"out": "out.zarr"}
    if existing != "new":
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "kept.txt").write_text("an old output")
        options["force"] = True
    where = folder
    if existing.endswith("link"):
        (tmp_path / "alias").symlink_to(folder)
        where = "alias"
    options.update(_options(inner, f"{where}/{_name(inner, 'x')}"))
    _assert_refused("in.tif", str(digits_onnx), options,
                    _joined(_output(inner, options), " lies inside ", _output(outer, options)))


@pytest.mark.parametrize("outer", FILES)
def test_the_store_inside_another_output_is_refused(digits_onnx, tmp_path, monkeypatch, no_input_read, outer):
    monkeypatch.chdir(tmp_path)
    write_tiff(tmp_path / "in.tif", IMAGE)
    options = {**_options(outer, _name(outer, "o")), "out": f"{_name(outer, 'o')}/s.zarr"}
    _assert_refused("in.tif", str(digits_onnx), options,
                    _joined(_output("out", options), " lies inside ", _output(outer, options)))


# --- outputs against the inputs -------------------------------------------------------------------------------------

INPUT_SPELLINGS = ["same name", "through ..", "through a link", "hard link"]
AGAINST_INPUTS = [(slot, what, spelling) for slot in LABELS for what in INPUTS
                  for spelling in INPUT_SPELLINGS]


@pytest.mark.parametrize(("slot", "what", "spelling"), AGAINST_INPUTS,
                         ids=[f"{s}={w} by {p}" for s, w, p in AGAINST_INPUTS])
def test_an_output_that_is_an_input_is_refused(digits_onnx, tmp_path, monkeypatch, no_input_read, slot, what,
                                               spelling):
    """Even with --force: writing it would destroy the input."""
    monkeypatch.chdir(tmp_path)
    source, model = "in.tif", "model.onnx"
    given = _name(slot, "given")  # the input, named as this output would be
    if what == "image":
        write_tiff(tmp_path / given, IMAGE)
        source = given
    else:
        shutil.copy(digits_onnx, tmp_path / given)
        model = given
    for name in {source, model} - {given}:
        (write_tiff(tmp_path / name, IMAGE) if name == source else shutil.copy(digits_onnx, tmp_path / name))
    (tmp_path / "sub").mkdir()
    (tmp_path / "alias").symlink_to(".")
    output = {"same name": given, "through ..": f"sub/../{given}", "through a link": f"alias/{given}",
              "hard link": _name(slot, "linked")}[spelling]
    if spelling == "hard link":
        os.link(tmp_path / given, tmp_path / output)
    options = {"out": "out.zarr", **_options(slot, output), "force": True}
    _assert_refused(source, model, options,
                    _joined(_output(slot, options), " is the input ", _named(INPUTS[what], given)))


# The unfinished store lies beside --out, the GeoJSON beside the CSV: where one is inside, so is the other.
@pytest.mark.parametrize("slot", [slot for slot in LABELS if slot not in ("partial", "geojson")])
def test_an_output_inside_a_zarr_input_is_refused(digits_onnx, tmp_path, monkeypatch, no_input_read, slot):
    monkeypatch.chdir(tmp_path)
    zarr.create_array("in.zarr", shape=IMAGE.shape, chunks=(64, 64), dtype="uint8")[...] = IMAGE
    options = {"out": "out.zarr", **_options(slot, f"in.zarr/{_name(slot, 'x')}")}
    _assert_refused("in.zarr", str(digits_onnx), options,
                    _joined(_output(slot, options), " lies inside the input image in.zarr"))


@pytest.mark.parametrize(("slot", "what"), [(slot, what) for slot in LABELS for what in INPUTS])
def test_an_output_holding_an_input_is_refused(digits_onnx, tmp_path, monkeypatch, no_input_read, slot, what):
    """Replacing the folder (with --force) would destroy the input in it."""
    monkeypatch.chdir(tmp_path)
    holder = _name(slot, "holder")
    (tmp_path / holder).mkdir()
    source = f"{holder}/in.tif" if what == "image" else "in.tif"
    model = f"{holder}/model.onnx" if what == "model" else str(digits_onnx)
    write_tiff(tmp_path / source, IMAGE)
    if what == "model":
        shutil.copy(digits_onnx, tmp_path / model)
    options = {"out": "out.zarr", **_options(slot, holder), "force": True}
    _assert_refused(source, model, options, _joined(_output(slot, options), " holds the input ",
                                                    _named(INPUTS[what], source if what == "image" else model)))


def test_a_file_output_that_is_a_folder_is_refused_even_with_force(digits_onnx, tmp_path, monkeypatch, no_input_read):
    monkeypatch.chdir(tmp_path)
    write_tiff(tmp_path / "in.tif", IMAGE)
    (tmp_path / "map.png").mkdir()
    _assert_refused("in.tif", str(digits_onnx), {"out": "out.zarr", "overview": "map.png", "force": True},
                    ("overview=map.png is a directory", "--overview map.png is a directory"))
