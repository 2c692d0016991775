"""The map where people look at slides: the OME-Zarr map inside the scan's store reads in two NGFF readers and puts
every cell's centre on its window's centre on the slide, in µm and in pixels, at every level of its pyramid and for
scans of any pyramid level; an OME-Zarr input's own transforms carry over; the GeoJSON is QuPath objects in level-0
pixels; the OME-TIFF lies on the slide's level-0 grid; stores of the previous version are upgraded by --resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scan_helpers import write_tiff

from fc2conv.runtime import scan
from fc2conv.scan import ngff, qupath
from fc2conv.scan.placement import Placement
from models.digits_data import DIGIT, load_split

zarr = pytest.importorskip("zarr")
models_v05 = pytest.importorskip("ome_zarr_models.v05.image", reason="ome-zarr-models validates the map (dev extra)")

STRIDE, WINDOW = 4, 32  # the digits CNN's


def canvas(size: int = 384, count: int = 12, seed: int = 3) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """A black canvas with `count` test-split digits, two cells of 96 pixels apart: (label, top, left) each."""
    _, images, _, labels = load_split()
    rng = np.random.default_rng(seed)
    picture, placed = np.zeros((size, size), np.uint8), []
    slots = rng.choice((size // 96) ** 2, size=count, replace=False)
    for index, slot in zip(rng.choice(len(images), size=count, replace=False), slots, strict=True):
        top, left = (int(slot) // (size // 96)) * 96 + 36, (int(slot) % (size // 96)) * 96 + 36
        picture[top:top + DIGIT, left:left + DIGIT] = images[index]
        placed.append((str(int(labels[index])), top, left))
    return picture, placed


def window_centre(cell: float, downsample: int, pixel: float) -> float:
    """Independently of `fc2conv.scan.placement`: the physical centre of the window of (fractional) cell `cell` of a
    scan at a level of `downsample`; level-0 pixel k spans [k, k + 1) and is centred at pixel · k."""
    edges = (cell * STRIDE + WINDOW / 2) * downsample  # the window's centre in level-0 pixel edges
    return pixel * (edges - 0.5)


# (scanned level, level-0 pixel size in µm or None for pixels)
LEVELS = [(0, None), (0, 0.25), (1, None), (1, 0.5), (2, 0.25)]


@pytest.mark.parametrize(("level", "pixel_um"), LEVELS)
def test_each_cell_centre_is_its_window_centre_at_every_pyramid_level(digits_onnx, tmp_path, monkeypatch, level,
                                                                       pixel_um):
    """Read by ome-zarr-models and by ome-zarr-py's reader, each dataset's transform puts pixel (i, j) of pyramid
    level m on the mean of the window centres of the 2^m × 2^m cells it holds (cell (i, j)'s own at m = 0), in µm
    where the TIFF records a pixel size and in level-0 pixels where it does not; level m holds the maximum of
    round(255 · softmax) over those cells, and `scores` is the exact map."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    monkeypatch.setattr(ngff, "SMALLEST", 8)  # a pyramid of four levels from a 64-cell map
    picture, _ = canvas()
    d = 2**level
    base = np.kron(picture, np.ones((d, d), np.uint8))  # level `level` of its pyramid is `picture` itself
    source = write_tiff(tmp_path / "slide.tif", base, levels=level + 1, resolution_um=pixel_um)
    result = scan(source, model=digits_onnx, out=tmp_path / "map.zarr", tile=128, level=level)
    group = zarr.open_group(str(result.path), mode="r")
    image = models_v05.Image.from_zarr(group[ngff.PROBABILITIES])
    models_v05.Image.from_zarr(group)  # the raw scores: an NGFF image too
    (multiscale,) = image.ome_attributes.multiscales
    assert [a.unit for a in multiscale.axes] == [None, *(["micrometer"] * 2 if pixel_um else [None, None])]
    read = next(iter(Reader(parse_url(str(result.path / ngff.PROBABILITIES)))())).metadata["coordinateTransformations"]
    scores = group["scores"][...]
    probabilities = np.rint(255 * np.exp(scores) / np.exp(scores).sum(axis=0)).astype(np.uint8)
    rows, cols = scores.shape[1:]
    assert len(multiscale.datasets) == 5  # 89, 45, 23, 12 and 6 cells a side
    for m, (dataset, transforms) in enumerate(zip(multiscale.datasets, read, strict=True)):
        scale, translation = (t.scale if t.type == "scale" else t.translation
                              for t in dataset.coordinateTransformations)
        assert [t["scale" if t["type"] == "scale" else "translation"] for t in transforms] == [scale, translation]
        f = 2**m
        for i, j in [(0, 0), (1, 2), (rows // f - 1, cols // f - 1)]:
            cells = np.arange(f)  # the block's cells, along each axis
            expected = [np.mean([window_centre(k * f + c, d, pixel_um or 1.0) for c in cells]) for k in (i, j)]
            assert np.allclose([scale[1] * i + translation[1], scale[2] * j + translation[2]], expected, atol=1e-9)
        stored = group[f"{ngff.PROBABILITIES}/{m}"][...]
        padded = np.pad(probabilities, ((0, 0), (0, -rows % f), (0, -cols % f)))
        np.testing.assert_array_equal(stored, padded.reshape(11, -1, f, padded.shape[2] // f, f).max(axis=(2, 4)))
    assert scale[0] == 1.0 and translation[0] == 0.0
    np.testing.assert_array_equal(group["scores"][...], result.scores()[...])
    assert group["scores"].metadata.dimension_names == ("c", "y", "x")


@pytest.mark.parametrize("depth", [1, 3, 11])
def test_the_pyramid_holds_blocks_of_classes_per_chunk_with_the_same_values(digits_onnx, tmp_path, monkeypatch, depth):
    """Each pyramid chunk holds as many classes as fill `CHUNK_BYTES` of a tile's cells (1 MiB: one chunk of every
    class for the digits, not 11 files per tile), and the values do not depend on how classes are blocked."""
    monkeypatch.setattr(ngff, "SMALLEST", 8)
    source = write_tiff(tmp_path / "slide.tif", canvas()[0])
    levels = {}
    for blocked in (False, True):
        if blocked:
            monkeypatch.setattr(ngff, "CHUNK_BYTES", depth * 32 * 32)  # `depth` classes of a 32 × 32-cell chunk
        result = scan(source, model=digits_onnx, out=tmp_path / f"map{blocked}.zarr", tile=128, force=True)
        group = zarr.open_group(str(result.path), mode="r")
        assert group["scores"].chunks[1:] == (32, 32)
        arrays = [group[f"{ngff.PROBABILITIES}/{m}"] for m in range(4)]
        assert arrays[0].chunks[0] == (depth if blocked else 11)
        levels[blocked] = [a[...] for a in arrays]
    for unblocked, blocked in zip(levels[False], levels[True], strict=True):
        np.testing.assert_array_equal(unblocked, blocked)


def test_an_ome_zarr_inputs_own_transform_carries_over(digits_onnx, tmp_path):
    """Scanning level 1 of an OME-Zarr whose levels have their own scale and translation (in mm): the map's scale is
    that level's times the stride, its translation that level's plus half a window less one pixel of it, in µm."""
    picture, _ = canvas()
    store = zarr.open_group(str(tmp_path / "input.zarr"), mode="w", zarr_format=2)
    for name, level in (("0", np.kron(picture, np.ones((2, 2), np.uint8))), ("1", picture)):
        store.create_array(name, data=level, chunks=(128, 128))
    scales, shifts = [[0.0005, 0.0005], [0.001, 0.001]], [[0.1, 0.2], [0.10025, 0.20025]]
    store.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a, "type": "space", "unit": "millimeter"}
                                                                for a in "yx"],
                                   "datasets": [{"path": p, "coordinateTransformations": [
                                       {"type": "scale", "scale": s}, {"type": "translation", "translation": t}]}
                                       for p, s, t in zip("01", scales, shifts, strict=True)]}]
    result = scan(tmp_path / "input.zarr", model=digits_onnx, out=tmp_path / "map.zarr", tile=128, level=1)
    dataset = zarr.open_group(str(result.path / ngff.PROBABILITIES), mode="r").attrs["ome"]["multiscales"][0][
        "datasets"][0]["coordinateTransformations"]
    assert dataset[0]["scale"] == pytest.approx([1.0, 1000 * 0.001 * STRIDE, 1000 * 0.001 * STRIDE])
    assert dataset[1]["translation"] == pytest.approx([0.0, 100.25 + 1.0 * (WINDOW - 1) / 2,
                                                       200.25 + 1.0 * (WINDOW - 1) / 2])


@pytest.mark.parametrize(("level", "pixel_um"), [(0, None), (1, 0.5)])
def test_qupath_geojson_and_ome_tiff_lie_on_level_0(digits_onnx, tmp_path, level, pixel_um):
    """The GeoJSON: QuPath detections (objectType, a classification with name and colour, the probability among
    the measurements), their boxes the CSV's times the downsample, around the placed digits. The OME-TIFF: the
    slide's level-0 size and pixel size, halved down to one tile, one named channel per class; at level 0 cell
    (i, j)'s value fills its square (one stride, centred on its window), zeros outside the map; at every level each
    class's hottest pixel lies in the square of its hottest cell."""
    import tifffile

    ome_types = pytest.importorskip("ome_types")
    picture, placed = canvas(size=384 * 2 // 2**level, count=12 // 2**level)
    d = 2**level
    base = np.kron(picture, np.ones((d, d), np.uint8))
    source = write_tiff(tmp_path / "slide.tif", base, levels=level + 1, resolution_um=pixel_um)
    chosen = sorted({label for label, _, _ in placed})[:2]
    result = scan(source, model=digits_onnx, out=tmp_path / "map.zarr", tile=128, level=level, classes=chosen,
                  detections=tmp_path / "found.csv", ome_tiff=tmp_path / "map.ome.tif", threshold=0.5)
    features = json.loads((tmp_path / "found.geojson").read_text())["features"]
    rows = (tmp_path / "found.csv").read_text().splitlines()[1:]
    assert len(features) == len(rows) == result.found > 0
    for feature, row in zip(features, rows, strict=True):
        props, fields = feature["properties"], row.split(",")
        assert props["objectType"] == "detection" and props["classification"]["name"] == fields[0]
        assert len(props["classification"]["color"]) == 3 and props["measurements"]["probability"] > 0.5
        top, left, bottom, right = (int(v) * d for v in fields[5:9])
        assert feature["geometry"]["coordinates"][0] == [[left, top], [right, top], [right, bottom], [left, bottom],
                                                         [left, top]]
        centre = ((top + bottom) / 2, (left + right) / 2)
        assert any(label == fields[0] and abs(centre[0] - (t + 12) * d) <= STRIDE * d and
                   abs(centre[1] - (le + 12) * d) <= STRIDE * d for label, t, le in placed)
    side, start = STRIDE * d, (WINDOW - STRIDE) // 2 * d  # cell square, in level-0 pixels
    probabilities = zarr.open_array(str(result.path / ngff.PROBABILITIES / "0"), mode="r")[[int(k) for k in chosen]]
    with tifffile.TiffFile(tmp_path / "map.ome.tif") as tif:
        assert tif.is_ome
        series = tif.series[0]
        shapes = [level.shape for level in series.levels]
        assert shapes == [(2, *s) for s in qupath.levels(base.shape)] and shapes[0] == (2, *base.shape)
        pixels = [series.levels[n].asarray() for n in range(len(shapes))]
        ome = tif.ome_metadata
    pixels_meta = ome_types.from_xml(ome).images[0].pixels
    assert [c.name for c in pixels_meta.channels] == chosen
    assert (pixels_meta.physical_size_x, pixels_meta.physical_size_y) == (pixel_um, pixel_um)
    assert (pixels_meta.size_y, pixels_meta.size_x) == base.shape
    cells_r, cells_c = probabilities.shape[1:]
    drawn = pixels[0][:, start:start + cells_r * side, start:start + cells_c * side]
    np.testing.assert_array_equal(drawn, np.kron(probabilities, np.ones((side, side), np.uint8)))
    assert not pixels[0][:, :start].any() and not pixels[0][:, :, :start].any()
    assert not pixels[0][:, start + cells_r * side:].any() and not pixels[0][:, :, start + cells_c * side:].any()
    for channel in range(2):
        hottest = np.argwhere(probabilities[channel] == probabilities[channel].max())
        for n, level_pixels in enumerate(pixels):
            r, c = np.unravel_index(np.argmax(level_pixels[channel]), level_pixels[channel].shape)
            assert level_pixels[channel, r, c] == probabilities[channel].max()
            centre = np.array([(r + 0.5) * 2**n, (c + 0.5) * 2**n])  # in level-0 pixel edges
            near = np.abs(centre - (start + (hottest + 0.5) * side)).max(axis=1) <= side / 2 + 2**n
            assert near.any(), (n, centre)


def test_a_store_of_the_previous_version_is_upgraded_by_resume(digits_onnx, tmp_path):
    """A finished store without the OME-Zarr map (what fc2conv wrote before): --resume computes no tile and adds the
    map, readable by ome-zarr-models; the placement it records is the one a new scan records."""
    picture, _ = canvas()
    source = write_tiff(tmp_path / "slide.tif", picture, resolution_um=0.5)
    out = tmp_path / "map.zarr"
    scan(source, model=digits_onnx, out=out, tile=128)
    group = zarr.open_group(str(out), mode="r+")
    recorded = group.attrs["fc2conv"]["placement"]
    group.attrs["fc2conv"] = {k: v for k, v in group.attrs["fc2conv"].items() if k not in ("placement", "outputs")}
    del group.attrs["ome"]
    del group[ngff.PROBABILITIES]
    meta = json.loads((out / "scores" / "zarr.json").read_text())
    meta.pop("dimension_names")
    (out / "scores" / "zarr.json").write_text(json.dumps(meta))
    assert Placement.from_attrs(group.attrs["fc2conv"]).to_attrs() == recorded
    resumed = scan(source, model=digits_onnx, out=out, tile=128, resume=True)
    assert resumed.computed == 0
    group = zarr.open_group(str(out), mode="r")
    models_v05.Image.from_zarr(group)
    models_v05.Image.from_zarr(group[ngff.PROBABILITIES])
    assert group.attrs["fc2conv"]["placement"] == recorded and ngff.finished(group)


def test_placement_in_pixels_and_corners():
    """The pixel-centre translation is (W − 1)/2 scanned pixels; the corner offset of cell 0's square, "half the
    window minus half a stride", is (W − S)/2; both times the downsample on level 0."""
    placement = Placement.area(downsample=(4.0, 4.0), pixel_size=None, stride=(4, 4), window=(32, 32),
                               base_size=(4000, 4000))
    assert placement.map_transform(0) == ((16.0, 16.0), (1.5 + 4 * 15.5, 1.5 + 4 * 15.5))
    (start, _), (side, _) = placement.cell_squares()
    assert (start, side) == (4 * 14.0, 16.0)
    assert placement.level_edges_to_base((10, 20)) == (40.0, 80.0)


def test_an_ome_tiff_of_too_many_classes_is_refused_before_anything_is_written(digits_onnx, tmp_path, monkeypatch):
    """Every OME-TIFF channel is a plane of the slide's level-0 size: more than `qupath.MAX_CHANNELS` classes (all
    999 of an ImageNet model, by default) is refused, naming --ome-tiff and --classes, before the scan begins."""
    from fc2conv.errors import ConversionError

    monkeypatch.setattr(qupath, "MAX_CHANNELS", 2)
    source = write_tiff(tmp_path / "slide.tif", canvas()[0])
    with pytest.raises(ConversionError, match=r"ome_tiff=.*map.ome.tif: 3 classes .* at most 2 with classes="):
        scan(source, model=digits_onnx, out=tmp_path / "map.zarr", classes=["1", "2", "3"],
             ome_tiff=tmp_path / "map.ome.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide.tif"]
