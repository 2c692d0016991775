"""`fc2conv.scan`: tiles stitch into exactly the one-pass map, the halo is what makes them exact, models with global
context are refused, the store says what it holds, outputs find what is there, a killed scan resumes to the
same map, memory stays bounded by the tile, and nothing needs torch."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import assert_close, next_line
from onnx_helpers import run_without_torch
from PIL import Image
from scan_helpers import (
    ROOT,
    SHAPES,
    done_tiles,
    export,
    noise,
    one_pass,
    write_tiff,
)

from fc2conv.errors import ConversionError
from fc2conv.runtime import DenseModel, scan
from fc2conv.scan import dispatch, outputs, tiles
from fc2conv.tolerance import max_errors
from models.digits_data import DIGIT, LABELS, MARGIN, load_split

zarr = pytest.importorskip("zarr")  # the scan extra: Python 3.11 or later


@pytest.fixture(scope="module")
def exported_models(tmp_path_factory):
    """`exported_models(name)`: the path of that model's ONNX export, made once per module."""
    directory = tmp_path_factory.mktemp("models")
    return lambda name: export(name, directory)


def _image(name: str, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return noise(*size, channels=SHAPES[name][0], seed=seed)


@pytest.mark.parametrize("size", [(203, 157), (35, 1001), (32, 33)])
@pytest.mark.parametrize("tile", [32, 44, 100])
@pytest.mark.parametrize("halo", [((0, 0), (0, 0)), ((1, 2), (3, 0))])
def test_tiles_own_every_cell_once_and_read_their_halo_on_the_stride_grid(size, tile, halo):
    stride, window = (4, 4), (32, 32)
    cells = tuple((n - w) // s + 1 for n, w, s in zip(size, window, stride, strict=True))
    plan = tiles.make_plan(size, stride=stride, window=window, halo=halo, tile=tile, cells=cells)
    owned = np.zeros(cells, int)
    for t in plan.tiles():
        owned[t.cells[0]:t.cells[2], t.cells[1]:t.cells[3]] += 1
        for axis in range(2):
            first, end, start, stop = t.cells[axis], t.cells[axis + 2], t.read[axis], t.read[axis + 2]
            assert start % stride[axis] == 0 and 0 <= start < stop <= size[axis]
            assert stop - start >= window[axis]
            assert start // stride[axis] + t.offset[axis] == first
            before, after = halo[axis]
            assert start <= max(0, (first - before) * stride[axis])
            assert stop >= min(size[axis], (end - 1 + after) * stride[axis] + window[axis])
    assert (owned == 1).all()
    assert sum(t.pixels for t in plan.tiles()) == size[0] * size[1]
    assert plan.tile_cells == (tile // 4, tile // 4)


def test_tile_smaller_than_a_window_or_image_smaller_than_a_window_is_refused():
    options = {"stride": (4, 4), "window": (32, 32), "halo": ((0, 0), (0, 0)), "cells": (1, 1)}
    with pytest.raises(ConversionError, match="tile=31 is smaller than the model's 32×32 window"):
        tiles.make_plan((100, 100), tile=31, **options)
    with pytest.raises(ConversionError, match="smaller than the model's 32×32 window"):
        tiles.make_plan((31, 100), tile=64, **options)


# (model, image size, tile sizes): padding-free, padded VGG-like, and a padded ResNet whose halo is 7 strides.
EXACT = [("digits", (203, 157), (32, 44, 100)), ("small", (211, 149), (32, 44, 96)),
         ("resnet18", (523, 491), (64, 160))]
SLOW_EXACT = [pytest.param("vgg11", (517, 389), (96, 224), marks=pytest.mark.slow),
              pytest.param("densenet121", (2600, 1100), (1024,), marks=pytest.mark.slow)]


@pytest.mark.parametrize(("name", "size", "sizes"), EXACT + SLOW_EXACT)
def test_stitched_map_equals_one_pass(exported_models, tmp_path, name, size, sizes):
    model, image = exported_models(name), _image(name, size)
    source = write_tiff(tmp_path / "in.tif", image)
    expected = one_pass(model, image)
    for tile in sizes:
        result = scan(source, model=model, out=tmp_path / f"tile{tile}.zarr", tile=tile)
        assert result.tiles > 1 and result.computed == result.tiles
        assert_close(result.scores()[...], expected)


@pytest.mark.parametrize("side", [0, 1])
@pytest.mark.parametrize(("name", "size", "tile"), [("small", (211, 149), 44), ("resnet18", (523, 491), 160)])
def test_one_stride_less_halo_breaks_the_map(exported_models, tmp_path, monkeypatch, name, size, tile, side):
    """The margin is needed: with one stride less of it before (or after) each tile, border cells differ."""
    model, image = exported_models(name), _image(name, size)
    exact = tiles.halo_cells

    def short(margins, stride):
        return tuple(tuple(n - (k == side) for k, n in enumerate(pair)) for pair in exact(margins, stride))

    monkeypatch.setattr(tiles, "halo_cells", short)
    result = scan(write_tiff(tmp_path / "in.tif", image), model=model, out=tmp_path / "out.zarr", tile=tile)
    assert max_errors(result.scores()[...], one_pass(model, image))[1] > 1e-5  # max relative error


@pytest.mark.parametrize("name", ["small", "resnet18"])
def test_receptive_field_bounds_what_changes_a_cell(exported_models, name):
    """Changing the input one pixel beyond a cell's receptive field leaves the cell as it was."""
    dense = DenseModel(exported_models(name))
    meta = dense.metadata
    (before, after), stride, window = meta["receptive_field"][0], meta["stride"][0], meta["window"][0]
    size = window + 2 * (before + after) + 4 * stride
    image = _image(name, (size, 40 + window))
    base = dense.run(image).scores
    cell = (before + after) // stride + 1
    first, last = cell * stride - before, cell * stride + window - 1 + after
    for row, inside in ((first - 1, False), (first, True), (last, True), (last + 1, False)):
        changed = image.copy()
        changed[row] = 255 - changed[row]
        difference = np.abs(dense.run(changed).scores[:, cell] - base[:, cell]).max()
        if inside:
            assert difference > 0, f"row {row} is inside the receptive field of cell {cell} but does not change it"
        else:
            assert difference == 0, f"row {row} lies beyond the receptive field of cell {cell} but changes it"


def test_global_context_is_refused_unless_approximate(exported_models, tmp_path):
    model, image = exported_models("mobilenet_v3_small"), _image("mobilenet_v3_small", (200, 170))
    source, out = write_tiff(tmp_path / "in.tif", image), tmp_path / "out.zarr"
    with pytest.raises(ConversionError, match=r"global context.*approximate=True"):
        scan(source, model=model, out=out, tile=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]
    result = scan(source, model=model, out=out, tile=64, approximate=True)
    assert result.metadata["approximate"] is True
    assert zarr.open_group(str(out), mode="r").attrs["fc2conv"]["approximate"] is True
    assert result.scores().shape == one_pass(model, image).shape


def test_no_receptive_field_is_refused_unless_approximate(exported_models, tmp_path):
    proto = onnx.load(str(exported_models("digits")))
    for prop in proto.metadata_props:
        if prop.key == "fc2conv.receptive_field":
            prop.value = "null"
    model = tmp_path / "unknown.onnx"
    onnx.save(proto, str(model))
    source = write_tiff(tmp_path / "in.tif", _image("digits", (100, 90)))
    with pytest.raises(ConversionError, match="no receptive field"):
        scan(source, model=model, out=tmp_path / "out.zarr", tile=64)
    assert scan(source, model=model, out=tmp_path / "out.zarr", tile=64, approximate=True).metadata["approximate"]


def test_store_records_the_scan_and_float16_halves_it(exported_models, tmp_path):
    model, image = exported_models("digits"), _image("digits", (300, 211))
    source = write_tiff(tmp_path / "in.tif", image, resolution_um=0.5)
    out = tmp_path / "out.zarr"
    result = scan(source, model=model, out=out, tile=64, dtype="float16")
    attrs = zarr.open_group(str(out), mode="r").attrs["fc2conv"]
    assert attrs["stride"] == [4, 4] and attrs["window"] == [32, 32] and attrs["receptive_field"] == [[0, 0], [0, 0]]
    assert attrs["labels"] == LABELS and attrs["complete"] is True and attrs["approximate"] is False
    assert attrs["source"]["path"] == str(source.resolve()) and attrs["source"]["level"] == 0
    assert attrs["source"]["pixel_size_um"] == pytest.approx([0.5, 0.5])
    assert attrs["cell_size_um"] == pytest.approx([2.0, 2.0])
    assert attrs["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert attrs["image_size"] == [300, 211] and attrs["map_size"] == [68, 45] and attrs["dtype"] == "float16"
    scores = result.scores()
    assert scores.dtype == np.float16 and scores.chunks == (11, 16, 16)
    assert zarr.open_array(str(out / "done"), mode="r")[...].all()
    assert_close(scores[...], one_pass(model, image), limit=1e-3)
    assert not (tmp_path / ".out.zarr.partial").exists()


def _digits_canvas(size: tuple[int, int], places: list[tuple[int, int]]) -> tuple[np.ndarray, list[tuple]]:
    """A black canvas with confidently classified test-split digits (labels 0, 1, 2, …) at `places`."""
    _, images, _, labels = load_split()
    canvas, placed = np.zeros(size, np.uint8), []
    for digit, (top, left) in enumerate(places):
        picked = images[np.flatnonzero(labels == digit)[0]]
        canvas[top:top + DIGIT, left:left + DIGIT] = picked
        placed.append((str(digit), top, left))
    return canvas, placed


def test_detections_and_overview(exported_models, tmp_path):
    """Digits on a canvas scanned in 128-pixel tiles, two of them across tile borders: each is found once, where it
    is, in the CSV and the GeoJSON; the overview covers the map."""
    places = [(20, 30), (116, 40), (200, 116), (60, 200)]  # 2nd and 3rd straddle the borders at 128
    canvas, placed = _digits_canvas((260, 300), places)
    source = write_tiff(tmp_path / "canvas.tif", canvas)
    result = scan(source, model=exported_models("digits"), out=tmp_path / "out.zarr", tile=128,
                  overview=tmp_path / "o.png", detections=tmp_path / "found.csv")
    rows = (tmp_path / "found.csv").read_text().splitlines()
    assert rows[0] == "label,class_index,score,row,col,top,left,bottom,right" and result.found == len(rows) - 1
    found = sorted((r.split(",")[0], int(r.split(",")[5]) + MARGIN, int(r.split(",")[6]) + MARGIN) for r in rows[1:])
    assert len(found) == len(placed)
    for (label, top, left), (digit, placed_top, placed_left) in zip(found, sorted(placed), strict=True):
        assert label == digit and abs(top - placed_top) <= 4 and abs(left - placed_left) <= 4
    features = json.loads((tmp_path / "found.geojson").read_text())["features"]
    assert [f["properties"]["label"] for f in features] == [r.split(",")[0] for r in rows[1:]]
    ring = features[0]["geometry"]["coordinates"][0]
    top, left, bottom, right = map(int, rows[1].split(",")[5:9])
    assert ring == [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]]
    with Image.open(tmp_path / "o.png") as png:  # the 260×300 canvas at the smallest readable size, and a legend
        assert png.size[0] == 1024 and png.size[1] > round(260 * 1024 / 300) and png.mode == "RGB"
        picture = np.asarray(png)
    for digit, top, left in placed:  # each digit's centre is painted in its class's colour over the slide
        y, x = (round((v + DIGIT / 2) * 1024 / 300) for v in (top, left))
        colour = outputs.class_colors(LABELS)[LABELS.index(digit)]
        assert np.abs(picture[y - 2:y + 3, x - 2:x + 3].astype(int) - colour).sum(axis=-1).min() < 60, digit


def test_suppression_keeps_one_peak_across_a_chunk_border():
    """A plateau cut by a chunk border gives a peak on each side; suppression keeps the better one."""
    logits = np.zeros((2, 12, 12), np.float32)
    logits[0] = 3  # background everywhere but at the peaks
    logits[1, 5, 5], logits[1, 6, 5], logits[1, 2, 10] = 5, 6, 4  # rows 5 and 6 lie in different 6-row chunks
    scores = zarr.create_array(store={}, shape=logits.shape, chunks=(2, 6, 6), dtype="float32")
    scores[...] = logits
    found = outputs.detections(scores, [1], ["background", "x"], stride=(4, 4), window=(16, 16), image=(60, 60))
    assert [(d.cell, d.box) for d in found] == [((6, 5), (24, 20, 40, 36)), ((2, 10), (8, 40, 24, 56))]
    assert outputs.detections(scores, [1], ["background", "x"], stride=(4, 4), window=(16, 16), image=(60, 60),
                              iou=0.9)[1].cell == (5, 5)


def test_overview_map_is_the_block_maximum_across_chunk_borders(tmp_path):
    """Each block of 3×3 cells keeps the largest probability of the chosen classes and its class, also where blocks
    straddle chunks (5×5 here); the picture has the readable size and a legend."""
    from fc2conv.scan.overview import class_map, overview

    logits = np.random.default_rng(0).normal(size=(3, 12, 11)).astype(np.float32)
    scores = zarr.create_array(store={}, shape=logits.shape, chunks=(3, 5, 5), dtype="float32")
    scores[...] = logits
    best, which = class_map(scores, [0, 2], 3)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=0)
    chosen = np.pad(probabilities[[0, 2]], ((0, 0), (0, 0), (0, 1)))  # 12×12: blocks of 3 cells
    blocks = chosen.reshape(2, 4, 3, 4, 3).max(axis=(2, 4))
    np.testing.assert_allclose(best, blocks.max(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(which, blocks.argmax(axis=0))
    shape = overview(scores, [0, 2], tmp_path / "o.png", labels=["a", "b", "c"],
                     colors=[(255, 0, 0), (0, 255, 0), (0, 0, 255)], stride=(4, 4), window=(8, 8), image=(52, 48))
    with Image.open(tmp_path / "o.png") as png:
        assert png.size == (shape[1], shape[0]) and shape[1] == round(48 * 1024 / 52)


def test_classes_by_label_or_index():
    assert outputs.choose_classes(None, LABELS) == list(range(10))
    assert outputs.choose_classes(["background", "3"], LABELS) == [3, 10]
    with pytest.raises(ConversionError, match="neither a label nor an index"):
        outputs.choose_classes(["cat"], LABELS)


# A scan that stops after its 20th tile, says so, and waits there to be killed (one onnxruntime thread, as in the
# test's own scans: the resumed map is compared bit for bit with an uninterrupted one).
PAUSED_SCAN = """
import sys, time
from fc2conv.runtime import scan
from fc2conv.scan import stitch

scan_tile, done = stitch.scan_tile, []

def scan_then_pause(job, tile, read=None, write=None):
    pixels = scan_tile(job, tile, read=read)  # written now, not behind: the 20th is written before the pause
    done.append(tile.index)
    if len(done) == 20:
        print(len(done), flush=True)
        time.sleep(600)
    return pixels

stitch.scan_tile = scan_then_pause
scan(sys.argv[1], model=sys.argv[2], out=sys.argv[3], tile=32, threads=1)
"""


def test_resume_after_the_scan_is_killed(exported_models, tmp_path):
    """A scan killed (SIGKILL) mid-run, after its 20th tile, leaves no OUT, only its hidden partial store with those
    20 tiles; --resume computes the rest and ends with the map an uninterrupted scan gives."""
    model, image = exported_models("digits"), _image("digits", (1201, 1003))
    source, out = write_tiff(tmp_path / "in.tif", image, tile=256), tmp_path / "out.zarr"
    partial = tmp_path / ".out.zarr.partial"
    process = subprocess.Popen([sys.executable, "-c", PAUSED_SCAN, str(source), str(model), str(out)], text=True,
                               env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE)
    reached = next_line(process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    process.stdout.close()
    assert reached == "20" and process.returncode == -signal.SIGKILL
    written, total = done_tiles(partial), 37 * 31  # 293×243 cells in tiles of 8×8
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.zarr.partial", "in.tif"] and written == 20
    with pytest.raises(ConversionError, match="resume=True"):
        scan(source, model=model, out=out, tile=32, threads=1)
    with pytest.raises(ConversionError, match=r"other settings.*tile: 32 then, 64 now"):
        scan(source, model=model, out=out, tile=64, resume=True, threads=1)
    resumed = scan(source, model=model, out=out, tile=32, resume=True, threads=1)
    assert resumed.tiles == total and resumed.computed == total - written and not partial.exists()
    uninterrupted = scan(source, model=model, out=tmp_path / "again.zarr", tile=32, threads=1)
    np.testing.assert_array_equal(resumed.scores()[...], uninterrupted.scores()[...])
    assert_close(resumed.scores()[...], one_pass(model, image))
    assert scan(source, model=model, out=out, tile=32, resume=True, threads=1).computed == 0  # finished: nothing to do


def _peak_rss_mb(model: Path, source: Path, out: Path) -> float:
    """The scan's peak resident memory, in a fresh process: VmHWM, which starts again at exec (ru_maxrss keeps
    the peak of the forked parent, 830 MB with torch loaded)."""
    code = f"""
import re
from pathlib import Path
from fc2conv.runtime import scan
scan({str(source)!r}, model={str(model)!r}, out={str(out)!r}, tile=256, threads=1)
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return float(done.stdout.split()[-1])


def test_memory_is_bounded_by_the_tile(exported_models, tmp_path):
    """Peak RSS of a scan of a 4096² image is within 10% of a 1024² one at the same tile size (16× the pixels: a
    one-pass or whole-image read would add 80 MB for the image alone, 1.5 GB for the map's activations)."""
    model, peaks = exported_models("digits"), []
    for size in (1024, 4096):
        source = write_tiff(tmp_path / f"{size}.tif", noise(size, size, channels=1), tile=256)
        peaks.append(_peak_rss_mb(model, source, tmp_path / f"{size}.zarr"))
    assert peaks[1] <= 1.10 * peaks[0], f"peak RSS {peaks[0]:.0f} MB at 1024², {peaks[1]:.0f} MB at 4096²"


def test_importing_the_runtime_or_the_scanner_loads_no_dask_or_zarr():
    code = ("import sys, fc2conv.runtime, fc2conv.scan; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'dask', 'distributed', 'zarr', 'tifffile'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:8786", "tls://scheduler.local:8786", "tcp://[::1]:8786"])
def test_scheduler_addresses(address):
    dispatch.check_scheduler(address)
    with pytest.raises(ConversionError, match="must be tcp://HOST:PORT"):
        dispatch.check_scheduler(address.replace("://", ":"))


def test_scan_runs_without_torch(exported_models, tmp_path):
    model, image = exported_models("small"), _image("small", (150, 130))
    source = write_tiff(tmp_path / "in.tif", image)
    done = run_without_torch(f"""
        import sys
        from pathlib import Path

        from fc2conv.runtime import scan

        if __name__ == "__main__":  # worker processes start by importing this file again, torch blocked too
            here = scan({str(source)!r}, model={str(model)!r}, out="here.zarr", tile=64, overview="o.png",
                        detections="d.csv", ome_tiff="m.ome.tif")
            there = scan({str(source)!r}, model={str(model)!r}, out="there.zarr", tile=64, workers=2)
            from fc2conv.viewer import open_scan, read_detections  # `fc2conv view` without napari's part
            read_detections(Path("d.geojson"), open_scan(Path("here.zarr")))
            assert not any(m.split(".")[0] == "torch" for m in sys.modules), "torch was imported"
            print(here.tiles, there.tiles)
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    here, there = done.stdout.split()
    assert here == there and int(here) > 1
    for name in ("here", "there"):
        assert_close(zarr.open_array(str(tmp_path / f"{name}.zarr" / "scores"), mode="r")[...],
                     one_pass(model, image))
    assert all((tmp_path / name).is_file() for name in ("o.png", "d.geojson", "m.ome.tif"))
