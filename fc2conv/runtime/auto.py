"""`--precision auto`: the fastest path for this file on this CPU at the size being run, within the drift budget.

The paths: onnxruntime and OpenVINO in float32, and OpenVINO in each reduced precision this CPU has the units for
(`fc2conv.runtime.cpu`: bf16 where it would not run as fp32, fp16 where it would not run as bf16); an int8 file
runs on both backends, its float parts in fp32 (or bf16 on OpenVINO). `--backend openvino` keeps OpenVINO's only.
Dropped: a reduced precision whose best class agrees with float32's on fewer than `min_agreement` of the cells of
the input being chosen for (a scan: its first tile), and an int8 file in onnxruntime where it would saturate
(`fc2conv.runtime.cpu.int8_caution`). The rest are timed on that input in alternating rounds, within about
`BUDGET_SECONDS` (at least one round), and the fastest median wins: float32 in onnxruntime is among them, so auto is
never slower than it, but for noise.

The choice is cached per file (its SHA-256), CPU (class and flags), input size, threads and backend versions, in
`$FC2CONV_CACHE_DIR` or `~/.cache/fc2conv/precision.json`, so the next run of the same file at the same size does not
time again. Every result records what ran and how it was chosen (`Choice.record`). No torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .cpu import detect
from .files.atomic import atomic_output
from .files.paths import file_sha256

__all__ = ["BUDGET_SECONDS", "Choice", "Chooser", "cache_path"]

BUDGET_SECONDS = 3.0
_MAX_ROUNDS = 5


@dataclass(frozen=True)
class Choice:
    """The path chosen for one input size: its backend and precision, the median milliseconds of every path timed,
    the paths dropped and why, and whether it came from the cache."""

    backend: str
    precision: str
    timings: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    cached: bool = False

    def record(self) -> dict[str, Any]:
        return {"chosen_by": "auto", "timings_ms": self.timings, "dropped": self.dropped, "cached": self.cached}


def cache_path() -> Path:
    root = os.environ.get("FC2CONV_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fc2conv")
    return Path(root) / "precision.json"


class Chooser:
    """Chooses, and keeps open, the path for each input size of one model file (see the module docstring)."""

    def __init__(self, path: Path, *, openvino_only: bool, threads: int | None, min_agreement: float) -> None:
        self.path, self.openvino_only, self.threads, self.min_agreement = path, openvino_only, threads, min_agreement
        self._sessions: dict[tuple[str, str], Any] = {}
        self._choices: dict[tuple[int, ...], Choice] = {}

    def choose(self, x: np.ndarray, reference) -> tuple[Choice, Any]:
        """The choice for inputs of `x`'s size and the model open on that path; `reference` is the file open in
        onnxruntime float32 (a `DenseModel`), which the drift of a reduced precision is measured against."""
        size = tuple(int(d) for d in x.shape[2:])
        if size not in self._choices:
            key = self._key(size)
            found = _read_cache().get(key)
            if found is not None and (found["backend"], found["precision"]) in self._paths(reference):
                choice = Choice(found["backend"], found["precision"], found["timings"], found["dropped"], cached=True)
            else:
                choice = self._measure(x, reference)
                _write_cache(key, {"backend": choice.backend, "precision": choice.precision,
                                   "timings": choice.timings, "dropped": choice.dropped})
            self._choices[size] = choice
        choice = self._choices[size]
        return choice, self._open(choice.backend, choice.precision, reference)

    def _paths(self, reference) -> list[tuple[str, str]]:
        from .cpu import int8_caution

        cpu = detect()
        paths = [] if self.openvino_only else [("onnxruntime", "fp32")]
        if _installed("openvino"):
            paths.append(("openvino", "fp32"))
            paths += [("openvino", p) for p in ("bf16", "fp16") if cpu.runs(p) == p]
        if int8_caution(reference.metadata, "onnxruntime", str(self.path), cpu) and ("onnxruntime", "fp32") in paths:
            paths.remove(("onnxruntime", "fp32"))  # an 8-bit int8 file would saturate here
        return paths or [("onnxruntime", "fp32")]

    def _open(self, backend: str, precision: str, reference):
        if (backend, precision) == ("onnxruntime", "fp32"):  # the reference is open in it
            return reference.engine
        if (backend, precision) not in self._sessions:
            from .backends import open_session

            self._sessions[backend, precision] = open_session(self.path, backend=backend, precision=precision,
                                                              threads=self.threads)
        return self._sessions[backend, precision]

    def _measure(self, x: np.ndarray, reference) -> Choice:
        expected = reference.engine.run(x)
        engines, dropped = {}, {}
        for backend, precision in self._paths(reference):
            name = f"{backend} {precision}"
            engine = self._open(backend, precision, reference)
            scores = engine.run(x)  # also the warm-up
            if precision != "fp32":
                agreement = float((scores.argmax(1) == expected.argmax(1)).mean())
                if agreement < self.min_agreement:
                    dropped[name] = f"argmax agreement {agreement:.2%} < {self.min_agreement:.0%}"
                    continue
            engines[name] = engine
        times = _alternate(engines, x)
        timings = {name: round(float(np.median(found)), 3) for name, found in times.items()}
        best = min(timings, key=timings.get)
        backend, precision = best.split(" ")
        return Choice(backend, precision, timings, dropped)

    def _key(self, size: tuple[int, ...]) -> str:
        cpu = detect()
        parts = [file_sha256(self.path), cpu.kind, ",".join(sorted(cpu.flags)), "x".join(map(str, size)),
                 str(self.threads), str(self.openvino_only), str(self.min_agreement),
                 _version("onnxruntime"), _version("openvino")]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _alternate(engines: dict[str, Any], x: np.ndarray) -> dict[str, list[float]]:
    """Milliseconds of each engine on `x`, in alternating rounds: as many as fit in `BUDGET_SECONDS` (one at least)."""
    times: dict[str, list[float]] = {name: [] for name in engines}
    spent = time.perf_counter()
    for _ in range(_MAX_ROUNDS):
        for name, engine in engines.items():
            start = time.perf_counter()
            engine.run(x)
            times[name].append(1000 * (time.perf_counter() - start))
        elapsed = time.perf_counter() - spent
        rounds = len(next(iter(times.values())))
        if elapsed / rounds * (rounds + 1) > BUDGET_SECONDS:
            break
    return times


def _read_cache() -> dict[str, Any]:
    try:
        with open(cache_path(), encoding="utf-8") as f:
            found = json.load(f)
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):  # none yet, or damaged: it is only a cache
        return {}


def _write_cache(key: str, value: dict[str, Any]) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        found = _read_cache()
        found[key] = value
        with atomic_output(path, force=True) as tmp:
            Path(tmp).write_text(json.dumps(found), encoding="utf-8")
    except (OSError, ValueError):  # a cache that cannot be written costs only the next run's timing
        pass


def _installed(package: str) -> bool:
    return _version(package) != ""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""
