"""`fc2conv view` on a hostile scan store (issue 19, section 4): entries that link out of it or are not files,
fields of its attributes that do not hold up, and a probability pyramid whose attributes, NGFF metadata or arrays
lie.

Each case corrupts a fresh copy of one real scan (tests/view_helpers.py) and runs `fc2conv view` in this process
with no display and napari unimportable: the refusal must be exit 2, a few lines naming the store and the entry or
field, and come before napari is imported or a display looked for (else the message would be napari's); nothing is
written and no input changes (every file of the copy, links and all, is compared before and after). A hang (a pipe
read as a file) fails the test instead of stopping the suite."""

from __future__ import annotations

import os
import shutil

import pytest
from view_helpers import (
    DROP,
    HEIGHT,
    INF,
    NAN,
    WIDTH,
    Copy,
    cases,
    first_chunk,
    linked_out,
    pyramid_field,
    refused,
    store_field,
)

from models.digits_data import LABELS

zarr = pytest.importorskip("zarr")


# --- links out of the store, at every depth, and entries that are not files ---------------------------------------

def _pipe(c: Copy):
    chunk = c.store / first_chunk(c.store)
    chunk.unlink()
    os.mkfifo(chunk)
    return [c.store]


def _dangling(c: Copy):
    os.symlink(c.store / "probabilities" / "nowhere", c.store / "probabilities" / "extra")
    return [c.store]


LINKS = [(f"{name or 'a chunk'}-links-out", linked_out(name or first_chunk),
          ("slide.zarr", "leads out of the store through a symbolic link"))
         for name in ("zarr.json", "probabilities", "probabilities/zarr.json", "probabilities/0",
                      "probabilities/1", "probabilities/1/zarr.json", "probabilities/0/c", "scores", None)]
LINKS += [("a-chunk-is-a-pipe", _pipe, ("is neither a folder nor a regular file",)),
          ("a-dangling-link", _dangling, ("probabilities/extra", "cannot be read"))]


@cases(LINKS)
def test_links_out_of_the_store_and_special_files_are_refused(copy, view, corrupt, fragments):
    refused(copy, view, corrupt, fragments)


# --- the fields of the store's attributes -------------------------------------------------------------------------

