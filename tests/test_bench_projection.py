"""`scripts/bench.py --projection --quick` runs end to end and prints the rows it promises (timings never asserted:
only how the printed numbers relate to each other, within their rounding); `scripts/bench_masked_area.py` counts
the tiles a masked scan computes as counting them by hand does."""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SIDE = 100_000
SLIDE_MP = 10_000  # a 100,000² slide


def _section(lines: list[str], start: str, header: str) -> list[list[str]]:
    """The rows under the first line beginning with `start`, after its header `header`, up to a blank line."""
    first = next(i for i, line in enumerate(lines) if line.startswith(start))
    assert lines[first + 1].split()[0] == header
    rows = []
    for line in lines[first + 2:]:
        if not line.strip() or line.startswith(("best reduced", "goal")):
            break
        rows.append(line.split())
    return rows


def _close(product: float, expected: float, slack: float) -> bool:
    """Whether two printed numbers' product is `expected`, `slack` being what their rounding can move it by."""
    return abs(product - expected) <= slack + 1e-9


def test_projection_quick_measures_paths_placement_sizes_and_projects():
    pytest.importorskip("zarr")
    pytest.importorskip("skimage")  # --mask auto and the synthetic slides
    pytest.importorskip("distributed")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--projection", "--quick", "--models",
                           "small"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    check_output(done.stdout)


