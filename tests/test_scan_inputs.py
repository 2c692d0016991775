"""What `fc2conv scan` reads (TIFF levels, zarr, OME-Zarr, OpenSlide, PNG) and what it refuses: through the
`fc2conv scan` command, a hostile input exits 2 with a message naming it, and writes nothing at all."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close
from PIL import Image
from scan_helpers import noise, one_pass, write_tiff
from typer.testing import CliRunner

from fc2conv.cli import EXIT_OK, EXIT_USAGE, app
from fc2conv.errors import ConversionError
from fc2conv.runtime import scan
from fc2conv.scan.source import open_source

zarr = pytest.importorskip("zarr")  # the scan extra: Python 3.11 or later


IMAGE = noise(203, 171, seed=3)


def _scanned(source, model: Path, tmp_path: Path, **options) -> np.ndarray:
    return scan(source, model=model, out=tmp_path / "out.zarr", tile=64, force=True, **options).scores()[...]


@pytest.mark.parametrize("subifds", [True, False], ids=["subifds", "reduced-pages"])
def test_pyramidal_tiff_levels_by_index_and_pixel_size(small_onnx, tmp_path, subifds):
    source = write_tiff(tmp_path / "slide.tif", IMAGE, levels=3, subifds=subifds, resolution_um=0.25)
    assert [(i, open_source(source, channels=3, level=i).size) for i in range(3)] == \
        [(0, (203, 171)), (1, (102, 86)), (2, (51, 43))]
    level1 = IMAGE[::2, ::2]
    assert_close(_scanned(source, small_onnx, tmp_path, level=1), one_pass(small_onnx, level1))
    assert_close(_scanned(source, small_onnx, tmp_path, mpp=0.5), one_pass(small_onnx, level1))
    attrs = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["fc2conv"]
    assert attrs["source"]["level"] == 1 and attrs["source"]["pixel_size_um"] == pytest.approx([0.5, 0.5], rel=0.02)
    assert attrs["cell_size_um"] == pytest.approx([2.0, 2.0], rel=0.02)
    with pytest.raises(ConversionError, match=r"no level within 10% of 0.7 µm.*level 1: 0.49"):
        open_source(source, channels=3, mpp=0.7)
    with pytest.raises(ConversionError, match="has levels 0 … 2; got level=3"):
        open_source(source, channels=3, level=3)


@pytest.mark.parametrize("layout", ["YXS", "SYX"])
def test_zarr_array(small_onnx, tmp_path, layout):
    array = IMAGE if layout == "YXS" else IMAGE.transpose(2, 0, 1)
    chunks = (32, 32, 3) if layout == "YXS" else (3, 32, 32)
    zarr.create_array(str(tmp_path / "in.zarr"), shape=array.shape, chunks=chunks, dtype="uint8")[...] = array
    assert_close(_scanned(tmp_path / "in.zarr", small_onnx, tmp_path), one_pass(small_onnx, IMAGE))


def test_ome_zarr_levels_axes_and_pixel_size(small_onnx, tmp_path):
    group = zarr.open_group(str(tmp_path / "image.ome.zarr"), mode="w")
    datasets = []
    for level in range(2):
        data = IMAGE[:: 2**level, :: 2**level].transpose(2, 0, 1)[None, :, None]  # t, c, z, y, x
        group.create_array(str(level), shape=data.shape, chunks=(1, 3, 1, 64, 64), dtype="uint8")[...] = data
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": [1, 1, 1, 0.5 * 2**level, 0.5 * 2**level]}]})
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, {"name": "z", "type": "space"},
            {"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}
    source = tmp_path / "image.ome.zarr"
    assert_close(_scanned(source, small_onnx, tmp_path), one_pass(small_onnx, IMAGE))
    assert_close(_scanned(source, small_onnx, tmp_path, mpp=1.0), one_pass(small_onnx, IMAGE[::2, ::2]))
    assert open_source(source, channels=3, level=1).pixel_size == (1.0, 1.0)


def test_openslide_reads_the_same_pixels_as_tifffile(small_onnx, tmp_path):
    """OpenSlide's generic tiled TIFF support (reduced pages as levels) gives the same map as tifffile. (Level 1 is
    exactly half of level 0 here: OpenSlide places reads in level-0 pixels, and at a fractional downsample it
    resamples them by a fraction of a pixel.)"""
    pytest.importorskip("openslide")
    image = IMAGE[:202, :170]
    source = write_tiff(tmp_path / "slide.tif", image, levels=2, subifds=False)
    for level, pixels in ((0, image), (1, image[::2, ::2])):
        via_slide = _scanned(source, small_onnx, tmp_path, reader="openslide", level=level)
        assert_close(via_slide, one_pass(small_onnx, pixels))
        np.testing.assert_array_equal(via_slide, _scanned(source, small_onnx, tmp_path, reader="tiff", level=level))


def test_png_is_read_whole_within_the_pixel_budget(small_onnx, tmp_path):
    Image.fromarray(IMAGE).save(tmp_path / "in.png")
    assert_close(_scanned(tmp_path / "in.png", small_onnx, tmp_path), one_pass(small_onnx, IMAGE))
    with pytest.raises(ConversionError, match="decoded whole; convert it to a tiled TIFF"):
        _scanned(tmp_path / "in.png", small_onnx, tmp_path, max_pixels=1000)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _truncated(tmp_path: Path) -> Path:
    path = write_tiff(tmp_path / "cut.tif", IMAGE)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    return path


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _five_channels(tmp_path: Path) -> Path:
    import tifffile

    tifffile.imwrite(tmp_path / "five.tif", noise(100, 100, channels=5), tile=(64, 64), planarconfig="contig",
                     photometric="minisblack", extrasamples=[0] * 4)
    return tmp_path / "five.tif"


# (name, how to make the input, extra arguments, what the message says)
HOSTILE = [
    ("truncated TIFF", _truncated, [], "is truncated: .* tiles end past the file"),
    ("not a TIFF", lambda p: _file(p / "junk.tif", b"II*\0" + bytes(range(256)) * 4), [], "cannot read it as a TIFF"),
    ("unknown format", lambda p: _file(p / "notes.txt", b"hello"), [], "no reader understands"),
    ("five channels", _five_channels, [], "H×W×C with C from 1 to 4"),
    ("int16 samples", lambda p: write_tiff(p / "signed.tif", np.zeros((64, 64), np.int16)), [],
     "int16 have no defined range"),
    ("tile smaller than a window", lambda p: write_tiff(p / "in.tif", IMAGE), ["--tile", "16"],
     "--tile 16 is smaller than the model's 32×32 window"),
    ("image smaller than a window", lambda p: write_tiff(p / "in.tif", IMAGE[:20]), [], "smaller than the model's"),
    ("level it does not have", lambda p: write_tiff(p / "in.tif", IMAGE), ["--level", "2"], "has levels 0 … 0"),
    ("mpp without a pixel size", lambda p: write_tiff(p / "in.tif", IMAGE), ["--mpp", "0.5"], "records no pixel size"),
    ("level and mpp", lambda p: write_tiff(p / "in.tif", IMAGE), ["--level", "0", "--mpp", "0.5"], "not both"),
    ("workers and scheduler", lambda p: write_tiff(p / "in.tif", IMAGE),
     ["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not both"),
    ("bad dtype", lambda p: write_tiff(p / "in.tif", IMAGE), ["--dtype", "int8"], "float32 or float16"),
    ("unknown class", lambda p: write_tiff(p / "in.tif", IMAGE), ["--classes", "cat", "--overview", "o.png"],
     "neither a label nor an index"),
    ("output is the input", lambda p: write_tiff(p / "in.tif", IMAGE), ["--overview", "in.tif"],
     "is the input"),
]


@pytest.mark.parametrize(("make", "extra", "message"), [case[1:] for case in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_input_exits_2_and_writes_nothing(small_onnx, tmp_path, monkeypatch, make, extra, message):
    monkeypatch.chdir(tmp_path)
    source = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, ["scan", str(source), "--model", str(small_onnx), "--out", "out.zarr", *extra])
    assert result.exit_code == EXIT_USAGE, result.output
    assert re.search(message, result.output), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_existing_output_and_unreachable_scheduler(small_onnx, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tiff(tmp_path / "in.tif", IMAGE)
    base = ["scan", "in.tif", "--model", str(small_onnx), "--out", "out.zarr", "--tile", "64"]
    done = CliRunner().invoke(app, [*base, "--json", "--overview", "o.png", "--detections", "d.csv"])
    assert done.exit_code == EXIT_OK, done.output
    summary = json.loads(done.output)
    assert summary["tiles"] == summary["computed"] == 9 and summary["map_size"] == [43, 35]
    listing = sorted(p.name for p in tmp_path.iterdir())
    assert listing == ["d.csv", "d.geojson", "in.tif", "o.png", "out.zarr"]
    refused = CliRunner().invoke(app, base)
    assert refused.exit_code == EXIT_USAGE and "out.zarr already exists; pass --force" in refused.output
    import dask

    # fc2conv gives up after its CONNECT_TIMEOUT (5 s). Dask's own connect timeout, 30 s by default, is made 600 s
    # here, so the bound tells the two apart whatever the load on the machine.
    with dask.config.set({"distributed.comm.timeouts.connect": "600s"}):
        started = time.monotonic()
        unreachable = CliRunner().invoke(app, [*base, "--force", "--scheduler", f"tcp://127.0.0.1:{_closed_port()}"])
        elapsed = time.monotonic() - started
    assert unreachable.exit_code == EXIT_USAGE and "cannot reach the Dask scheduler" in unreachable.output
    assert elapsed < 120
    assert sorted(p.name for p in tmp_path.iterdir()) == listing
    again = CliRunner().invoke(app, [*base, "--resume", "--json"])
    assert again.exit_code == EXIT_OK and json.loads(again.output)["computed"] == 0
