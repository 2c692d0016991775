"""The model on one process: a session (onnxruntime or OpenVINO, at the scan's precision) opened once per process,
and the owned cells of one tile.

A tile's pixels go through `fc2conv.runtime.DenseModel.run`, exactly as `fc2conv run` treats a whole image
(`load_image` scaling by bit depth and channel conversion, then the metadata's mean and std), so a tile and a
one-pass run see the same numbers. Workers open the model by path and check its SHA-256 against the one the
scan was planned with, so every tile of a scan comes from the same model file, and build the backend and precision
the spec names, so every tile is computed alike.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import BackendError, ScanError, translated
from ..files.paths import file_sha256
from ..model import DenseModel
from . import samples
from .samples import TileReport
from .source import SourceSpec, reopen
from .tiles import Tile

__all__ = ["ModelSpec", "evaluate", "file_sha256", "load", "map_length", "read_tile"]


@dataclass(frozen=True)
class ModelSpec:
    """An exported model by path and content hash; `threads` per run (None: the backend's default), and the backend
    and precision every process opens it with (`fc2conv.runtime.backends`)."""

    path: str
    sha256: str
    threads: int | None = None
    backend: str = "onnxruntime"
    precision: str = "fp32"


@functools.lru_cache(maxsize=2)
def load(spec: ModelSpec) -> DenseModel:
    """The model `spec` names, opened once per process (idle threads sleep rather than spin: see
    `fc2conv.runtime.backends`); `ScanError` if its file changed since planning."""
    if not Path(spec.path).is_file() or file_sha256(spec.path) != spec.sha256:
        raise ScanError(f"{spec.path} is missing or changed since the scan started (SHA-256 differs); every "
                        "worker must see the same model file")
    return DenseModel(spec.path, backend=spec.backend, precision=spec.precision, threads=spec.threads)


def map_length(model: DenseModel, axis: int, length: int) -> int:
    """Cells along `axis` of the map of an input `length` pixels long there and one reference input across."""
    shape = [1, model.channels, *(max(w, r) for w, r in zip(model.metadata["window"], model.reference, strict=True))]
    shape[2 + axis] = length
    x = np.zeros(shape, dtype=np.float32)
    # each backend raises its own error types for a model it cannot run
    with translated(BackendError, f"{model.path}: {model.backend} failed on a {shape[2]}×{shape[3]} strip: ",
                    named=True):
        scores = model.engine.run(x)
    return int(scores.shape[2 + axis])


def read_tile(source: SourceSpec, tile: Tile) -> tuple[np.ndarray, TileReport]:
    """The samples `tile` reads (its owned cells' windows and the halo) and their report (`BadInput` for NaN or
    infinite ones; see `fc2conv.scan.samples`)."""
    pixels = reopen(source).read(*tile.read)
    return pixels, samples.check(pixels, tile, source.path)


def evaluate(model: ModelSpec, source: SourceSpec, tile: Tile,
             read: tuple[np.ndarray, TileReport] | None = None) -> tuple[np.ndarray, TileReport]:
    """The classes × rows × columns float32 scores of the cells `tile` owns, and the report of the samples it read;
    `read`: what `read_tile` gave for it already (read ahead while the tile before computed), else it is read here."""
    dense = load(model)
    top, left, bottom, right = tile.cells
    rows, cols = bottom - top, right - left
    pixels, report = read if read is not None else read_tile(source, tile)
    scores = dense.run(pixels, max_pixels=None).scores
    (dy, dx), (have_rows, have_cols) = tile.offset, scores.shape[1:]
    if dy + rows > have_rows or dx + cols > have_cols:
        raise ScanError(f"{model.path}: the tile at input {tile.read} gave a {have_rows}×{have_cols} map, too "
                        f"small for its cells {tile.cells}; the model's stride or window metadata is wrong")
    return scores[:, dy:dy + rows, dx:dx + cols], report
