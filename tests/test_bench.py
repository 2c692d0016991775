"""scripts/bench.py runs end to end and prints the rows it promises (its timings are never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(*args: str) -> list[list[str]]:
    """The table rows bench.py prints, split on whitespace, after checking it exits 0."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model"))
    return [line.split() for line in lines[header + 1:]]


def test_latency_rows_give_a_ratio_per_model():
    rows = _bench("--models", "alexnet", "--repeats", "1", "--warmup", "0")
    assert [row[0] for row in rows] == ["alexnet"]
    original, converted, ratio = map(float, rows[0][1:])
    assert abs(ratio - converted / original) < 0.01


def test_sliding_rows_compare_both_runtimes_on_the_issue_setting():
    rows = _bench("--sliding", "--models", "alexnet", "--repeats", "1", "--warmup", "0")
    assert [(row[0], row[1], row[3]) for row in rows] == [("alexnet", "500×500", "torch"),
                                                          ("alexnet", "500×500", "onnxruntime")]
    for row in rows:
        windows, naive, dense = int(row[2]), float(row[4]), float(row[5])
        speedup, flop_ratio = float(row[6].rstrip("×")), float(row[7].rstrip("×"))
        assert windows == 9 * 9  # (500 − 224) // 32 + 1 cells a side at AlexNet's stride of 32
        assert abs(speedup - naive / dense) / speedup < 0.01
        # The dense pass computes the backbone once over the image plus the head on 81 windows; the naive
        # window computes both 81 times. Measured: 7.08.
        assert 6.5 < flop_ratio < 7.5


def test_tiled_rows_compare_tiles_workers_and_memory():
    """`--tiled` on small sizes: the CPU first, then each section's rows; ratios are the quotients of the times beside
    them."""
    pytest.importorskip("zarr")  # the scan extra: Python 3.11 or later
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--tiled", "--models", "digits",
                           "--image", "384", "--tile", "256", "--workers-image", "512", "--rss-sizes", "256", "512",
                           "--repeats", "1"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("CPU: ") and "cores usable" in lines[0]
    start = next(i for i, line in enumerate(lines) if line.startswith("tiled against one pass")) + 2
    rows = [line.split() for line in lines[start:start + 3]]
    assert [row[:4] for row in rows] == [["digits", "384×384", "0+0", threads] for threads in ("1", "1", rows[2][3])]
    assert [" ".join(row[4:6]) for row in rows] == ["this process", "one worker", "one worker"]
    for row in rows:
        once, tiles, whole = map(float, row[6:9])
        for shown, seconds in ((row[9], tiles), (row[10], whole)):  # within the rounding of the printed seconds
            ratio = float(shown.rstrip("×"))
            assert abs(ratio - seconds / once) <= ratio * (0.005 / once + 0.005 / seconds) + 0.01
        assert tiles <= whole and float(row[11].rstrip("×")) > 0  # CPU seconds over one pass's
        assert float(row[12].rstrip("×")) >= 1  # tiles read at least the image
    start = next(i for i, line in enumerate(lines) if line.startswith("workers (digits, 512×512")) + 2
    workers = [line.split() for line in lines[start:start + 3]]
    assert [row[:2] for row in workers] == [["1", "1"], ["2", "1"], ["1", workers[2][1]]] and workers[0][-1] == "1.00×"
    memory = lines[lines.index("peak memory (digits, one process)") + 2:][:2]
    assert [row.split()[0] for row in memory] == ["256×256", "512×512"]
    assert all(float(row.split()[1]) > 50 for row in memory)  # MB: Python, numpy, onnxruntime and zarr at least
    assert any(line.startswith("growth 512² / 256²:") for line in lines) and lines[-1].startswith("load average")


