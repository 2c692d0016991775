"""The scanning demo: its slide keeps digits apart at recorded places, its scoring counts what it should, and
(with `-m slow`) `scripts/scan_demo.sh` runs end to end and meets its targets."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from models.digits_data import DIGIT, MARGIN

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("digits_slide", ROOT / "scripts" / "digits_slide.py")
digits_slide = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(digits_slide)


def test_slide_places_every_digit_once_apart_and_where_recorded():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (40, DIGIT, DIGIT), dtype=np.uint8)
    canvas, placed = digits_slide.grid_canvas(800, images, np.arange(40) % 10, rng)
    assert len(placed) == 40 and canvas.shape == (800, 800)
    for index, (label, top, left) in enumerate(placed):
        assert label == index % 10
        np.testing.assert_array_equal(canvas[top:top + DIGIT, left:left + DIGIT], images[index])
    for a, (_, t1, l1) in enumerate(placed):
        for _, t2, l2 in placed[a + 1:]:
            assert max(abs(t1 - t2), abs(l1 - l2)) >= DIGIT + 8  # at least 8 pixels of black between two digits
    assert int((canvas > 0).sum()) == 40 * DIGIT * DIGIT


def test_match_counts_right_wrong_and_missed():
    placed = [{"digit": 3, "top": 100, "left": 200}, {"digit": 7, "top": 300, "left": 40}]

    def found(label, top, left, score=0.9):
        return {"label": label, "top": str(top - MARGIN), "left": str(left - MARGIN), "score": str(score)}

    right, wrong, missed = digits_slide.match(placed, [
        found("3", 103, 196),            # right: the label, 3 and 4 pixels off
        found("3", 101, 200, 0.5),       # the same digit twice: the weaker one is a false alarm
        found("1", 300, 40),             # the 7 read as 1: a false alarm, and the 7 is missed
    ])
    assert right == 1 and [d["label"] for d in wrong] == ["1", "3"]
    assert [(p["digit"], beside["label"]) for p, beside in missed] == [(7, "1")]
    assert digits_slide.match(placed, [found("3", 105, 200)])[0] == 0  # 5 pixels off is not found


@pytest.mark.slow
def test_scan_demo_script_meets_its_targets():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "scan_demo.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    recall, precision = (float(re.search(rf"{name}\s+([\d.]+)%", done.stdout).group(1))
                         for name in ("recall", "precision"))
    assert recall >= 97 and precision >= 97
    skipped = int(re.search(r"(\d+) of 64 tiles skipped \(never read or computed\)", done.stdout).group(1))
    assert skipped > 0 and f"64 tiles, {64 - skipped} computed" in done.stdout
    assert float(re.search(r"max relative difference (\S+) ", done.stdout).group(1)) <= 1e-5
