"""`fc2conv view`: refusals in a line with exit 2 (not a finished scan, no OME-Zarr map, a slide of another size,
no napari, bad flags), and, headless under xvfb-run with torch blocked, a screenshot whose heatmap pixels lie over
the placed digits of the class they are coloured for."""

from __future__ import annotations

import ctypes.util
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scan_helpers import export

from fc2conv.runtime import scan
from fc2conv.scan import ngff
from fc2conv.scan.outputs import class_colors
from models.digits_data import DIGIT, LABELS, load_split

zarr = pytest.importorskip("zarr")
ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("digits_slide", ROOT / "scripts" / "digits_slide.py")
digits_slide = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(digits_slide)

# The command line with torch (and, when asked, napari) unimportable: `python -c CLI NAPARI view …`.
CLI = """
import sys
blocked = ["torch", "torchvision"] + (["napari"] if sys.argv[1] == "no-napari" else [])
for name in blocked:
    sys.modules[name] = None
sys.argv = ["fc2conv"] + sys.argv[2:]
from fc2conv.cli import main
main()
"""
SIZE = 480


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """(store, slide, placed digits): a 480×480 two-level slide of 20 test-split digits, scanned with detections."""
    directory = tmp_path_factory.mktemp("view")
    _, images, _, labels = load_split()
    canvas, placed = digits_slide.grid_canvas(SIZE, images[:20], labels[:20], np.random.default_rng(2))
    slide = directory / "slide.tif"
    digits_slide.write_slide(slide, canvas, levels=2, tile=128)
    store = directory / "slide.zarr"
    scan(slide, model=export("digits", directory), out=store, tile=256, detections=directory / "found.csv")
    return store, slide, placed


def fc2conv(*args: str, napari: bool = True, display: bool = False, cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", CLI, "napari" if napari else "no-napari", *args]
    if display:
        command = ["xvfb-run", "-a", "-s", "-screen 0 1600x1200x24", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd)


def _unfinished(store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    group = zarr.open_group(str(copy), mode="r+")
    group.attrs["fc2conv"] = {**group.attrs["fc2conv"], "complete": False}
    return copy


def _without_map(store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    shutil.rmtree(copy / ngff.PROBABILITIES)
    return copy


def _smaller_slide(store: Path, tmp_path: Path) -> Path:
    path = tmp_path / "other.tif"
    digits_slide.write_slide(path, np.zeros((SIZE, SIZE - 8), np.uint8), levels=1)
    return path


# (name, make arguments from (store, slide, tmp_path), napari importable, what the one line says)
REFUSALS = [
    ("not-a-store", lambda st, sl, t: [str(sl)], True, "is not a scan written by fc2conv"),
    ("unfinished", lambda st, sl, t: [str(_unfinished(st, t))], True, "is an unfinished scan"),
    ("no-map", lambda st, sl, t: [str(_without_map(st, t))], True, "holds no OME-Zarr map"),
    ("slide-size", lambda st, sl, t: [str(st), "--slide", str(_smaller_slide(st, t))], True,
     "is 480×472 pixels at level 0, but the scan's source"),
    ("bad-region", lambda st, sl, t: [str(st), "--region", "1,2,3"], True, "--region takes 4 comma-separated"),
    ("bad-class", lambda st, sl, t: [str(st), "--classes", "cat"], True, "--classes: 'cat' is neither a label"),
    ("no-napari", lambda st, sl, t: [str(st), "--screenshot", str(t / "shot.png")], False,
     "pip install 'fc2conv[view]'"),
]


@pytest.mark.parametrize(("name", "make", "napari", "message"), REFUSALS, ids=[case[0] for case in REFUSALS])
def test_view_refuses_in_a_line(scanned, tmp_path, name, make, napari, message):
    store, slide, _ = scanned
    done = fc2conv("view", *make(store, slide, tmp_path), napari=napari)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert not (tmp_path / "shot.png").exists()


def _headless() -> str | None:
    """Why the screenshot cannot be taken here, or None."""
    if importlib.util.find_spec("napari") is None:
        return "napari is not installed (pip install 'fc2conv[view]'; the dev extra has it)"
    if shutil.which("xvfb-run") is None or ctypes.util.find_library("GL") is None:
        return ("xvfb-run or the GL library is missing: napari needs a display; scripts/setup.sh installs Debian's "
                "xvfb and GL libraries when run as root")
    return None


@pytest.mark.skipif(_headless() is not None, reason=_headless() or "")
def test_screenshot_heatmap_lies_over_the_placed_digits(scanned, tmp_path):
    """Under xvfb-run, torch blocked: `fc2conv view --screenshot` of a region of the slide. Every strongly coloured
    pixel (a heatmap, over a grey slide; no detection boxes drawn) lies on a placed digit, those of a probability
    of 0.87 or more on a digit whose label is the class of their colour, and they cover at least four digits."""
    store, _, placed = scanned
    empty = tmp_path / "none.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    region, canvas = (0, 0, 240, 360), (600, 900)  # level-0 pixels; the canvas shows them at 2.5×
    shot = tmp_path / "shot.png"
    done = fc2conv("view", str(store), "--region", ",".join(map(str, region)), "--size", ",".join(map(str, canvas)),
                   "--detections", str(empty), "--screenshot", str(shot), display=True)
    assert done.returncode == 0, done.stdout + done.stderr
    from PIL import Image

    with Image.open(shot) as picture:
        pixels = np.asarray(picture.convert("RGB"), float)
    assert pixels.shape[:2] == canvas
    chroma = pixels.max(axis=2) - pixels.min(axis=2)
    hot = np.argwhere(chroma >= 60)  # grey has none; the palette's least saturated colour, 116
    assert len(hot) >= 50, f"only {len(hot)} coloured pixels"
    palette = np.array(class_colors(LABELS), float)[:10]
    palette -= palette.mean(axis=1, keepdims=True)  # over a grey slide a colour keeps its direction off the grey axis
    norms = np.linalg.norm(palette, axis=1)
    zoom = min(canvas[0] / (region[2] - region[0]), canvas[1] / (region[3] - region[1]))
    centre = np.array([(region[0] + region[2]) / 2, (region[1] + region[3]) / 2])
    covered = set()
    for r, c in hot:
        colour = pixels[r, c] - pixels[r, c].mean()
        k = int(np.argmax(palette @ colour / norms))
        strength = palette[k] @ colour / norms[k] ** 2  # pixel = strength · colour + grey: 0.8 · p² in napari
        y, x = centre + (np.array([r, c]) + 0.5 - np.array(canvas) / 2) / zoom  # level-0 pixel edges (no µm here)
        under = [(d, t, le) for d, t, le in placed if t - 2 <= y <= t + DIGIT + 2 and le - 2 <= x <= le + DIGIT + 2]
        assert under, f"a pixel coloured for {k} at ({y:.1f}, {x:.1f}) lies on no placed digit"
        if strength >= 0.6:  # probability ≥ 0.87: the class of the digit it lies on
            assert under[0][0] == k, f"a pixel hot for {k} at ({y:.1f}, {x:.1f}) lies on a {under[0][0]}"
            covered.add(under[0])
    assert len(covered) >= 4
