"""`fc2conv scan --mask`: only what matters is scanned. A synthetic brightfield slide (tissue on glass) and a
fluorescence one (bright foreground): `auto` covers the regions and skips glass tiles, counted as read and computed;
a GeoJSON region mask; missing cells missing everywhere (store, NGFF, overview, detections, view); computed cells
equal one pass; resume refuses another mask."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close
from scan_helpers import one_pass

from fc2conv.runtime import scan
from fc2conv.scan import worker

zarr = pytest.importorskip("zarr")
pytest.importorskip("skimage")
tifffile = pytest.importorskip("tifffile")
ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("tissue_slide", ROOT / "scripts" / "tissue_slide.py")
tissue_slide = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tissue_slide)

SIZE = 1024
TILE = 128


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """{kind: (path, image, block layout)}: a brightfield and a fluorescence slide with 30% foreground."""
    directory = tmp_path_factory.mktemp("slides")
    found = {}
    for kind, make in (("brightfield", tissue_slide.brightfield), ("fluorescence", tissue_slide.fluorescence)):
        image, blocks = make((SIZE, SIZE), 0.3, seed=3)
        path = directory / f"{kind}.tif"
        tissue_slide.write_pyramid(path, image, tile=128, smallest=256)
        found[kind] = (path, image, blocks)
    return found


def cell_centres(cells: tuple[int, int], stride: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-edge coordinates of the window centres of a map's rows and columns."""
    return tuple(np.arange(n) * stride + window / 2 for n in cells)


def tissue_cells(blocks: np.ndarray, cells: tuple[int, int], stride: int, window: int) -> np.ndarray:
    """Which cells have their window centre on a tissue block of the slide's layout."""
    rows, cols = (np.minimum((c // tissue_slide.BLOCK).astype(int), n - 1)
                  for c, n in zip(cell_centres(cells, stride, window), blocks.shape, strict=True))
    return blocks[np.ix_(rows, cols)]


@pytest.mark.parametrize("kind", ["brightfield", "fluorescence"])
def test_auto_mask_covers_the_foreground_skips_glass_and_computes_what_one_pass_does(slides, small_onnx, tmp_path,
                                                                                      monkeypatch, kind):
    path, image, blocks = slides[kind]
    reads = []
    read_tile = worker.read_tile
    monkeypatch.setattr(worker, "read_tile", lambda source, tile: reads.append(tile) or read_tile(source, tile))
    result = scan(path, model=small_onnx, out=tmp_path / "map.zarr", tile=TILE, mask="auto")
    mask_attrs = result.metadata["mask"]
    assert mask_attrs["polarity"] == ("dark" if kind == "brightfield" else "bright")
    assert result.skipped > 0 and result.computed + result.skipped == result.tiles
    assert len(reads) == result.computed == mask_attrs["tiles_computed"]  # a skipped tile is never read
    scores = zarr.open_array(str(tmp_path / "map.zarr" / "scores"))[...]
    inside = zarr.open_array(str(tmp_path / "map.zarr" / "labels/mask/0"))[0].astype(bool)
    stride, window = result.metadata["stride"][0], result.metadata["window"][0]
    tissue = tissue_cells(blocks, result.map_size, stride, window)
    assert inside[tissue].mean() >= 0.99  # the regions are covered…
    assert inside[~tissue].mean() <= 0.05  # …and glass is not, but for a rim of a thumbnail pixel or two
    assert np.isnan(scores[:, ~inside]).all() and not np.isnan(scores[:, inside]).any()
    full = one_pass(small_onnx, image)
    assert_close(scores[:, inside], full[:, inside])
    assert result.megapixels < 0.8 * SIZE * SIZE / 1e6  # cropped tiles: far less than the slide is computed


def test_geojson_regions_mask_exactly_the_cells_whose_window_centre_is_inside(slides, small_onnx, tmp_path):
    from skimage.measure import points_in_poly

    path, image, _ = slides["brightfield"]
    outer = [[100.5, 80], [700, 120], [650.25, 600], [150, 500], [100.5, 80]]  # x, y in level-0 pixels
    hole = [[300, 250], [450, 250], [450, 380], [300, 380], [300, 250]]
    second = [[800, 800], [1000, 820], [900, 1100], [800, 800]]  # partly beyond the slide's edge
    regions = tmp_path / "regions.geojson"
    regions.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"objectType": "annotation"},
         "geometry": {"type": "Polygon", "coordinates": [outer, hole]}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [[second]]}}]}))
    result = scan(path, model=small_onnx, out=tmp_path / "map.zarr", tile=TILE, mask=regions)
    inside = zarr.open_array(str(tmp_path / "map.zarr" / "labels/mask/0"))[0].astype(bool)
    rows, cols = cell_centres(result.map_size, result.metadata["stride"][0], result.metadata["window"][0])
    points = np.stack(np.meshgrid(cols, rows), axis=-1).reshape(-1, 2)
    expected = (points_in_poly(points, outer) & ~points_in_poly(points, hole)) | points_in_poly(points, second)
    assert (inside.reshape(-1) == expected).all()
    assert result.metadata["mask"]["kind"] == "geojson" and result.skipped > 0
    scores = zarr.open_array(str(tmp_path / "map.zarr" / "scores"))[...]
    full = one_pass(small_onnx, image)
    assert_close(scores[:, inside], full[:, inside])
    assert np.isnan(scores[:, ~inside]).all()


