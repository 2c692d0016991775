"""`fc2conv scan` on hostile inputs (issue 19, section 2): OME-Zarr metadata that leads out of its store or does not
hold up, TIFF headers that lie about their data, tiles larger than memory, NaN and out-of-range float samples, and
outputs inside inputs. Each is refused by `fc2conv.scan.scan` with a `ConversionError`, and by the command with
exit 2, a message of a few lines naming the file, field or flag at fault, no traceback, no library's log record or
warning, and nothing written at all; float samples outside [0, 1] end in one warning and a complete map."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close
from scan_helpers import ROOT, forge_tags, noise, one_pass, write_tiff
from typer.testing import CliRunner

from fc2conv.cli import EXIT_USAGE, app
from fc2conv.errors import ConversionError
from fc2conv.runtime import scan
from fc2conv.scan import TILE_MEMORY_BUDGET, SampleRangeWarning, tiles
from fc2conv.scan.source import open_source

zarr = pytest.importorskip("zarr")  # the scan extra: Python 3.11 or later
tifffile = pytest.importorskip("tifffile")


IMAGE = noise(203, 171, seed=3)


def _command(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from fc2conv.cli import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin")})


def _listing(directory: Path) -> list[str]:
    """Every file and folder below `directory`, hidden ones too (not following links)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def _arguments(options: dict) -> list[str]:
    """`scan`'s keyword arguments as the command's flags."""
    flags = []
    for name, value in options.items():
        flags += [f"--{name}"] if value is True else [f"--{name}", str(value)]
    return flags


def _as_flags(message: str) -> str:
    """A message pattern naming `scan`'s keywords, as the command names them: `out=X` → `--out X`."""
    return re.sub(r"\b(out|tile|overview|detections)=", r"--\1 ", message)


# --- inputs, each made in the test's directory: (source, extra options) ---------------------------------------------

def _ome(directory: Path, multiscales, name: str = "in.ome.zarr") -> Path:
    """An OME-Zarr group with arrays 0 (3×100×100) and 1 (3×50×50) and the given `multiscales` metadata."""
    group = zarr.open_group(str(directory / name), mode="w", zarr_format=3)
    for level, side in ((0, 100), (1, 50)):
        group.create_array(str(level), shape=(3, side, side), chunks=(3, 32, 32), dtype="uint8")[...] = 128
    group.create_group("labels")
    group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    return directory / name


def _elsewhere(directory: Path) -> Path:
    """An array outside the store, which metadata or links may try to reach."""
    zarr.create_array(str(directory / "elsewhere.zarr"), shape=(3, 100, 100), chunks=(3, 32, 32), dtype="uint8")[
        ...] = 7
    return directory / "elsewhere.zarr"


AXES = ["c", {"name": "y", "unit": "micrometer"}, {"name": "x", "unit": "micrometer"}]


def _datasets(*paths: str) -> list[dict]:
    return [{"path": p, "coordinateTransformations": [{"type": "scale", "scale": [1, 2**i, 2**i]}]}
            for i, p in enumerate(paths)]


def _dataset_up(d: Path):
    _elsewhere(d)
    return _ome(d, [{"axes": AXES, "datasets": _datasets("0", "../elsewhere.zarr")}]), {}


def _dataset_absolute(d: Path):
    return _ome(d, [{"axes": AXES, "datasets": _datasets(str(_elsewhere(d)))}]), {}


def _dataset_linked_out(d: Path):
    source = _ome(d, [{"axes": AXES, "datasets": _datasets("0", "2")}])
    (source / "2").symlink_to(_elsewhere(d), target_is_directory=True)
    return source, {}


def _chunk_linked_out(d: Path):
    """Array 1's metadata is in the store, but one of its chunk files is a link to a file outside."""
    source = _ome(d, [{"axes": AXES, "datasets": _datasets("0", "1")}])
    chunk = next(p for p in (source / "1").rglob("*") if p.is_file() and p.name != "zarr.json")
    (d / "secret").write_bytes(chunk.read_bytes())
    chunk.unlink()
    chunk.symlink_to(d / "secret")
    return source, {}


