"""`fc2conv view`'s own flags (issue 19, section 4): a --screenshot that is an input (even with --force), bad
--region, --size and --classes; what passes every check, and the hostile inputs named in a fresh process without a
display.

Each refusal corrupts a fresh copy of one real scan (tests/view_helpers.py) and runs `fc2conv view` with no display:
exit 2, a few lines naming the file or flag, before napari is imported or a display looked for (else the message
would be napari's); nothing is written and no input changes (every file of the copy, links and all, is compared
before and after). A sound store passes every check and stops only at napari being unimportable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_clean_refusal
from scan_helpers import ROOT
from view_helpers import (
    DROP,
    HEIGHT,
    WIDTH,
    Copy,
    cases,
    first_chunk,
    linked_out,
    pyramid_field,
    refused,
    store_field,
    tree,
)

from fc2conv.errors import ConversionError
from models.digits_data import LABELS

zarr = pytest.importorskip("zarr")


# --- --screenshot is never an input, even with --force ----------------------------------------------------------------

def _shot(target, *extra: str, force: bool = True):
    """`--screenshot` at `target(copy)`, with --force unless told."""
    def corrupt(c: Copy):
        return [c.store, *[a(c) if callable(a) else a for a in extra], "--screenshot", target(c),
                *(["--force"] if force else [])]

    return corrupt


def _other_slide(c: Copy) -> Path:
    other = c.folder / "other.tif"
    if not other.exists():
        shutil.copyfile(c.slide, other)
    return other


def _linked_slide(c: Copy) -> Path:
    os.symlink(c.slide, c.folder / "link.tif")
    return c.folder / "link.tif"


def _hard_linked_slide(c: Copy) -> Path:
    os.link(c.slide, c.folder / "hard.tif")
    return c.folder / "hard.tif"


def _existing(c: Copy) -> Path:
    (c.folder / "old.png").write_bytes(b"keep me")
    return c.folder / "old.png"


def _folder(c: Copy) -> Path:
    (c.folder / "pictures").mkdir()
    return c.folder / "pictures"


SCREENSHOTS = [
    ("the-recorded-slide", _shot(lambda c: c.slide), ("--screenshot", "is the input fc2conv.source.path")),
    ("the-recorded-slide-beside-slide", _shot(lambda c: c.slide, "--slide", _other_slide),
     ("--screenshot", "is the input fc2conv.source.path")),
    ("the-given-slide", _shot(_other_slide, "--slide", _other_slide), ("--screenshot", "is the input --slide")),
    ("a-link-to-the-slide", _shot(_linked_slide), ("--screenshot", "is the input fc2conv.source.path")),
    ("a-hard-link-to-the-slide", _shot(_hard_linked_slide), ("--screenshot", "is the input fc2conv.source.path")),
    ("the-recorded-geojson", _shot(lambda c: c.geojson), ("--screenshot", "is the input fc2conv.outputs.geojson")),
    ("the-given-detections", _shot(lambda c: c.csv, "--detections", lambda c: c.csv),
     ("--screenshot", "is the input --detections")),
    ("the-store", _shot(lambda c: c.store), ("--screenshot", "is the input OUT.zarr")),
    ("the-store-metadata", _shot(lambda c: c.store / "zarr.json"), ("--screenshot", "lies inside the input OUT.zarr")),
    ("a-level-metadata", _shot(lambda c: c.store / "probabilities" / "1" / "zarr.json"),
     ("--screenshot", "lies inside the input OUT.zarr")),
    ("a-new-file-in-the-store", _shot(lambda c: c.store / "shot.png"), ("--screenshot", "lies inside the input")),
    ("the-folder-of-the-store", _shot(lambda c: c.folder), ("--screenshot", "holds the input")),
    ("existing-without-force", _shot(_existing, force=False), ("old.png", "already exists")),
    ("a-folder", _shot(_folder), ("--screenshot", "is a directory")),
    ("in-no-folder", _shot(lambda c: c.folder / "nowhere" / "shot.png"), ("--screenshot", "does not exist")),
]


@cases(SCREENSHOTS)
def test_the_screenshot_is_never_an_input(copy, view, corrupt, fragments):
    refused(copy, view, corrupt, fragments)


# --- flags --------------------------------------------------------------------------------------------------------

def _flags(*args: str):
    return lambda c: [c.store, *args]


FLAGS = [
    ("region-three-numbers", _flags("--region", "1,2,3"), ("--region takes 4",)),
    ("region-words", _flags("--region", "a,b,c,d"), ("--region takes 4",)),
    ("region-negative", _flags("--region", "-1,0,10,10"), ("--region takes 4", "of at least 0")),
    ("region-empty", _flags("--region", "10,10,10,20"), ("--region is not a box", "got (10, 10, 10, 20)")),
    ("region-beyond", _flags("--region", f"0,0,{HEIGHT + 1},10"), ("is not a box", f"≤ {HEIGHT}")),
    ("size-zero", _flags("--size", "0,5"), ("--size takes 2",)),
    ("size-huge", _flags("--size", "100000,100000"), ("--size takes 2", "to 8192")),
    ("classes-unknown", _flags("--classes", "cat"), ("--classes: 'cat' is neither a label",)),
    ("classes-empty", _flags("--classes", ""), ("--classes: '' is neither a label",)),
]


@cases(FLAGS)
def test_flags_are_checked(copy, view, corrupt, fragments):
    refused(copy, view, corrupt, fragments)


# --- what passes, and where the checks stand ----------------------------------------------------------------------

def _link_inside(c: Copy):
    chunk = c.store / first_chunk(c.store)
    shutil.copyfile(chunk, c.store / "probabilities" / "kept")
    chunk.unlink()
    os.symlink(c.store / "probabilities" / "kept", chunk)
    return [c.store]


def _slide_gone(c: Copy):
    c.slide.unlink()
    c.geojson.unlink()
    return [c.store]


ACCEPTED = [
    ("untouched", lambda c: [c.store]),
    ("every-flag", lambda c: [c.store, "--slide", _other_slide(c), "--detections", c.csv, "--classes", "3,7",
                              "--region", "0,0,100,100", "--size", "300,200", "--screenshot", c.folder / "shot.png"]),
    ("a-link-inside-the-store", _link_inside),
    ("slide-and-detections-gone", _slide_gone),
]


@pytest.mark.parametrize("make", [case[1] for case in ACCEPTED], ids=[case[0] for case in ACCEPTED])
def test_a_sound_store_passes_every_check(copy, view, make):
    """Each hostile case of the view refusal tests (this module, test_view_store_refusals.py and
    test_view_input_refusals.py) would reach this point if its check were missing: here the first refusal is that
    napari cannot be imported, so every check passed, and ran before napari was looked for."""
    args = make(copy)
    before = tree(copy.folder)
    assert_clean_refusal(view(*args), "fc2conv view needs napari")
    assert tree(copy.folder) == before


def test_prepare_gives_the_checked_request(copy, monkeypatch):
    from fc2conv.viewer import prepare, show

    request = prepare(copy.store, classes=["3"], region=(0, 0, 10, 10))
    assert request.scan.labels == LABELS and request.chosen == [3]
    assert [tuple(a.shape) for a in request.scan.pyramid] == [(11, 258, 43), (11, 129, 22)]
    assert all(np.dtype(a.dtype) == np.uint8 for a in request.scan.pyramid)
    assert [level.shape for level in request.levels] == [(HEIGHT, WIDTH), (HEIGHT // 2, WIDTH // 2)]
    assert len(request.detections.labels) == len(json.loads(copy.geojson.read_text())["features"])
    assert not hasattr(request.scan, "attrs")  # nothing unchecked of the store is within reach
    monkeypatch.setitem(sys.modules, "napari", None)
    with pytest.raises(ConversionError, match=r"is the input fc2conv\.source\.path"):
        show(copy.store, screenshot=copy.slide, force=True)


# The issue's examples, in a fresh process without a display (napari importable): each named, none a traceback.
ISSUE = [
    ("level-links-out", linked_out("probabilities/0"), "leads out of the store"),
    ("zero-scale", store_field("placement.base_scale", [0.0, 1.0]), "fc2conv.placement.base_scale"),
    ("negative-scale", store_field("placement.level_scale", [-1.0, -1.0]), "fc2conv.placement.level_scale"),
    ("no-stride", store_field("stride", DROP), "fc2conv.stride is missing"),
    ("extra-level", pyramid_field("attributes.fc2conv.levels", [[258, 43], [129, 22], [65, 11]]), "fc2conv.levels"),
    ("screenshot-the-slide", _shot(lambda c: c.slide), "is the input fc2conv.source.path"),
]


@pytest.mark.parametrize(("corrupt", "fragment"), [case[1:] for case in ISSUE], ids=[case[0] for case in ISSUE])
def test_without_a_display_the_hostile_input_is_named(copy, corrupt, fragment):
    args = [str(a) for a in corrupt(copy)]
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    before = tree(copy.folder)
    done = subprocess.run([sys.executable, "-c", "from fc2conv.cli import main; main()", "view", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert_clean_refusal(done, fragment)
    assert "needs a display" not in done.stderr
    assert tree(copy.folder) == before
