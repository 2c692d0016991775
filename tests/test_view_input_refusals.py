"""`fc2conv view` on a slide or detections file that lies (issue 19, section 4): the slide the store records and
the one --slide gives, each checked as the scanner reads it; the GeoJSON the store records and --detections (GeoJSON
or CSV), checked row by row.

Each case corrupts a fresh copy of one real scan (tests/view_helpers.py) and runs `fc2conv view` in this process
with no display and napari unimportable: the refusal must be exit 2, a few lines naming the file and the field or
flag, and come before napari is imported or a display looked for; nothing is written and no input changes (every
file of the copy, links and all, is compared before and after). A hang (a pipe read as a file) fails the test
instead of stopping the suite."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from scan_helpers import noise, write_tiff
from view_helpers import (
    DROP,
    HEIGHT,
    NAN,
    WIDTH,
    Copy,
    cases,
    refused,
    set_field,
)

zarr = pytest.importorskip("zarr")


# --- the slide: the one the store records, and --slide --------------------------------------------------------------

def _recorded(make):
    def corrupt(c: Copy):
        c.slide.unlink()
        make(c.slide)
        return [c.store]

    return corrupt


def _given(make):
    def corrupt(c: Copy):
        other = c.folder / "other.tif"
        make(other)
        return [c.store, "--slide", other]

    return corrupt


def _reader(name: str):
    def corrupt(c: Copy):
        set_field(c.store / "zarr.json", "attributes.fc2conv.source.reader", name)
        return [c.store]

    return corrupt


def _truncated(path: Path) -> None:
    write_tiff(path, noise(HEIGHT, WIDTH, channels=1), levels=2, tile=64)
    path.write_bytes(path.read_bytes()[:300])


def _smaller(path: Path) -> None:
    write_tiff(path, noise(HEIGHT, WIDTH - 8, channels=1), tile=64)


SLIDE_FILES = [
    ("a-folder", Path.mkdir, "is a folder"),
    ("a-pipe", os.mkfifo, "neither a file nor a folder"),
    ("garbage", lambda p: p.write_bytes(b"not a slide at all"), ""),
    ("truncated", _truncated, ""),
    ("another-size", _smaller, f"is {HEIGHT}×{WIDTH - 8} pixels at level 0"),
]
SLIDES = [(f"recorded-{name}", _recorded(make), ("fc2conv.source.path", fragment))
          for name, make, fragment in SLIDE_FILES]
SLIDES += [(f"given-{name}", _given(make), ("--slide", fragment)) for name, make, fragment in SLIDE_FILES
           if name != "a-folder"]  # a folder given is read as zarr: see given-empty-folder
SLIDES += [("given-empty-folder", _given(Path.mkdir), ("--slide", "cannot open it as a zarr")),
           ("given-missing", lambda c: [c.store, "--slide", c.folder / "nowhere.tif"], ("--slide", "no such file")),
           ("recorded-reader-lies", _reader("zarr"), ("fc2conv.source.path", "cannot open it as a zarr"))]


@cases(SLIDES)
def test_the_slide_is_checked_as_the_scanner_reads_it(copy, view, corrupt, fragments):
    refused(copy, view, corrupt, fragments)


# --- detections: the GeoJSON the store records, and --detections (GeoJSON or CSV) -----------------------------------

def _feature(change):
    """The scan's GeoJSON with its first feature changed by `change(feature)` (or replaced by text)."""
    def make(c: Copy) -> str:
        if isinstance(change, str):
            return change
        document = json.loads(c.geojson.read_text())
        change(document["features"][0])
        return json.dumps(document)

    return make


def _properties(**values):
    return _feature(lambda feature: feature["properties"].update(values))


def _ring(ring):
    return _feature(lambda feature: feature["geometry"].update(coordinates=[ring]))


def _row(**values):
    """The scan's CSV with its first row's columns changed (a column set to DROP is removed)."""
    def make(c: Copy) -> str:
        header, row, *rest = c.csv.read_text().splitlines()
        fields = dict(zip(header.split(","), row.split(","), strict=True))
        fields.update(values)
        fields = {k: v for k, v in fields.items() if v is not DROP}
        quoted = [f'"{v}"' if any(ch in v for ch in ',\r\n"') else v for v in fields.values()]
        return "\n".join([",".join(fields), ",".join(quoted), *rest]) + "\n"

    return make