def _tiff_forged(d: Path, *, described: bool) -> Path:
    """A 200 KB tiled TIFF of a 128×128 image whose header declares 2,000,000 × 2,000,000 pixels; `described`: with
    tifffile's own shape description, which then disagrees with the header (tifffile logs a warning per look)."""
    path = d / "forged.tif"
    tifffile.imwrite(path, noise(128, 128), tile=(64, 64), photometric="rgb", compression="zlib",
                     **({} if described else {"metadata": None}))
    return forge_tags(path, ImageWidth=2_000_000, ImageLength=2_000_000)


def _strips_forged(d: Path) -> Path:
    """Uncompressed strips of a 128-pixel-wide image, declared 100,000 pixels wide: as many strips as declared."""
    tifffile.imwrite(d / "strips.tif", noise(128, 128), rowsperstrip=16, photometric="rgb", metadata=None)
    return forge_tags(d / "strips.tif", ImageWidth=100_000)


def _one_huge_tile(d: Path) -> Path:
    """One 64×64 tile declared 1,048,576 pixels square: the tile count matches, decoding it would take 3 TiB."""
    tifffile.imwrite(d / "tile.tif", noise(64, 64), tile=(64, 64), photometric="rgb", compression="zlib",
                     metadata=None)
    side = 1 << 20
    return forge_tags(d / "tile.tif", ImageWidth=side, ImageLength=side, TileWidth=side, TileLength=side)


def _pages_elsewhere(d: Path) -> Path:
    """An OME-TIFF whose XML says its one plane is the first page of ../b.tif, a file outside its folder."""
    (d / "slide").mkdir()
    tifffile.imwrite(d / "b.tif", IMAGE, tile=(64, 64), photometric="rgb", metadata=None)
    xml = ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
           'UUID="urn:uuid:a"><Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint8" '
           'SizeX="171" SizeY="203" SizeZ="1" SizeC="3" SizeT="1"><Channel ID="Channel:0:0" SamplesPerPixel="3"/>'
           '<TiffData IFD="0" PlaneCount="1"><UUID FileName="../b.tif">urn:uuid:b</UUID></TiffData>'
           "</Pixels></Image></OME>")
    tifffile.imwrite(d / "slide" / "in.ome.tif", IMAGE, tile=(64, 64), photometric="rgb", description=xml,
                     metadata=None)
    return d / "slide" / "in.ome.tif"


def _float_zarr(d: Path, image: np.ndarray, name: str = "float.zarr") -> Path:
    zarr.create_array(str(d / name), shape=image.shape, chunks=(64, 64, 3), dtype=image.dtype)[...] = image
    return d / name


def _with_nan(d: Path) -> Path:
    """Float samples in [0, 1] with NaN and infinity near the end only: found mid-scan, after other tiles."""
    image = np.random.default_rng(1).random((160, 140, 3), dtype=np.float32)
    image[155, 135, 1], image[150, 130, 0] = np.nan, np.inf
    return _float_zarr(d, image)


def _empty_zarr(d: Path, shape: tuple, chunks: tuple) -> Path:
    """A zarr array of that shape with no chunk written: huge, and a few bytes on disk."""
    zarr.create_array(str(d / "empty.zarr"), shape=shape, chunks=chunks, dtype="uint8")
    return d / "empty.zarr"


def _zarr_input(d: Path) -> Path:
    zarr.create_array(str(d / "in.zarr"), shape=IMAGE.shape, chunks=(64, 64, 3), dtype="uint8")[...] = IMAGE
    return d / "in.zarr"


def _linked_input(d: Path):
    source = _zarr_input(d)
    (d / "alias").symlink_to(source, target_is_directory=True)
    return source, {"detections": "alias/found.csv"}


def _input_inside_output(d: Path):
    (d / "old.zarr").mkdir()
    return write_tiff(d / "old.zarr" / "in.tif", IMAGE), {"out": "old.zarr", "force": True}