def check_output(stdout: str) -> None:
    """What `--projection --quick --models small` prints: the rows of each table and how they agree."""
    lines = stdout.splitlines()
    assert lines[0].startswith("CPU: ") and " cores usable" in lines[0]
    assert lines[1].startswith("load average before:")

    paths = _section(lines, "paths:", "path")
    openvino = importlib.util.find_spec("openvino") is not None
    labels = [" ".join(row[:2]) for row in paths]
    assert labels == (["ort fp32", "ov fp32", "ov bf16", "ort int8", "ov int8", "ov int8+bf16"] if openvino
                      else ["ort fp32", "ort int8"])
    reference = float(paths[0][2])
    assert paths[0][3:5] == ["1.00×", "100.00%"]
    for row in paths:  # speed-up × the reference's MP/s = the row's MP/s (each printed to 0.01)
        rate, speedup = float(row[2]), float(row[3].rstrip("×"))
        assert _close(speedup * reference, rate, 0.005 * (speedup + reference) + 0.005)
        assert row[6] == ("yes" if float(row[4].rstrip("%")) >= 99 else "no")
    within = {" ".join(row[:2]): float(row[2]) for row in paths[1:] if row[6] == "yes" and row[1] != "fp32"}
    chosen = next(line for line in lines if line.startswith("best reduced precision within the budget: "))
    chosen = chosen.split(": ", 1)[1]
    if within:  # the fastest reduced precision within the budget
        assert chosen in within and within[chosen] == max(within.values())
    else:
        assert chosen == "none (fp32 kept)"
    best = chosen if within else "ort fp32"
    runs = ["fp32: ort fp32", f"best: {best}"]

    placement = _section(lines, "placement:", "run")
    assert [" ".join(row[:3]) for row in placement] == runs
    where = {}
    for row in placement:
        here, there = float(row[3]), float(row[4])
        assert row[5] in ("here", "workers")
        if abs(here - there) > 0.01:  # equal when printed: either
            assert row[5] == ("workers" if there > here else "here")
        where[" ".join(row[:3])] = row[5]

    throughput = _section(lines, "throughput:", "run")
    assert [(" ".join(row[:3]), row[3], row[4]) for row in throughput] == [
        (run, tissue, size) for size in ("512×512", "1024×1024") for tissue in ("100%", "40%") for run in runs]
    for row in throughput:
        tiles, computed, skipped = map(int, row[5:8])
        assert computed + skipped == tiles and computed > 0
        assert (row[8] == "-") == (row[3] == "100%")  # the mask's coverage, on the masked scans only
        if row[8] != "-":
            assert 25 <= float(row[8].rstrip("%")) <= 60  # the auto mask finds about the slide's 40% of tissue
        side = int(row[4].split("×")[0])
        area = side * side / 1e6
        assert 0 < float(row[9]) <= area + 0.05  # the image pixels the computed cells stand for, to 0.1 MP
        seconds, rate = float(row[10]), float(row[11])
        assert _close(rate * seconds, area, 0.005 * (rate + seconds) + 0.0001)  # slide MP / wall time

    projection = _section(lines, "projection as measured at 1024×1024:", "run")
    assert [(" ".join(row[:3]), row[3], row[4]) for row in projection] == [
        (run, tissue, where[run]) for tissue in ("100%", "40%") for run in runs]
    largest = {(" ".join(row[:3]), row[3]): row for row in throughput if row[4] == "1024×1024"}
    for row in projection:  # from the largest size's MP/s: minutes × MP/s × 60 = the slide's MP
        assert row[5] == largest[" ".join(row[:3]), row[3]][11]
        rate, minutes = float(row[5]), float(row[6])
        assert _close(minutes * rate * 60, SLIDE_MP, 60 * (0.05 * rate + 0.005 * minutes) + 1)

    mask = next(line for line in lines if line.startswith("mask at 100,000×100,000: tissue_slide.layout, 40% tissue"))
    found = re.search(r"tile (\d+), stride (\d+), window (\d+), halo \d+\+\d+×\d+\+\d+ cells: (\d+) tiles planned, "
                      r"(\d+) computed, (\d+) skipped; ([\d.]+) MP computed \(([\d.]+) MP read with the halo\)$", mask)
    tile, stride, window, planned, computed, skipped = map(int, found.groups()[:6])
    pixels, read = map(float, found.groups()[6:])
    assert (tile, stride, window) == (256, 4, 32)  # --quick's tile, the small CNN's geometry
    assert planned == math.ceil(((SIDE - window) // stride + 1) / (tile // stride)) ** 2  # its map is unpadded
    assert 0 < computed <= planned and computed + skipped == planned
    assert 0 < pixels <= computed * tile * tile / 1e6 + 0.05 and pixels <= SLIDE_MP and read >= pixels

    masked = _section(lines, "projection with the mask's tiles at 100,000×100,000:", "run")
    assert [(" ".join(row[:3]), row[3], row[4]) for row in masked] == [(run, "40%", where[run]) for run in runs]
    for row in masked:  # computed MP/s of the largest 40% run; minutes × that × 60 = the MP computed at 100,000²
        measured = largest[" ".join(row[:3]), "40%"]
        mp, seconds, rate, minutes = float(measured[9]), float(measured[10]), float(row[5]), float(row[6])
        assert _close(rate * seconds, mp, 0.005 * (rate + seconds) + 0.05)
        assert _close(minutes * rate * 60, pixels, 60 * (0.05 * rate + 0.005 * minutes) + 0.05)
    least = min(float(row[6]) for row in masked)
    goal = next(line for line in lines if line.startswith("goal"))
    assert goal in [f"goal (with the mask's tiles at 100,000²): 40% tissue in ≤ 30 min at the best path "
                    f"({' '.join(row[:3])}, {row[4]}): {'met' if least <= 30 else 'not met'} ({row[6]} min)"
                    for row in masked if float(row[6]) == least]
    assert lines[-1].startswith("load average after:")


def test_masked_area_counts_the_tiles_a_hand_count_finds(small_onnx):
    """bench_masked_area's plan and selection against a count by hand: a tile is computed when the layout block under
    one of its cells' window centres is tissue, and counts the pixels of the box around those cells."""
    pytest.importorskip("skimage")
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_masked_area import masked_area
    from tissue_slide import BLOCK, layout

    for side, tile, fraction in ((1024, 256, 0.4), (1000, 256, 0.2), (700, 128, 0.4)):
        area = masked_area(side, fraction, model=small_onnx, tile=tile)
        stride, window = area.stride[0], area.window[0]
        cells = (side - window) // stride + 1  # the small CNN's map is unpadded at its end
        centres = (np.arange(cells) * stride + window // 2) // BLOCK
        inside = layout((side, side), fraction, 0)[np.ix_(centres, centres)]
        per = tile // stride
        grid = math.ceil(cells / per)
        boxes = []
        for row in range(grid):
            for col in range(grid):
                part = inside[row * per:(row + 1) * per, col * per:(col + 1) * per]
                if part.any():
                    rows, cols = np.flatnonzero(part.any(axis=1)), np.flatnonzero(part.any(axis=0))
                    spans = ((row * per + rows[0], row * per + rows[-1] + 1),
                             (col * per + cols[0], col * per + cols[-1] + 1))
                    boxes.append([(first * stride, side if end == cells else end * stride) for first, end in spans])
        assert (area.planned, area.computed, area.skipped) == (grid * grid, len(boxes), grid * grid - len(boxes))
        assert area.pixels == sum((y1 - y0) * (x1 - x0) for (y0, y1), (x0, x1) in boxes)
        assert area.pixels <= area.read and area.computed > 0