GEOJSONS = [
    ("not-json", _feature("{"), "not the CSV or GeoJSON"),
    ("a-list", _feature("[]"), "not the CSV or GeoJSON"),
    ("nested-deeply", _feature("[" * 100_000), "not the CSV or GeoJSON"),
    ("features-not-a-list", _feature('{"features": "x"}'), "features must be a list"),
    ("no-geometry", _feature(lambda feature: feature.pop("geometry")), "not the CSV or GeoJSON"),
    ("ring-ragged", _ring([[160, 596], [192]]), "features[0].geometry.coordinates[0] must be a ring"),
    ("ring-nan", _ring([[160, NAN], [192, 628]]), "features[0].geometry.coordinates[0] must be a ring"),
    ("ring-text", _ring([["160", 596], [192, 628]]), "features[0].geometry.coordinates[0] must be a ring"),
    ("label-forges-lines", _properties(label="3\r\nforged"), "U+000D"),
    ("label-escape", _properties(label="\x1b[2J3"), "U+001B"),
    ("label-reordered", _properties(label="\u202e3"), "U+202E"),
    ("label-not-text", _properties(label=3), "is not a string"),
    ("label-not-the-class", _properties(label="7"), "class 3 labelled '7' is not a class of the scan"),
    ("class-beyond", _properties(class_index=99, label="3"), "class 99"),
    ("class-negative", _properties(class_index=-1), "class -1"),
    ("class-boolean", _properties(class_index=True), "class_index must be a whole number"),
    ("class-fraction", _properties(class_index=3.0), "class_index must be a whole number"),
    ("score-nan", _properties(score=NAN), "score must be a finite number"),
    ("score-text", _properties(score="0.5"), "score must be a finite number"),
    ("score-above-one", _properties(score=1.5), "is not a probability"),
]
CSVS = [
    ("column-missing", _row(score=DROP), "the columns score are missing"),
    ("box-nan", _row(top="nan"), "line 2: top must be a finite number"),
    ("box-inverted", _row(top="700"), "ends before it starts"),
    ("label-forges-lines", _row(label="3\r\nforged"), "U+000D"),
    ("label-escape", _row(label="\x1b[2J3"), "U+001B"),
    ("class-text", _row(class_index="three"), "line 2: class_index must be a whole number"),
    ("class-beyond", _row(class_index="11"), "class 11"),
    ("score-infinite", _row(score="inf"), "line 2: score must be a finite number"),
    ("field-huge", _row(label="3" * 200_000), "not the CSV or GeoJSON"),
    ("not-utf8", lambda c: "\udcff", "not the CSV or GeoJSON"),
]


def _detections(make, name: str, *, default: bool):
    def corrupt(c: Copy):
        target = c.geojson if default else c.folder / name
        target.write_bytes(make(c).encode("utf-8", "surrogateescape"))
        return [c.store] if default else [c.store, "--detections", target]

    return corrupt


DETECTIONS = [(f"geojson-{name}", _detections(make, "given.geojson", default=False), ("--detections", fragment))
              for name, make, fragment in GEOJSONS]
DETECTIONS += [(f"csv-{name}", _detections(make, "given.csv", default=False), ("--detections", fragment))
               for name, make, fragment in CSVS]
DETECTIONS += [(f"recorded-geojson-{name}", _detections(make, "", default=True),
                ("fc2conv.outputs.geojson", fragment)) for name, make, fragment in GEOJSONS[::3]]


def _detections_file(make):
    def corrupt(c: Copy):
        target = c.folder / "given.geojson"
        make(target)
        return [c.store, "--detections", target]

    return corrupt


def _beyond_floats(c: Copy):
    """Finite level-0 pixels that overflow once placed at 4 µm a pixel."""
    set_field(c.store / "zarr.json", "attributes.fc2conv.placement.base_scale", [4.0, 4.0])
    document = json.loads(c.geojson.read_text())
    document["features"][0]["geometry"]["coordinates"] = [[[160, -1e308], [192, 1e308]]]
    c.geojson.write_text(json.dumps(document))
    return [c.store]


DETECTIONS += [("recorded-geojson-beyond-floats", _beyond_floats, ("fc2conv.outputs.geojson", "beyond floating")),
               ("given-a-folder", _detections_file(Path.mkdir), ("--detections", "is not a regular file")),
               ("given-a-pipe", _detections_file(os.mkfifo), ("--detections", "is not a regular file")),
               ("given-missing", _detections_file(lambda p: None), ("--detections", "No such file"))]


@cases(DETECTIONS)
def test_detections_are_checked_row_by_row(copy, view, corrupt, fragments):
    refused(copy, view, corrupt, fragments)
