"""Timing for the benchmark scripts: one call's seconds, the medians of alternating rounds that every ratio in a
benchmark rests on (shared by `bench.py` and `bench_precision.py`), and the CPU's model name every figure is quoted
beside (`bench --tiled`, `bench --projection`, the timm sweep)."""

from __future__ import annotations

import platform
import statistics
import subprocess
import time
from pathlib import Path


def cpu_model_name() -> str:
    """The CPU's model name as `lscpu` gives it, else /proc/cpuinfo's, else Python's guess, else "unknown"."""
    name = ""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        name = next((line.split(":", 1)[1].strip() for line in lines.splitlines() if line.startswith("Model name")), "")
    except (OSError, subprocess.SubprocessError):  # no lscpu (macOS, minimal containers): read the kernel's list
        pass
    if not name:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return name or platform.processor() or "unknown"


def seconds(fn, *args) -> float:
    """Seconds `fn(*args)` took."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def median_rounds(naive, others, *, repeats: int, warmup: int) -> tuple[float, list[float]]:
    """Median seconds of the naive callable and of each of `others`, sampled over the same stretches of time.

    Each of `repeats` rounds times one naive run, then each of the others back to back for as long as the
    naive run took (at most 50 runs each). Timing on this 2-core virtual machine is noisy in bursts of about
    a second (the same dense pass ran 217-397 ms in one minute); a burst then lands on all sides alike and
    the medians of the faster ones rest on many samples. Alternating single runs let a burst hit the short
    dense runs unevenly, and timing each side in its own block let one burst cover a whole side.
    """
    for _ in range(warmup):
        naive()
        for other in others:
            other()
    naive_times: list[float] = []
    other_times: list[list[float]] = [[] for _ in others]
    for _ in range(repeats):
        naive_times.append(seconds(naive))
        for other, times in zip(others, other_times, strict=True):
            spent = 0.0
            for _ in range(50):
                times.append(seconds(other))
                spent += times[-1]
                if spent >= naive_times[-1]:
                    break
    return statistics.median(naive_times), [statistics.median(times) for times in other_times]
