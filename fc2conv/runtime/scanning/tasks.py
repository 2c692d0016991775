"""Tile tasks: a scan's tiles cut into batches, and one batch run in one process, the next tile's samples read
while the current one computes.

Batches (`batches`): the tiles in plan order (so a batch's tiles are neighbours in the image), cut by guided
self-scheduling: each batch takes 1 / (`SHARES` × slots) of the tiles still left, at least one and at most
`MAX_BATCH`, where a slot is a task running at once (a worker thread). So batches shrink as the scan goes: the
first are large, which spreads each batch's fixed cost over many tiles, and the last are single tiles, so no
worker waits long for another's last batch. That fixed cost is about a tile's read and a tile's write that
overlap nothing (its first read and last write) plus dask's own work per task: 15–25 ms, a quarter of a digits
tile. With one slot there is no other worker to wait for, so batches are `MAX_BATCH` tiles from first to last.
The progress bar, which moves per batch, moves at least every `MAX_BATCH` tiles. 16 tiles on one slot are one
task; 64 on two slots, tasks of 16, 12, 9, 7, 5, 4, 3, 2, 2, 1, 1, 1 and 1 tiles.

Running a batch (`run_batch`): its tiles one after another (`fc2conv.scan.stitch.scan_tile`, called through the
module, so a test can replace it), with two background threads: one reads and checks the next tile's samples
(`fc2conv.scan.worker.read_tile`) and its done flag while the current tile computes, the other writes the tile
before's cells and then sets its done flag (for a small model the write is a tenth of a tile's time). What the
reading thread meets is kept with its tile: a `BadInput` in tile k is raised when tile k's turn comes, and leaves
the batch once every tile before it is written, as if nothing were read ahead. A batch holds at most two tiles'
samples and one tile's cells waiting to be written, and ends once its last tile is written. A tile whose done flag
is already set (a batch run again after its worker died) is not computed again; its samples are still read and
checked, so a batch's report covers all its tiles whichever worker wrote them.

Threads (`session_threads`): on a cluster, each model session gets the cores its worker's machine has, divided
among the task slots of that machine's workers (at least one); the explicit `threads` of a scan wins.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from ...errors import ScanError
from . import stitch, worker
from .samples import TileReport
from .stitch import Job
from .tiles import Tile

__all__ = ["MAX_BATCH", "SHARES", "batches", "run_batch", "session_threads", "usable_cores"]

SHARES = 2
MAX_BATCH = 16


def batches(tiles: list[Tile], slots: int) -> list[list[Tile]]:
    """`tiles` cut, in order, into batches for `slots` task slots, shrinking as they go (see the module docstring);
    every tile is in exactly one batch."""
    cut, start = [], 0
    while start < len(tiles):
        share = len(tiles) - start if slots <= 1 else math.ceil((len(tiles) - start) / (SHARES * slots))
        size = max(1, min(MAX_BATCH, share))
        cut.append(tiles[start:start + size])
        start += size
    return cut


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one, else every core)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def session_threads(cores: int, slots: int) -> int:
    """Threads for each model session when `slots` tasks share `cores` cores at once."""
    return max(1, cores // max(slots, 1))


def run_batch(job: Job, tiles: list[Tile], *, threads: dict[str, int] | None = None,
              advance: Callable[[TileReport], None] | None = None) -> TileReport:
    """Compute and write `tiles` (see the module docstring); returns their reports added up, and calls `advance`
    with each tile's report as it is written. `threads`: threads per session by host, for a job whose model names
    none; looked up for the Dask worker this runs on (a host it does not name: one thread)."""
    if job.model.threads is None and threads is not None:
        job = replace(job, model=replace(job.model, threads=threads.get(_worker_host(), 1)))
    total = TileReport()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fc2conv-read-ahead") as reader, \
            _WriteBehind() as writer:
        ahead = reader.submit(_prepare, job, tiles[0]) if tiles else None
        for k, tile in enumerate(tiles):
            done, read = ahead.result()  # this tile's own error (BadInput…), raised at its turn
            ahead = reader.submit(_prepare, job, tiles[k + 1]) if k + 1 < len(tiles) else None
            report = read[1] if done else stitch.scan_tile(job, tile, read=read, write=writer)
            total += report
            if advance is not None:
                advance(report)
    return total


class _WriteBehind:
    """One background thread that writes each tile's cells while the next tile computes, in order: a write waits
    for the one before it (so at most one tile's cells wait), and leaving the block waits for the last one. A failed
    write is raised at the next write or on leaving, and no later tile is written after it."""

    def __enter__(self) -> _WriteBehind:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fc2conv-write-behind")
        self.pending = None
        return self

    def __call__(self, function: Callable[..., None], *args: Any) -> None:
        self._wait()
        self.pending = self.pool.submit(function, *args)

    def _wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def __exit__(self, kind, error, trace) -> None:
        try:
            self._wait()  # an error already on its way (a tile's BadInput) goes first; this write still lands
        except Exception:  # any write failure: raised unless an error already leaves the batch, which goes first
            if kind is None:
                raise
        finally:
            self.pool.shutdown(wait=True)


def _prepare(job: Job, tile: Tile) -> tuple[bool, Any]:
    """(whether `tile`'s done flag is set, its samples and their report): what the background thread reads."""
    done = bool(_done(job.store, job.token)[tile.index])
    return done, worker.read_tile(job.source, tile)


@functools.lru_cache(maxsize=2)
def _done(store: str, token: str) -> Any:
    """The store's `done` array, opened read-only once per process and store (its token checked, as
    `fc2conv.scan.stitch.scan_tile` checks the store it writes)."""
    import zarr

    group = zarr.open_group(store, mode="r")
    if group.attrs.asdict().get(stitch.ATTRS, {}).get("token") != token:
        raise ScanError(f"{store} was replaced by another scan while this one ran")
    return group["done"]


def _worker_host() -> str | None:
    from distributed import get_worker
    from distributed.comm import get_address_host

    try:
        return get_address_host(get_worker().address)
    except ValueError:  # not on a worker
        return None