def test_a_mask_image_of_any_size_is_scaled_to_the_slide(slides, small_onnx, tmp_path):
    from PIL import Image

    path, _, _ = slides["brightfield"]
    picture = np.zeros((64, 64), np.uint8)
    picture[8:24, 40:60] = 255  # rows 128…383, columns 640…959 of the slide
    Image.fromarray(picture).save(tmp_path / "mask.png")
    result = scan(path, model=small_onnx, out=tmp_path / "map.zarr", tile=TILE, mask=tmp_path / "mask.png")
    inside = zarr.open_array(str(tmp_path / "map.zarr" / "labels/mask/0"))[0].astype(bool)
    rows, cols = cell_centres(result.map_size, result.metadata["stride"][0], result.metadata["window"][0])
    expected = ((rows >= 128) & (rows < 384))[:, None] & ((cols >= 640) & (cols < 960))[None, :]
    assert (inside == expected).all()


def test_missing_cells_are_missing_in_every_output(slides, small_onnx, tmp_path):
    from ome_zarr_models.v05.image import Image as NgffImage
    from ome_zarr_models.v05.labels import Labels
    from PIL import Image

    path, _, _ = slides["brightfield"]
    store = tmp_path / "map.zarr"
    result = scan(path, model=small_onnx, out=store, tile=TILE, mask="auto", overview=tmp_path / "overview.png",
                  detections=tmp_path / "found.csv", threshold=0.05)
    group = zarr.open_group(str(store), mode="r")
    NgffImage.from_zarr(group)
    labels = Labels.from_zarr(group["labels"])
    assert labels.attributes.ome.labels == ["mask"]
    inside = group["labels/mask/0"][0].astype(bool)
    probabilities = group["probabilities/0"][...]
    assert (probabilities[:, ~inside] == 0).all() and probabilities[:, inside].sum(axis=0).min() >= 250
    overview = np.asarray(Image.open(tmp_path / "overview.png")).astype(int)[:SIZE]  # 1 pixel a slide pixel here
    slide = tifffile.imread(path).astype(int)
    stride, window = result.metadata["stride"][0], result.metadata["window"][0]
    rows, cols = (((np.arange(SIZE) + 0.5 - (window - stride) / 2) // stride).astype(int) for _ in range(2))
    on_map = ((rows >= 0) & (rows < inside.shape[0]))[:, None] & ((cols >= 0) & (cols < inside.shape[1]))[None, :]
    cell_inside = inside[np.ix_(np.clip(rows, 0, inside.shape[0] - 1), np.clip(cols, 0, inside.shape[1] - 1))]
    veiled = on_map & ~cell_inside  # the pixels whose cell is missing: the slide under a white veil
    painted = on_map & cell_inside
    assert np.abs(overview[veiled] - (slide[veiled] * 0.45 + 255 * 0.55)).max() <= 2
    assert (np.abs(overview[painted] - slide[painted]).sum(axis=-1) > 3).mean() > 0.5  # painted, not veiled
    with open(tmp_path / "found.csv") as f:
        found = [row.split(",") for row in f.read().splitlines()[1:]]
    assert found and all(inside[int(r[3]), int(r[4])] for r in found)  # no detection in a missing cell
    assert result.found == len(found)


def test_view_shades_the_missing_cells(slides, small_onnx, tmp_path):
    pytest.importorskip("napari.utils.colormaps", reason="the viewer's layers need napari (view extra)")
    from fc2conv.viewer import build
    from fc2conv.viewer.request import prepare

    path, _, _ = slides["brightfield"]
    store = tmp_path / "map.zarr"
    scan(path, model=small_onnx, out=store, tile=TILE, mask="auto")

    class Viewer:
        def __init__(self):
            self.layers = {}

        def add_image(self, data, **options):
            self.layers[options["name"]] = (data, options)

        def add_shapes(self, *args, **options):
            self.layers[options["name"]] = (args, options)

    viewer = Viewer()
    build(viewer, prepare(store))
    data, options = viewer.layers["not scanned"]
    inside = zarr.open_array(str(store / "labels/mask/0"))[0]
    assert (np.asarray(data[0][...]) == inside).all()
    assert options["contrast_limits"] == (0, 1)


def test_resume_refuses_another_mask_and_finishes_with_the_same(slides, small_onnx, tmp_path):
    from fc2conv.errors import ConversionError

    path, _, _ = slides["brightfield"]
    store = tmp_path / "map.zarr"
    first = scan(path, model=small_onnx, out=store, tile=TILE, mask="auto")
    again = scan(path, model=small_onnx, out=store, tile=TILE, mask="auto", resume=True)
    assert again.computed == 0 and again.skipped == first.skipped
    picture = tmp_path / "mask.png"
    from PIL import Image

    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(picture)
    with pytest.raises(ConversionError, match="mask"):
        scan(path, model=small_onnx, out=store, tile=TILE, mask=picture, resume=True)
    with pytest.raises(ConversionError, match="mask"):
        scan(path, model=small_onnx, out=store, tile=TILE, resume=True)  # nor none


def test_a_zarr_array_or_an_ome_zarr_label_image_is_a_mask(slides, small_onnx, tmp_path):
    path, _, _ = slides["brightfield"]
    array = zarr.create_array(str(tmp_path / "mask.zarr"), shape=(64, 64), chunks=(16, 16), dtype="uint8")
    picture = np.zeros((64, 64), np.uint8)
    picture[8:24, 40:60] = 7  # any nonzero label is inside
    array[...] = picture
    result = scan(path, model=small_onnx, out=tmp_path / "map.zarr", tile=TILE, mask=tmp_path / "mask.zarr")
    inside = zarr.open_array(str(tmp_path / "map.zarr" / "labels/mask/0"))[0].astype(bool)
    rows, cols = cell_centres(result.map_size, result.metadata["stride"][0], result.metadata["window"][0])
    expected = ((rows >= 128) & (rows < 384))[:, None] & ((cols >= 640) & (cols < 960))[None, :]
    assert (inside == expected).all() and result.metadata["mask"]["kind"] == "zarr"
    # A scan's own mask label image (an OME-Zarr multiscale, one cell a pixel) masks the next scan alike.
    again = scan(path, model=small_onnx, out=tmp_path / "again.zarr", tile=TILE,
                 mask=tmp_path / "map.zarr" / "labels" / "mask")
    assert abs(again.metadata["mask"]["cells"] - result.metadata["mask"]["cells"]) <= 0.1 * inside.sum()
