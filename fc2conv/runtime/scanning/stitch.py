"""The score map's zarr store: owned cells written tile by tile, completion recorded per tile, and resume (the final
rename, with the other outputs, is `fc2conv.scan.finish`'s).

Layout of `OUT.zarr` (a zarr v3 group):

- `scores`: classes × H' × W' (float32 or float16), chunked (classes, tile cells, tile cells; no more than the
  map's cells), so each tile writes exactly one chunk and concurrent writers never share one;
- `done`: tile rows × tile columns uint8, chunked 1×1: a tile's flag is set only after its scores are written
  (2: skipped, no cell of it in the mask);
- `labels/mask/0` in a masked scan: 1 × H' × W' uint8, 1 where a cell is in the mask (computed), 0 where it is
  missing (`fc2conv.scan.masks.selection`);
- `attrs["fc2conv"]`: what the map is (geometry, labels, source, model hash…; see `fc2conv.scan.scan`) and
  `run`, the settings a resumed scan must share;
- once every tile is done, the OME-Zarr (NGFF) metadata and the `probabilities` pyramid (`fc2conv.scan.ngff`).

zarr's local store writes every chunk file whole (to a temporary file, then renamed), so a process killed
mid-write leaves each chunk old or new, never torn, and a tile whose flag is not set is simply computed again.
A scan builds the store under the hidden name `.OUT.zarr.partial` beside `OUT.zarr` and renames it when every
tile is done: `OUT.zarr` is complete or absent. `--resume` continues a partial store in place.
"""

from __future__ import annotations

import functools
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ScanError
from .masks.selection import MASK
from .samples import TileReport
from .source import SourceSpec
from .tiles import Tile, TilePlan
from .worker import ModelSpec, evaluate

__all__ = ["ATTRS", "Job", "create", "discard", "done_mask", "mark_complete", "open_run", "partial_path",
           "scan_tile", "write_tile"]

ATTRS = "fc2conv"
_BEFORE_BACKENDS = {"backend": "onnxruntime", "precision": "fp32"}


@dataclass(frozen=True)
class Job:
    """What a worker needs for any tile of one scan: the model, the input, and the store (by path and by the
    token of the store created for this scan, so a process never writes through a stale handle)."""

    model: ModelSpec
    source: SourceSpec
    store: str
    token: str