FIELDS = [
    ("unfinished", "complete", False, "is an unfinished scan"),
    ("labels-missing", "labels", DROP, "fc2conv.labels is missing"),
    ("labels-not-a-list", "labels", "0123456789", "fc2conv.labels must be a non-empty list"),
    ("labels-empty", "labels", [], "fc2conv.labels must be a non-empty list"),
    ("label-not-text", "labels", [*LABELS[:-1], 7], "label 10 is not a string"),
    ("label-forges-lines", "labels", ["0\r\nforged", *LABELS[1:]], "U+000D"),
    ("label-escape", "labels", ["\x1b[2J0", *LABELS[1:]], "U+001B"),
    ("label-reordered", "labels", ["\u202e0", *LABELS[1:]], "U+202E"),
    ("label-too-long", "labels", ["0" * 1001, *LABELS[1:]], "more than 1000"),
    ("labels-too-few", "labels", LABELS[:-1], "one channel per label of fc2conv.labels"),
    ("stride-missing", "stride", DROP, "fc2conv.stride is missing"),
    ("stride-zero", "stride", [0, 4], "fc2conv.stride must be two positive whole numbers"),
    ("stride-negative", "stride", [-4, 4], "fc2conv.stride must be"),
    ("stride-one-number", "stride", [4], "fc2conv.stride must be"),
    ("stride-text", "stride", "4", "fc2conv.stride must be"),
    ("stride-fraction", "stride", [4.5, 4], "fc2conv.stride must be"),
    ("stride-boolean", "stride", [True, 4], "fc2conv.stride must be"),
    ("stride-huge", "stride", [2**64, 4], "fc2conv.stride must be"),
    ("stride-other", "stride", [8, 8], "fc2conv.placement puts it at"),
    ("window-missing", "window", DROP, "fc2conv.window is missing"),
    ("window-nan", "window", [32, NAN], "fc2conv.window must be"),
    ("placement-missing", "placement", DROP, "fc2conv.placement is missing"),
    ("placement-not-an-object", "placement", [1, 1], "fc2conv.placement must be an object"),
    ("scale-zero", "placement.level_scale", [0, 1], "fc2conv.placement.level_scale must be two positive"),
    ("scale-negative", "placement.level_scale", [-1.0, 1.0], "fc2conv.placement.level_scale must be"),
    ("scale-nan", "placement.level_scale", [NAN, 1.0], "fc2conv.placement.level_scale must be"),
    ("scale-infinite", "placement.level_scale", [INF, 1.0], "fc2conv.placement.level_scale must be"),
    ("scale-text", "placement.level_scale", ["1", 1], "fc2conv.placement.level_scale must be"),
    ("scale-missing", "placement.level_scale", DROP, "fc2conv.placement.level_scale is missing"),
    ("scale-overflows", "placement.level_scale", [1e308, 1e308], "beyond floating point"),
    ("scale-other", "placement.level_scale", [2.0, 2.0], "fc2conv.placement puts it at"),
    ("base-scale-zero", "placement.base_scale", [0.0, 1.0], "fc2conv.placement.base_scale must be"),
    ("base-scale-negative", "placement.base_scale", [1.0, -1.0], "fc2conv.placement.base_scale must be"),
    ("base-scale-overflows", "placement.base_scale", [1e308, 1.0], "far corner at [inf"),
    ("translation-nan", "placement.level_translation", [NAN, 0.0], "fc2conv.placement.level_translation must be"),
    ("base-translation-text", "placement.base_translation", ["0", 0], "fc2conv.placement.base_translation must"),
    ("base-size-zero", "placement.base_size", [0, WIDTH], "fc2conv.placement.base_size must be"),
    ("base-size-short", "placement.base_size", [HEIGHT], "fc2conv.placement.base_size must be"),
    ("unit-number", "placement.unit", 5, "fc2conv.placement.unit must be"),
    ("unit-forged", "placement.unit", "µm\n", "fc2conv.placement.unit must be"),
    ("unit-other", "placement.unit", "micrometer", "fc2conv.placement.unit says 'micrometer'"),
    ("source-missing", "source", DROP, "fc2conv.source is missing"),
    ("source-path-missing", "source.path", DROP, "fc2conv.source.path is missing"),
    ("source-path-number", "source.path", 5, "fc2conv.source.path must be an absolute path"),
    ("source-path-relative", "source.path", "slide.tif", "fc2conv.source.path must be an absolute path"),
    ("source-path-nul", "source.path", "/tmp/slide\0.tif", "fc2conv.source.path must be"),
    ("source-path-forged", "source.path", "/tmp/slide.tif\nerror: forged", "fc2conv.source.path must be"),
    ("source-reader-unknown", "source.reader", "vips", "fc2conv.source.reader must be one of"),
    ("source-reader-a-list", "source.reader", ["tiff"], "fc2conv.source.reader must be one of"),
    ("outputs-not-an-object", "outputs", "found.geojson", "fc2conv.outputs must be an object"),
    ("geojson-number", "outputs.geojson", 5, "fc2conv.outputs.geojson must be an absolute path"),
    ("geojson-relative", "outputs.geojson", "found.geojson", "fc2conv.outputs.geojson must be"),
    ("geojson-reordered", "outputs.geojson", "/tmp/\u202egeojson", "fc2conv.outputs.geojson must be"),
]


@cases([(name, store_field(field, value), ("slide.zarr", fragment)) for name, field, value, fragment in FIELDS])
def test_every_field_of_the_store_is_checked(copy, view, corrupt, fragments):
    refused(copy, view, corrupt, fragments)


# --- the probability pyramid: its attributes, NGFF metadata and arrays ----------------------------------------------

def _garbage(entry: str):
    def corrupt(c: Copy):
        (c.store / entry).write_text("{not json")
        return [c.store]

    return corrupt


def _removed(entry: str):
    def corrupt(c: Copy):
        target = c.store / entry
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        return [c.store]

    return corrupt


