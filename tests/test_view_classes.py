"""`fc2conv view` without --classes on a model of more classes than heatmap layers (issue 29, part 4): it shows the
classes that occur, ranked by detections or by the cells they win, leaves background out, says which it chose, and
still refuses an explicit --classes of more than 32.

The model is a 40-class colour classifier (the mean colour of a 32-pixel window, each class one colour; the classes
no colour picks score 0), scanned over bands of colour of different heights, so which classes occur, and how much,
is known. napari is replaced by a stand-in where the command must get past it."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_clean_refusal, invoke
from scan_helpers import write_tiff
from torch import nn

import fc2conv
from fc2conv.runtime import scan
from fc2conv.viewer import choice, prepare

zarr = pytest.importorskip("zarr")

CLASSES = 40
LABELS = ["background", *(f"c{k}" for k in range(1, CLASSES))]
# The class each colour makes certain, and the rows of the slide it fills (the rest is black: no class is sure).
BANDS = {(1, 1, 1): (0, 64, 0), (1, 0, 0): (64, 224, 7), (0, 1, 0): (224, 320, 23), (0, 0, 1): (320, 352, 31)}


def _colour_model() -> nn.Module:
    """On inputs normalised to ±1: class k's score is 32 where a window is all its colour (BANDS), −32 or less where
    one channel differs (black included); the classes no colour picks score 0."""
    model = nn.Sequential(nn.AvgPool2d(8), nn.Flatten(), nn.Linear(3 * 4 * 4, CLASSES))
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.zero_()
        for colour, (_, _, k) in BANDS.items():
            sign = torch.tensor([2.0 * c - 1 for c in colour]).view(3, 1, 1).expand(3, 4, 4)
            model[2].weight[k] = 2 * sign.reshape(-1)  # 16 cells × 2 × (channels alike − channels apart)
            model[2].bias[k] = -64.0
    return model.eval()


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> tuple[Path, Path]:
    """(model, slide): the colour classifier exported with LABELS, and a 384×160 slide of BANDS."""
    folder = tmp_path_factory.mktemp("view-classes")
    model = folder / "colours.onnx"
    fc2conv.export_onnx(fc2conv.convert(_colour_model(), (3, 32, 32)), model, labels=LABELS, mean=[0.5] * 3,
                        std=[0.5] * 3)
    image = np.zeros((384, 160, 3), np.uint8)
    for colour, (top, bottom, _) in BANDS.items():
        image[top:bottom] = np.array(colour, np.uint8) * 255
    return model, write_tiff(folder / "slide.tif", image, tile=64)


@pytest.fixture(scope="module")
def stores(colours, tmp_path_factory) -> dict[str, Path]:
    """The slide scanned without detections ("plain"), with them ("detected"), and a black slide ("dark")."""
    model, slide = colours
    folder = tmp_path_factory.mktemp("view-stores")
    dark = write_tiff(folder / "dark.tif", np.zeros((96, 96, 3), np.uint8), tile=64)
    scan(slide, model=model, out=folder / "plain.zarr", tile=128)
    scan(slide, model=model, out=folder / "detected.zarr", tile=128, detections=folder / "found.csv",
         classes=["c7", "c23"])
    scan(dark, model=model, out=folder / "dark.zarr", tile=128)
    return {name: folder / f"{name}.zarr" for name in ("plain", "detected", "dark")}


def test_without_classes_the_classes_that_cover_the_most_cells_are_shown(stores):
    request = prepare(stores["plain"])
    assert request.chosen == [7, 23, 31]  # red's band is the tallest, blue's the thinnest; white is background
    assert request.note == ("showing 3 of 40 classes, those most probable (at least 0.5) over the most cells: c7, "
                            "c23, c31; --classes to choose")
    assert choice.occurring(request.scan, None, most=2).chosen == [7, 23]


def test_detections_rank_the_classes_when_there_are_any(stores):
    request = prepare(stores["detected"])  # the scan detected only c7 and c23, as asked
    assert sorted(request.chosen) == [7, 23] and "those with the most detections" in request.note
    assert prepare(stores["detected"], classes=["c31"]).chosen == [31] and \
        prepare(stores["detected"], classes=["c31"]).note is None


def test_when_no_class_is_sure_anywhere_the_most_probable_are_shown(stores):
    request = prepare(stores["dark"])
    unsure = [k for k in range(1, CLASSES) if k not in (7, 23, 31)]  # alike: by index, background left out
    assert request.chosen == unsure[:choice.DEFAULT_LAYERS]
    assert "no class reaches a probability of 0.5 anywhere" in request.note
    assert request.note.startswith(f"showing {choice.DEFAULT_LAYERS} of 40 classes")


def test_a_model_whose_classes_all_occur_shows_them_all_without_a_note(pristine, tmp_path):
    """The digits CNN's ten digits all fit: as before, every class but background (when all occur)."""
    request = prepare(pristine / "slide.zarr")
    digits = len(request.scan.labels) - 1
    assert len(request.chosen) <= digits and (request.note is None) == (len(request.chosen) == digits)


def test_the_command_says_which_classes_it_chose(stores, tmp_path, monkeypatch):
    """With napari replaced by a stand-in that draws a black canvas: the note on stderr, the screenshot written."""
    import fc2conv.viewer.scene as viewer

    monkeypatch.setitem(sys.modules, "napari", types.ModuleType("napari"))
    monkeypatch.setenv("DISPLAY", ":99")
    drawn = []
    monkeypatch.setattr(viewer, "_draw", lambda napari, request: drawn.append(request.chosen) or
                        np.zeros((8, 8, 4), np.uint8))
    shot = tmp_path / "shot.png"
    done = invoke("view", stores["plain"], "--screenshot", shot)
    assert done.exit_code == 0, done.stderr
    assert done.stderr.strip() == ("note: showing 3 of 40 classes, those most probable (at least 0.5) over the most "
                                   "cells: c7, c23, c31; --classes to choose")
    assert drawn == [[7, 23, 31]] and shot.is_file() and f"wrote {shot}" in done.stdout
    quiet = invoke("view", stores["plain"], "--screenshot", tmp_path / "quiet.png", "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_more_than_32_classes_asked_for_are_still_refused(stores, view):
    asked = ",".join(str(k) for k in range(1, 34))
    assert_clean_refusal(view(stores["plain"], "--classes", asked), "--classes: 33 classes", "choose at most 32")
    assert_clean_refusal(view(stores["plain"]), "fc2conv view needs napari")  # the default passes every check