def _folder_not_a_store(d: Path):
    """An existing folder of someone's files named as --out: --force must not replace it."""
    (d / "notes").mkdir()
    (d / "notes" / "thesis.txt").write_text("years of work")
    return write_tiff(d / "in.tif", IMAGE), {"out": "notes", "force": True}


def _file_not_a_store(d: Path):
    (d / "out.zarr").write_text("a file, not a store")
    return write_tiff(d / "in.tif", IMAGE), {"force": True}


# (name, input and options, what the message says)
HOSTILE = [
    ("--force on a folder that is no store", _folder_not_a_store, r"out=notes exists and is not the store of a scan"),
    ("--force on a file that is no store", _file_not_a_store, r"out=out.zarr exists and is not the store of a scan"),
    ("OME path ..", _dataset_up, r"multiscales\[0\]\.datasets\[1\]\.path '\.\./elsewhere\.zarr' is not a path inside"),
    ("OME absolute path", _dataset_absolute, r"multiscales\[0\]\.datasets\[0\]\.path '/.*' is not a path inside"),
    ("OME dataset linked out", _dataset_linked_out, r"datasets\[1\]\.path '2' leads out of the store"),
    ("OME chunk linked out", _chunk_linked_out, r"datasets\[1\]\.path '1' leads out of the store .*secret"),
    ("OME axes not a list", lambda d: (_ome(d, [{"axes": "cyx", "datasets": _datasets("0")}]), {}),
     r"multiscales\[0\]\.axes must be a non-empty list"),
    ("OME axis without name", lambda d: (_ome(d, [{"axes": ["c", {"unit": "micrometer"}, "x"],
                                                    "datasets": _datasets("0")}]), {}),
     r"multiscales\[0\]\.axes\[1\] must be a name"),
    ("OME unit not text", lambda d: (_ome(d, [{"axes": ["c", {"name": "y", "unit": [1]}, "x"],
                                               "datasets": _datasets("0")}]), {}),
     r"multiscales\[0\]\.axes\[1\]\.unit must be text"),
    ("OME dataset without path", lambda d: (_ome(d, [{"axes": AXES, "datasets": [{"path": "0"}, {"name": "1"}]}]), {}),
     r"multiscales\[0\]\.datasets\[1\]\.path is missing"),
    ("OME no datasets", lambda d: (_ome(d, [{"axes": AXES, "datasets": {}}]), {}),
     r"multiscales\[0\]\.datasets must be a non-empty list"),
    ("OME path names a group", lambda d: (_ome(d, [{"axes": AXES, "datasets": _datasets("labels")}]), {}),
     r"datasets\[0\]\.path 'labels' names a group"),
    ("OME path names nothing", lambda d: (_ome(d, [{"axes": AXES, "datasets": _datasets("7")}]), {}),
     r"datasets\[0\]\.path '7' names no array"),
    ("OME scale of wrong length", lambda d: (_ome(d, [{"axes": AXES, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.5]}]}]}]), {}),
     r"datasets\[0\]\.coordinateTransformations\[0\]\.scale must list 3 positive numbers"),
    ("OME scale of zero", lambda d: (_ome(d, [{"axes": AXES, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0, 0.5]}]}]}]), {}),
     r"datasets\[0\]\.coordinateTransformations\[0\]\.scale must list 3 positive numbers"),
    ("OME multiscales not a list", lambda d: (_ome(d, {"datasets": []}), {}), r"ome\.multiscales must be a non-empty"),
    ("OME dimensions not the axes", lambda d: (_ome(d, [{"axes": ["y", "x"], "datasets": _datasets("0")}]), {}),
     r"datasets\[0\] is an array of shape \(3, 100, 100\), not one dimension per axis"),
    ("TIFF declaring 2,000,000 squared pixels", lambda d: (_tiff_forged(d, described=False), {}),
     r"forged\.tif: its header declares a 2,000,000×2,000,000 image, which takes 976,562,500 tiles .* lists 4"),
    ("TIFF declaring 2,000,000 squared pixels, described", lambda d: (_tiff_forged(d, described=True), {}),
     r"forged\.tif: its header declares a 2,000,000×2,000,000 image"),
    ("TIFF declaring 0 pixels", lambda d: (forge_tags(write_tiff(d / "in.tif", IMAGE, levels=2), ImageWidth=0), {}),
     r"in\.tif: level 0 is 203×0 pixels: it holds no image"),
    ("TIFF strips too short", lambda d: (_strips_forged(d), {}),
     r"strips\.tif: its uncompressed strips \(49,152 bytes\) cannot hold the 38,400,000 bytes"),
    ("TIFF tile of 3 TiB", lambda d: (_one_huge_tile(d), {}), r"tile\.tif stores its image in blocks that take 3,072\.0"
                                                             r" GiB each .* budget of 4 GiB"),
    ("OME-TIFF pages in another file", lambda d: (_pages_elsewhere(d), {}),
     r"in\.ome\.tif: its OME metadata takes pages of level 0 from another file, \S*/b\.tif"),
    ("9 terapixels in 2048-pixel tiles", lambda d: (_empty_zarr(d, (3_000_000, 3_000_000), (4096, 4096)), {}),
     r"tile=2048 cuts the 3,000,000×3,000,000 image into 2,146,225 tiles, more than the 1,048,576"),
    ("tile of 24 PiB", lambda d: (_empty_zarr(d, (20_000, 20_000, 3), (1024, 1024, 3)), {"tile": 100_000_000}),
     r"tile=100000000 \(the image's longer side, 20000\) needs about 12\.9 GiB .* budget of 4 GiB"),
    ("NaN found mid-scan", lambda d: (_with_nan(d), {"tile": 64}),
     r"float\.zarr: 2 samples are NaN or infinite in rows \d+…159, columns \d+…139"),
    ("NaN found mid-scan on workers", lambda d: (_with_nan(d), {"tile": 64, "workers": 2}),
     r"float\.zarr: 2 samples are NaN or infinite in rows"),
    ("out inside the input", lambda d: (_zarr_input(d), {"out": "in.zarr/scores.zarr"}),
     r"out=in\.zarr/scores\.zarr lies inside the input .*in\.zarr"),
    ("overview inside the input", lambda d: (_zarr_input(d), {"overview": "in.zarr/o.png"}),
     r"overview=in\.zarr/o\.png lies inside the input"),
    ("detections inside the input through a link", _linked_input,
     r"detections=alias/found\.csv lies inside the input"),
    ("input inside the output", _input_inside_output, r"out=old\.zarr holds the input"),
]
# Run as processes of their own, where every line the command prints is seen (the Dask workers' too). The rest run
# in this process, faster, where pytest takes the libraries' log records: the test asserts there are none at all.
IN_A_PROCESS = {"OME path ..", "TIFF declaring 2,000,000 squared pixels, described", "tile of 24 PiB",
                "NaN found mid-scan", "NaN found mid-scan on workers", "out inside the input"}


