"""Hostile and odd masks: a clear error naming the mask before anything is written, or documented behaviour (a
self-intersecting polygon fills by the even-odd rule; polygons partly off the slide are cut)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scan_helpers import write_tiff

from fc2conv.errors import ConversionError
from fc2conv.runtime import scan
from fc2conv.scan.masks import CellGrid
from fc2conv.scan.masks.regions import RegionsMask, read_polygons

pytest.importorskip("zarr")
pytest.importorskip("skimage")
SIZE = 512


@pytest.fixture(scope="module")
def glass(tmp_path_factory):
    """A 512×512 RGB slide of bare glass: white with sensor noise."""
    path = tmp_path_factory.mktemp("glass") / "glass.tif"
    rng = np.random.default_rng(0)
    write_tiff(path, np.clip(236 + rng.normal(0, 3, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8), tile=128)
    return path


def geojson(path: Path, content) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def polygon(*rings) -> dict:
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [list(r) for r in rings]}}


SQUARE = [[10, 10], [200, 10], [200, 200], [10, 200], [10, 10]]


def refusals(tmp_path: Path) -> dict:
    """{case: (mask, message)} for masks refused before any work."""
    from PIL import Image

    Image.fromarray(np.full((64, 128), 255, np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "empty.png")
    deep = "[" * 100_000 + "]" * 100_000
    return {
        "wrong aspect": (tmp_path / "wide.png", r"64×128 pixels, but the scanned image is 512×512.*aspect ratio"),
        "empty image": (tmp_path / "empty.png", "covers no cell of the"),
        "off the slide": (geojson(tmp_path / "off.geojson", polygon([[x + 5000, y] for x, y in SQUARE])),
                          "none of its 1 polygons overlaps the slide"),
        "not a polygon": (geojson(tmp_path / "line.geojson", {"type": "Feature", "geometry": {
            "type": "LineString", "coordinates": [[0, 0], [10, 10]]}}), "feature 0 is a LineString"),
        "NaN": (geojson(tmp_path / "nan.geojson", '{"type": "Polygon", "coordinates": [[[0, 0], [NaN, 5], [9, 9]]]}'),
                "NaN is not a finite number"),
        "two points": (geojson(tmp_path / "flat.geojson", polygon([[0, 0], [9, 9], [0, 0]])),
                       "fewer than three distinct points"),
        "nested": (geojson(tmp_path / "deep.geojson", deep), "nested too deep|holds no polygon|not a JSON object"),
        "huge coordinate": (geojson(tmp_path / "far.geojson", polygon([[0, 0], [1e300, 0], [0, 9], [0, 0]])),
                            "beyond ±1e"),
        "no polygon": (geojson(tmp_path / "none.geojson", {"type": "FeatureCollection", "features": []}),
                       "holds no polygon"),
        "missing": (tmp_path / "gone.geojson", "no such file"),
        "unknown word": ("automatic", "no such file"),
    }


CASES = ["wrong aspect", "empty image", "off the slide", "not a polygon", "NaN", "two points", "nested",
         "huge coordinate", "no polygon", "missing", "unknown word"]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_mask_is_refused_naming_it_and_nothing_is_written(glass, small_onnx, tmp_path, case):
    mask, message = refusals(tmp_path)[case]
    with pytest.raises(ConversionError, match=message) as caught:
        scan(glass, model=small_onnx, out=tmp_path / "map.zarr", tile=128, mask=mask)
    assert "mask=" in str(caught.value) or case == "empty image"
    assert not (tmp_path / "map.zarr").exists() and not (tmp_path / ".map.zarr.partial").exists()


def test_auto_on_bare_glass_finds_no_foreground(glass, small_onnx, tmp_path):
    with pytest.raises(ConversionError, match=r"mask='auto' found no foreground .*looks empty"):
        scan(glass, model=small_onnx, out=tmp_path / "map.zarr", tile=128, mask="auto")


def test_a_mask_is_an_input_no_output_may_be(glass, small_onnx, tmp_path):
    regions = geojson(tmp_path / "regions.geojson", polygon(SQUARE))
    with pytest.raises(ConversionError, match="mask="):
        scan(glass, model=small_onnx, out=tmp_path / "map.zarr", tile=128, mask=regions,
             detections=tmp_path / "regions.csv")  # whose GeoJSON would overwrite the mask


def test_a_self_intersecting_ring_fills_by_the_even_odd_rule_and_holes_subtract(tmp_path):
    # A pentagram: its five points are inside, its centre (crossed twice) is not, as SVG's evenodd fills it.
    angles = np.pi / 2 + np.arange(5) * 4 * np.pi / 5
    star = [[50 + 40 * np.cos(a), 50 - 40 * np.sin(a)] for a in angles] + [[50, 10]]
    (rings,) = read_polygons(geojson(tmp_path / "star.geojson", polygon(star)))
    grid = CellGrid((1, 1), (1, 1))  # cell i's centre at pixel edge i + 0.5: cells are pixels
    cells = [np.stack([grid.to_cells(r[:, 1], 0), grid.to_cells(r[:, 0], 1)], axis=1) for r in rings]
    inside = RegionsMask([cells], {}).cells((0, 0, 100, 100))
    assert not inside[50, 50] and inside[15, 50]  # the centre is out, the top point in
    holed = read_polygons(geojson(tmp_path / "holed.geojson", polygon(SQUARE, [[50, 50], [90, 50], [90, 90],
                                                                               [50, 50]])))
    cells = [np.stack([grid.to_cells(r[:, 1], 0), grid.to_cells(r[:, 0], 1)], axis=1) for r in holed[0]]
    inside = RegionsMask([cells], {}).cells((0, 0, 256, 256))
    assert inside[20, 20] and not inside[60, 80] and not inside[250, 250]


def test_the_command_line_says_what_the_mask_skipped_and_refuses_in_a_line(glass, small_onnx, tmp_path):
    regions = geojson(tmp_path / "regions.geojson", polygon(SQUARE))
    command = [sys.executable, "-c", "from fc2conv.cli import main; main()", "scan", str(glass), "--model",
               str(small_onnx), "--tile", "128"]
    done = subprocess.run([*command, "--out", str(tmp_path / "map.zarr"), "--mask", str(regions)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"mask {regions}:" in done.stdout and "of 16 tiles skipped (never read or computed)" in done.stdout
    refused = subprocess.run([*command, "--out", str(tmp_path / "other.zarr"), "--mask", str(tmp_path / "x.json")],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) <= 3
    assert "--mask" in refused.stderr and not (tmp_path / "other.zarr").exists()
