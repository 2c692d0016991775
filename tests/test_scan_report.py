"""What a scan reports (issue 29, part 4): an approximate scan measures its seams against one pass over the tiles
around a tile corner, records them, and prints them with a hint; `--context` widens its halo and narrows them (and is
refused where it means nothing); `--resume` of a finished scan says that nothing was left to compute."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from helpers import assert_clean_refusal, invoke
from scan_helpers import export, noise, write_tiff

from fc2conv.errors import ConversionError
from fc2conv.runtime import DenseModel, scan

zarr = pytest.importorskip("zarr")
pytest.importorskip("skimage")  # --mask

HEIGHT, WIDTH, TILE = 384, 352, 128  # MobileNetV3-small: stride 32, window 64; 3×3 tiles


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    """(model, image, slide): MobileNetV3-small with random weights (squeeze-excitation: global context), exported
    dense, and a noise slide."""
    folder = tmp_path_factory.mktemp("seams")
    image = noise(HEIGHT, WIDTH)
    return export("mobilenet_v3_small", folder), image, write_tiff(folder / "slide.tif", image)


def _one_pass_over(model, image: np.ndarray, region: list[int], halo: list[list[int]]) -> np.ndarray:
    """The scores of the cells `region` (top, left, bottom, right) from one pass over their windows and the halo."""
    dense = DenseModel(model)
    (stride, _), window = dense.metadata["stride"], dense.metadata["window"][0]
    top, left, bottom, right = region
    (hb, ha), (wb, wa) = halo
    r0, c0 = max(0, (top - hb) * stride), max(0, (left - wb) * stride)
    r1, c1 = (bottom - 1 + ha) * stride + window, (right - 1 + wa) * stride + window
    scores = dense.run(image[r0:r1, c0:c1]).scores
    return scores[:, top - r0 // stride:bottom - r0 // stride, left - c0 // stride:right - c0 // stride]


def test_an_approximate_scan_measures_its_seams_and_context_narrows_them(mobilenet, tmp_path):
    model, image, slide = mobilenet
    plain = scan(slide, model=model, out=tmp_path / "plain.zarr", tile=TILE, approximate=True)
    seam = plain.seam
    assert seam == zarr.open_group(str(tmp_path / "plain.zarr"), mode="r").attrs["fc2conv"]["approximate_seam"]
    assert seam["tiles"] == [2, 2] and seam["region"] == [0, 0, 8, 8]  # the corner nearest the middle of 3×3 tiles
    halo = plain.metadata["halo_cells"]
    assert halo == [[2, 2], [2, 2]]  # one 64-pixel window of stride 32
    expected = _one_pass_over(model, image, seam["region"], halo)
    stitched = plain.scores()[:, 0:8, 0:8]
    assert seam["value"] == pytest.approx(np.abs(stitched - expected).max() / np.abs(expected).max(), rel=1e-6)
    assert seam["value"] > 0.01  # plainly visible: global context differs from tile to tile

    wider = scan(slide, model=model, out=tmp_path / "wider.zarr", tile=TILE, approximate=True, context=40)
    assert wider.metadata["halo_cells"] == [[4, 4], [4, 4]]  # 64 + 40 pixels, rounded up to whole strides
    assert wider.metadata["run"]["context"] == 40
    assert 0 <= wider.seam["value"] <= seam["value"]
    assert plain.to_dict()["approximate_seam"] == seam


def test_the_command_prints_the_seams_and_a_masked_scan_measures_computed_cells(mobilenet, tmp_path):
    model, _, slide = mobilenet
    done = invoke("scan", slide, "--model", model, "--out", tmp_path / "map.zarr", "--tile", TILE, "--approximate",
                  "--context", 64)
    assert done.exit_code == 0, done.output
    line = re.search(r"seams: stitched cells differ from one pass over a 2×2-tile region by up to ([0-9.e-]+)% of "
                     r"the largest score; a wider --context makes them smaller", done.stdout)
    recorded = zarr.open_group(str(tmp_path / "map.zarr"), mode="r").attrs["fc2conv"]["approximate_seam"]
    assert line and float(line.group(1)) == pytest.approx(recorded["value"] * 100, rel=0.05)
    regions = tmp_path / "left.geojson"  # the left half: a masked scan compares only the cells it computed
    regions.write_text(json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [160, 0], [160, HEIGHT], [0, HEIGHT],
                                                                       [0, 0]]]}))
    masked = scan(slide, model=model, out=tmp_path / "masked.zarr", tile=TILE, approximate=True, mask=regions)
    assert masked.seam["region"] is not None and np.isfinite(masked.seam["value"])
    resumed = invoke("scan", slide, "--model", model, "--out", tmp_path / "map.zarr", "--tile", TILE,
                     "--approximate", "--context", 64, "--resume", "--json")
    assert json.loads(resumed.stdout)["approximate_seam"] == recorded  # a finished scan's seams are not measured again


def test_context_is_refused_where_it_means_nothing(mobilenet, small_onnx, tmp_path):
    model, _, slide = mobilenet
    refused = invoke("scan", slide, "--model", model, "--out", tmp_path / "a.zarr", "--context", 64)
    assert_clean_refusal(refused, "--context 64 widens the halo of an --approximate scan")
    exact = invoke("scan", slide, "--model", small_onnx, "--out", tmp_path / "b.zarr", "--approximate", "--context",
                   64)
    assert_clean_refusal(exact, "--context 64", "scans exactly")
    with pytest.raises(ConversionError, match="context= must be a whole number"):
        scan(slide, model=model, out=tmp_path / "c.zarr", approximate=True, context=-1)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert scan(slide, model=small_onnx, out=tmp_path / "d.zarr", tile=TILE).seam is None  # exact: nothing measured


def test_resume_of_a_finished_scan_says_nothing_was_left_to_compute(small_onnx, tmp_path):
    slide = write_tiff(tmp_path / "in.tif", noise(200, 170))
    args = ["scan", slide, "--model", small_onnx, "--out", tmp_path / "out.zarr", "--tile", 64]
    first = invoke(*args)
    assert first.exit_code == 0 and "MP/s" in first.stdout, first.output
    again = invoke(*args, "--resume")
    assert again.exit_code == 0, again.output
    assert re.search(r"^(\d+) tiles, 0 computed \(\1 already done\): nothing was left to compute; [0-9.]+ s in all, "
                     r"for the outputs$", again.stdout, re.MULTILINE), again.stdout
    assert "MP/s" not in again.stdout