@pytest.mark.parametrize(("name", "make", "message"), HOSTILE, ids=[case[0] for case in HOSTILE])
def test_hostile_input_is_refused_in_a_line_and_writes_nothing(small_onnx, tmp_path, monkeypatch, caplog, name, make,
                                                              message):
    monkeypatch.chdir(tmp_path)
    made = make(tmp_path)
    source, options = made if isinstance(made, tuple) else (made, {})
    source, options = str(source.relative_to(tmp_path)), {"out": "out.zarr", **options}
    before = _listing(tmp_path)
    if "workers" not in options:  # starting a local cluster here too would double the test's time
        with pytest.raises(ConversionError, match=message):
            scan(source, model=small_onnx, **options)
        assert _listing(tmp_path) == before
    args = ["scan", source, "--model", str(small_onnx), *_arguments(options)]
    if name in IN_A_PROCESS:
        done = _command(args, tmp_path)
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    else:
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            done = CliRunner().invoke(app, args)
        code, stdout, stderr = done.exit_code, done.stdout, done.stderr
        assert [r.getMessage() for r in caplog.records] == []
    assert code == EXIT_USAGE, stdout + stderr
    assert stderr.startswith("error: ") and len(stderr.splitlines()) <= 5, stderr
    assert "Traceback" not in stderr and "does not match page shape" not in stderr, stderr
    assert re.search(_as_flags(message), stderr), stderr
    assert stdout == ""
    assert _listing(tmp_path) == before