def partial_path(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def create(path: Path, plan: TilePlan, *, classes: int, dtype: str, attrs: dict[str, Any], masked: bool = False) -> str:
    """A new store at `path` (replacing any there) for `plan`, with room for the cells' mask when `masked`
    (`fc2conv.scan.masks.selection`); returns its token."""
    import zarr
    from zarr.codecs import BloscCodec

    if path.exists():
        shutil.rmtree(path)
    token = secrets.token_hex(8)
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    # LZ4 on byte-shuffled floats: twice as fast as zarr's default zstd on score maps, and as small.
    group.create_array("scores", shape=(classes, *plan.cells), chunks=(classes, *plan.chunk_cells), dtype=dtype,
                       fill_value=np.nan, compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
                       dimension_names=("c", "y", "x"))  # the OME-Zarr axes (`fc2conv.scan.ngff`)
    group.create_array("done", shape=plan.grid, chunks=(1, 1), dtype="uint8", fill_value=0, compressors=None)
    if masked:
        group.create_array(MASK, shape=(1, *plan.cells), chunks=(1, *plan.chunk_cells), dtype="uint8", fill_value=0,
                           compressors=BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"),
                           dimension_names=("c", "y", "x"))
    group.attrs[ATTRS] = {**attrs, "token": token, "complete": False}
    return token


def open_run(path: Path, run: dict[str, Any], plan: TilePlan, classes: int) -> tuple[str, dict[str, Any]]:
    """(token, attributes) of the store at `path`, if a scan with the same settings `run` made it for `plan` (its
    arrays checked too: a store is a folder anyone can edit)."""
    import zarr

    not_ours = f"{path} is not a scan written by fc2conv; remove it or choose another out="
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = group.attrs.asdict()[ATTRS]
        shapes = (tuple(group["scores"].shape), tuple(group["scores"].chunks), tuple(group["done"].shape))
    except Exception:  # not a zarr group, or no fc2conv arrays or attributes: whatever zarr raises, not our store
        raise ScanError(not_ours) from None
    if not isinstance(attrs, dict) or not isinstance(attrs.get("token"), str):
        raise ScanError(not_ours)
    found = attrs.get("run") if isinstance(attrs.get("run"), dict) else {}
    found = {**_BEFORE_BACKENDS, **found}  # a store begun before scans chose a backend ran onnxruntime in fp32
    changed = [key for key in run if found.get(key) != run[key]]
    if changed:
        listed = "; ".join(f"{key}: {found.get(key)!r} then, {run[key]!r} now" for key in changed)
        raise ScanError(f"cannot resume {path}: it was started with other settings ({listed}); rerun with "
                        "the same ones, or without resume=True and with force=True to start again")
    expected = ((classes, *plan.cells), (classes, *plan.chunk_cells), plan.grid)
    if shapes != expected:
        raise ScanError(f"cannot resume {path}: its arrays (scores {shapes[0]} in chunks {shapes[1]}, done "
                        f"{shapes[2]}) are not this scan's ({expected[0]} in chunks {expected[1]}, done "
                        f"{expected[2]}); rerun without resume=True and with force=True to start again")
    return attrs["token"], attrs


def done_mask(path: Path) -> np.ndarray:
    """Which tiles (rows × columns) have their scores written."""
    import zarr

    return zarr.open_array(str(path / "done"), mode="r")[...].astype(bool)


def mark_complete(path: Path, attrs: dict[str, Any]) -> None:
    import zarr

    zarr.open_group(str(path), mode="r+").attrs[ATTRS] = {**attrs, "complete": True}


def scan_tile(job: Job, tile: Tile, read: tuple[np.ndarray, TileReport] | None = None,
              write: Callable[..., None] | None = None) -> TileReport:
    """Compute `tile`'s owned cells, write them into their chunk, then set its done flag. Returns the report of
    the samples it read (pixels for throughput, float samples outside [0, 1]). Safe to run twice: the second run
    writes the same values. `read`: the tile's samples read ahead (`fc2conv.scan.worker.read_tile`), if they were.
    `write`: called as `write(write_tile, job, tile, cells)` to write them behind, while the next tile computes
    (`fc2conv.scan.tasks.run_batch`); without it they are written before this returns."""
    scores, _, mask = _arrays(job.store, job.token)
    top, left, bottom, right = tile.cells
    owned, report = evaluate(job.model, job.source, tile, read)
    owned = owned.astype(scores.dtype)  # a copy: the session's own buffer is not changed
    if mask is not None:  # a masked scan: cells whose window centre is outside the mask are missing
        owned[:, mask[0, top:bottom, left:right] == 0] = np.nan
    (write or _now)(write_tile, job, tile, owned)
    return report


def write_tile(job: Job, tile: Tile, cells: np.ndarray) -> None:
    """Write `tile`'s owned `cells` into their chunk, then set its done flag."""
    scores, done, _ = _arrays(job.store, job.token)
    top, left, bottom, right = tile.cells
    scores[:, top:bottom, left:right] = cells
    done[tile.index] = 1


def _now(function: Callable[..., None], *args: Any) -> None:
    function(*args)


@functools.lru_cache(maxsize=2)
def _arrays(store: str, token: str) -> tuple[Any, Any, Any]:
    """The `scores`, `done` and (in a masked scan, else None) cells' mask arrays of the store, opened once per
    process and store."""
    import zarr

    group = zarr.open_group(store, mode="r+")
    attrs = group.attrs.asdict().get(ATTRS, {})
    if attrs.get("token") != token:
        raise ScanError(f"{store} was replaced by another scan while this one ran")
    return group["scores"], group["done"], group[MASK] if attrs.get("run", {}).get("mask") else None


def discard(path: Path, token: str) -> None:
    """Remove the store this scan created at `path` (token `token`), unless another scan has replaced it since."""
    import zarr

    try:
        found = zarr.open_group(str(path), mode="r").attrs.asdict()[ATTRS]["token"]
    except Exception:  # gone, or not a store at all: anything zarr raises means it is not ours to remove
        return
    if found == token:
        shutil.rmtree(path, ignore_errors=True)