def test_density_rows_compare_one_dilated_pass_with_stitching_and_naive_windows():
    """`--density` on the digits CNN at a tiny size, both runtimes: one row per runtime and allowed r, the others
    named; speed-ups are the quotients of the times beside them."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--density", "--models", "digits",
                           "--density-size", "40", "48", "--densities", "2", "4", "3", "--onnxruntime",
                           "--repeats", "1", "--warmup", "0"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model"))
    rows = [line.split() for line in lines[header + 1:] if not line.startswith("skipped")]
    assert [(row[0], row[1], row[2], row[3], row[4]) for row in rows] == [
        ("digits", "40×48", runtime, r, stride) for r, stride in (("2", "2"), ("4", "1"))
        for runtime in ("torch", "onnxruntime")]
    assert lines[-1] == "skipped: digits does not allow r=3 (allowed: [2, 4])"
    for row in rows:
        r = int(row[3])
        cells, windows = tuple(map(int, row[5].split("×"))), int(row[6])
        # Padding-free: (40 − 32) / (4 / r) + 1 by (48 − 32) / (4 / r) + 1 windows, one per cell.
        assert cells == (2 * r + 1, 4 * r + 1) and windows == cells[0] * cells[1]
        dilated, stitch, naive = float(row[7]), float(row[8]), float(row[11])
        for speedup, slower in ((row[9], stitch), (row[12], naive)):
            shown = float(speedup.rstrip("×"))
            if min(dilated, slower) < 0.1:  # a pass under 0.05 ms prints as 0.0: its quotient cannot be recomputed
                assert shown > 0
                continue
            assert abs(shown - slower / dilated) <= shown * (0.05 / dilated + 0.05 / slower) + 0.01
        stitch_flops, naive_flops = float(row[10].rstrip("×")), float(row[13].rstrip("×"))
        # r² passes repeat the first layers that one dilated pass shares, and every crop repeats all layers.
        assert 1 < stitch_flops < r * r and naive_flops > stitch_flops


def test_precision_rows_compare_every_path_with_onnxruntime_fp32():
    """`--precision --quick` on the digits CNN: five latency rows and two of --precision auto (speed-ups are the
    quotients of the times), five scan rows with the tiled map against one pass, and the kernels of each path."""
    pytest.importorskip("zarr")
    pytest.importorskip("openvino")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--precision", "--quick", "--models",
                           "digits"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model"))
    rows = [line.split() for line in lines[header + 1:header + 8]]
    assert [row[3] + " " + row[4] for row in rows] == ["ort fp32", "ov fp32", "ov bf16", "ort int8", "ov int8",
                                                       "auto fp32", "auto int8"]
    # --precision auto chose one of its file's paths (which one is the machine's timing, not asserted)
    assert rows[5][5] in ("ort/fp32", "ov/fp32", "ov/bf16", "ov/fp16") and rows[6][5].split("/")[1].startswith("int8")
    reference = float(rows[0][6])
    for row in rows:
        assert row[:3] == ["digits", "160×160", "1"]
        ms, speedup = float(row[6]), float(row[7].rstrip("×"))
        assert abs(speedup - reference / ms) <= speedup * (0.05 / ms + 0.05 / reference) + 0.01
        assert float(row[8].rstrip("%")) > 99 and float(row[9]) < 0.2  # argmax agreement, max |Δp|
        assert 0 <= float(row[10].rstrip("%")) < 20  # max |Δscore|, % of the largest score
    scans = lines[lines.index(next(line for line in lines if line.startswith("scan "))) + 2:][:5]
    assert [row.split()[3:5] for row in scans] == [["ort", "fp32"], ["ov", "fp32"], ["ov", "bf16"], ["ort", "int8"],
                                                  ["ov", "int8"]]
    assert all(float(row.split()[-1]) == 0 for row in scans)  # tiled equals one pass on every path (measured)
    kernels = lines[lines.index(next(line for line in lines if line.startswith("kernels"))) + 1:]
    assert [row.split()[1:3] for row in kernels] == [["ort", "fp32"], ["ov", "fp32"], ["ov", "bf16"], ["ort", "int8"],
                                                    ["ov", "int8"]]