def test_float_samples_outside_the_unit_range_are_counted_and_warned_of(small_onnx, tmp_path, monkeypatch):
    """37 samples of 1e6 and one of −2 inside the image: the scan completes with exactly that count and range, as a
    `SampleRangeWarning` from the function and one `warning:` line from the command (exit 0)."""
    image = np.random.default_rng(2).random((160, 140, 3), dtype=np.float32)
    image[40:77, 100, 1] = 1e6
    image[150, 30, 2] = -2
    source = _float_zarr(tmp_path, image)
    with pytest.warns(SampleRangeWarning, match=r"float\.zarr: 38 float samples lie outside \[0, 1\] \(from -2 to "
                                                 r"1e\+06\)"):
        result = scan(source, model=small_onnx, out=tmp_path / "api.zarr", tile=64)
    assert (result.outside_unit_range, result.sample_range) == (38, (-2.0, 1e6))
    assert_close(result.scores()[...], one_pass(small_onnx, image))
    monkeypatch.chdir(tmp_path)
    done = _command(["scan", "float.zarr", "--model", str(small_onnx), "--out", "out.zarr", "--tile", "64"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"warning: \S*float\.zarr: 38 float samples lie outside \[0, 1\] \(from -2 to 1e\+06\);.*\n",
                        done.stderr), done.stderr
    assert (tmp_path / "out.zarr").is_dir()
    quiet = _command(["scan", "float.zarr", "--model", str(small_onnx), "--out", "out.zarr", "--force", "-q"], tmp_path)
    assert (quiet.returncode, quiet.stderr) == (0, "")


def test_integer_and_unit_range_samples_give_no_warning(small_onnx, tmp_path, recwarn):
    as_floats = _float_zarr(tmp_path, IMAGE.astype(np.float32) / 255)
    result = scan(as_floats, model=small_onnx, out=tmp_path / "floats.zarr", tile=64)
    low, high = result.sample_range
    assert result.outside_unit_range == 0 and 0 <= low < 0.01 and 0.99 < high <= 1
    result = scan(write_tiff(tmp_path / "in.tif", IMAGE), model=small_onnx, out=tmp_path / "int.zarr", tile=64)
    assert result.outside_unit_range == 0 and result.sample_range is None
    assert not [w for w in recwarn if issubclass(w.category, SampleRangeWarning)]


def test_a_tile_larger_than_the_image_is_the_image(small_onnx, tmp_path):
    source = write_tiff(tmp_path / "in.tif", IMAGE)
    result = scan(source, model=small_onnx, out=tmp_path / "out.zarr", tile=100_000_000)
    assert result.tiles == 1 and result.metadata["tile"] == 203
    assert result.scores().chunks == result.scores().shape
    assert_close(result.scores()[...], one_pass(small_onnx, IMAGE))


def test_the_memory_budget_counts_samples_scores_and_decoding():
    """A 2048-pixel tile (512 cells of stride 4) with a halo of one cell on each side reads (512 − 1 + 2) strides and
    a 32-pixel window, 2,084 pixels a side: 3 uint8 samples and 3 float32 twice per pixel, a 522² map of 10 float32
    scores, 512² owned cells as float32 and as stored (float32), and one decoded block of 1 MiB."""
    plan = tiles.make_plan((10_000, 10_000), stride=(4, 4), window=(32, 32), halo=((1, 1), (1, 1)), tile=2048,
                           cells=(2493, 2493))
    assert plan.largest_read() == (2084, 2084) and plan.chunk_cells == (512, 512)
    need = 2084**2 * (3 + 2 * 4 * 3) + 522**2 * 10 * 4 + 512**2 * 10 * (4 + 4) + 2**20
    options = {"samples": 3, "sample_bytes": 1, "channels": 3, "classes": 10, "score_bytes": 4, "decode_bytes": 2**20}
    tiles.check_memory(plan, 2048, budget=need, **options)
    with pytest.raises(ConversionError, match=r"tile=2048 needs about 0\.1 GiB .* budget of"):
        tiles.check_memory(plan, 2048, budget=need - 1, **options)
    assert TILE_MEMORY_BUDGET == 4 * 2**30


def test_links_inside_the_store_and_a_linked_store_are_read(tmp_path):
    """Links are refused only when they lead out of the store: a store reached through a link, and a dataset that
    is a link to another folder of the same store, are read."""
    source = _ome(tmp_path, [{"axes": AXES, "datasets": _datasets("0", "half")}])
    (source / "half").symlink_to(source / "1", target_is_directory=True)
    (tmp_path / "alias.zarr").symlink_to(source, target_is_directory=True)
    opened = open_source(tmp_path / "alias.zarr", channels=3, level=1)
    assert opened.size == (50, 50) and opened.pixel_size == (2.0, 2.0)
    np.testing.assert_array_equal(opened.read(0, 0, 2, 2), np.full((2, 2, 3), 128, np.uint8))


def test_resume_refuses_a_store_whose_arrays_were_changed(small_onnx, tmp_path):
    source, out = write_tiff(tmp_path / "in.tif", IMAGE), tmp_path / "out.zarr"
    scan(source, model=small_onnx, out=out, tile=64)
    group = zarr.open_group(str(out), mode="r+")
    del group["done"]
    group.create_array("done", shape=(1, 1), chunks=(1, 1), dtype="uint8")
    with pytest.raises(ConversionError, match=r"cannot resume .*out\.zarr: its arrays \(.*, done \(1, 1\)\) are not "
                                              r"this scan's \(.*, done \(3, 3\)\)"):
        scan(source, model=small_onnx, out=out, tile=64, resume=True)


@pytest.mark.parametrize(("settings", "match"), [
    ({"dtype": "float64"}, "dtype= must be float32 or float16"),
    ({"tile": 0}, "tile= must be a positive number"),
    ({"tile": True}, "tile= must be a positive number"),
    ({"context": 8}, "context=8 widens the halo of an approximate=True scan"),
    ({"workers": 2, "scheduler": "tcp://127.0.0.1:8786"}, "give workers= .* or scheduler="),
    ({"threshold": 0}, "threshold= and iou= must be in"),
    ({"backend": "tensorrt"}, "backend= must be one of"),
])
def test_scan_settings_are_checked_once_where_they_are_made(settings, match, tmp_path):
    """`ScanOptions` refuses what needs no file, whoever makes it (the keywords of `scan`, the CLI's flags), and
    `scan_with` takes it whole: an image and a model that do not exist are never looked at."""
    from fc2conv.runtime import ScanOptions, scan_with

    with pytest.raises(ConversionError, match=match):
        ScanOptions(**settings)
    with pytest.raises(ConversionError, match=match):
        scan(tmp_path / "none.tif", model=tmp_path / "none.onnx", out=tmp_path / "out.zarr", **settings)
    options = ScanOptions(tile=64, classes=["1", "2"], overview=str(tmp_path / "o.png"), mask=tmp_path / "m.png")
    assert options.classes == ("1", "2") and options.overview == tmp_path / "o.png"
    assert options.mask == str(tmp_path / "m.png") and options.here
    with pytest.raises(ConversionError, match="no such model file"):
        scan_with(tmp_path / "none.tif", tmp_path / "none.onnx", tmp_path / "out.zarr", options)
    assert _listing(tmp_path) == []