MULTISCALE = "attributes.ome.multiscales.0"
DATASETS = f"{MULTISCALE}.datasets"
PYRAMID = [
    ("no-map", _removed("probabilities"), "holds no OME-Zarr map"),
    ("map-unfinished", pyramid_field("attributes.fc2conv.complete", False), "holds no OME-Zarr map"),
    ("map-metadata-garbage", _garbage("probabilities/zarr.json"), "cannot open it as a zarr group"),
    ("store-metadata-garbage", _garbage("zarr.json"), "is not a scan written by fc2conv"),
    ("levels-missing", pyramid_field("attributes.fc2conv.levels", DROP), "fc2conv.levels must list"),
    ("levels-not-a-list", pyramid_field("attributes.fc2conv.levels", "2"), "fc2conv.levels must list"),
    ("levels-more-than-exist", pyramid_field("attributes.fc2conv.levels", [[258, 43], [129, 22], [65, 11]]),
     "fc2conv.levels lists 3 levels"),
    ("levels-fewer", pyramid_field("attributes.fc2conv.levels", [[258, 43]]), "fc2conv.levels lists 1 levels"),
    ("level-zero-cells", pyramid_field("attributes.fc2conv.levels", [[0, 43], [0, 22]]), "fc2conv.levels[0] must be"),
    ("level-fraction", pyramid_field("attributes.fc2conv.levels", [[258.5, 43], [129, 22]]), "fc2conv.levels[0] must"),
    ("ome-missing", pyramid_field("attributes.ome", DROP), "without OME multiscales metadata"),
    ("datasets-empty", pyramid_field(DATASETS, []), "datasets must be a non-empty list"),
    ("datasets-one-missing", pyramid_field(f"{DATASETS}.1", DROP), "datasets lists 1 levels, but fc2conv.levels 2"),
    ("dataset-path-up", pyramid_field(f"{DATASETS}.1.path", "../scores"), "is not a path inside the store"),
    ("dataset-path-absolute", pyramid_field(f"{DATASETS}.1.path", "/etc"), "is not a path inside the store"),
    ("dataset-path-nowhere", pyramid_field(f"{DATASETS}.1.path", "7"), "names no array zarr can open"),
    ("datasets-swapped", pyramid_field(f"{DATASETS}.0.path", "1"),
     "datasets[0] is a uint8 array of shape (11, 129, 22)"),
    ("scale-zero", pyramid_field(f"{DATASETS}.0.coordinateTransformations.0.scale", [1.0, 0.0, 4.0]),
     "coordinateTransformations[0].scale must list 3 positive"),
    ("scale-negative", pyramid_field(f"{DATASETS}.1.coordinateTransformations.0.scale", [1.0, -8.0, 8.0]),
     "datasets[1].coordinateTransformations[0].scale must list 3 positive"),
    ("scale-missing", pyramid_field(f"{DATASETS}.1.coordinateTransformations.0", DROP),
     "datasets[1].coordinateTransformations place level 1 at None"),
    ("scale-other", pyramid_field(f"{DATASETS}.1.coordinateTransformations.0.scale", [1.0, 8.0, 16.0]),
     "datasets[1].coordinateTransformations place level 1"),
    ("translation-nan", pyramid_field(f"{DATASETS}.0.coordinateTransformations.1.translation", [0.0, NAN, 15.5]),
     "translation must list 3 finite"),
    ("translation-other", pyramid_field(f"{DATASETS}.0.coordinateTransformations.1.translation", [0.0, 0.0, 0.0]),
     "datasets[0].coordinateTransformations place level 0"),
    ("axes-other", pyramid_field(f"{MULTISCALE}.axes", ["y", "x", "c"]), "axes must be c, y, x"),
    ("axis-unit-other", pyramid_field(f"{MULTISCALE}.axes.1.unit", "millimeter"),
     "axes[1].unit is 'millimeter', but fc2conv.placement.unit says None"),
    ("axis-unit-forged", pyramid_field(f"{MULTISCALE}.axes.2.unit", "µm\x1b[2J"), "axes[2].unit is 'µm\\x1b[2J'"),
    ("array-uint16", pyramid_field("data_type", "uint16", "0/zarr.json"), "datasets[0] is a uint16 array"),
    ("array-float", pyramid_field("data_type", "float32", "1/zarr.json"), "datasets[1] is a float32 array"),
    ("array-channels", pyramid_field("shape", [10, 258, 43], "0/zarr.json"), "not uint8 of (11, 258, 43)"),
    ("array-shape", pyramid_field("shape", [11, 300, 43], "0/zarr.json"), "not uint8 of (11, 258, 43)"),
    ("array-a-group", pyramid_field("node_type", "group", "1/zarr.json"), "datasets[1]"),
    ("array-metadata-gone", _removed("probabilities/1/zarr.json"), "names no array zarr can open"),
    ("level-gone", _removed("probabilities/1"), "names no array zarr can open"),
]


@cases([(name, corrupt, ("slide.zarr", fragment)) for name, corrupt, fragment in PYRAMID])
def test_the_pyramid_and_its_metadata_are_checked(copy, view, corrupt, fragments):
    refused(copy, view, corrupt, fragments)
