"""Tile tasks (`fc2conv.scan.tasks`): batches cover every tile once, the next tile is read while one computes and
its errors come at its own turn, the tile before is written while one computes (in order, and before the batch
ends), tiles already done are not computed again, and each session's threads follow the cores. The model, the store
and the reads are stand-ins here: the scans of test_scan.py and test_scan_cluster.py run the real ones through the
same code."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from fc2conv.scan import dispatch, stitch, tasks, worker
from fc2conv.scan.samples import BadInput, TileReport
from fc2conv.scan.tiles import make_plan
from fc2conv.scan.worker import ModelSpec

PLAN = make_plan((300, 260), stride=(4, 4), window=(32, 32), halo=((0, 0), (0, 0)), tile=32, cells=(68, 58))
TILES = PLAN.tiles()  # 9 × 8


@pytest.mark.parametrize("count", [0, 1, 2, 7, 16, 17, 72, 1000])
@pytest.mark.parametrize("slots", [0, 1, 2, 3, 64])
def test_batches_hold_every_tile_once_in_order(count, slots):
    tiles = (TILES * 14)[:count]
    cut = tasks.batches(tiles, slots)
    sizes = [len(batch) for batch in cut]
    assert [tile for batch in cut for tile in batch] == tiles
    assert all(1 <= size <= tasks.MAX_BATCH for size in sizes)
    assert sizes == sorted(sizes, reverse=True)  # shrinking as the scan goes ...
    if slots <= 1:  # ... when there is another slot to wait for; else as few tasks as MAX_BATCH allows
        assert len(cut) == math.ceil(count / tasks.MAX_BATCH)
    else:
        assert not sizes or sizes[-1] == 1  # ... to single tiles at the end
        assert len(cut) >= min(count, tasks.SHARES * slots)  # enough tasks for every slot


def test_batches_follow_the_tiles_left():
    assert [len(b) for b in tasks.batches(TILES[:16], 1)] == [16]
    assert [len(b) for b in tasks.batches(TILES[:40], 1)] == [16, 16, 8]
    assert [len(b) for b in tasks.batches(TILES[:64], 2)] == [16, 12, 9, 7, 5, 4, 3, 2, 2, 1, 1, 1, 1]


class FakeRun:
    """Stand-ins for the reads (`worker.read_tile`), the computing (`stitch.scan_tile`) and the done flags, which
    record what happened in which order. Tile `bad` has NaN samples; while tile k computes, it waits until tile
    k + 1's read has begun (so the test fails, rather than hangs, if nothing is read ahead)."""

    def __init__(self, monkeypatch, tiles, *, bad=None, done=()):
        self.tiles, self.bad, self.events, self.lock = tiles, bad, [], threading.Lock()
        self.reading = {tile.index: threading.Event() for tile in tiles}
        self.jobs = []
        flags = np.zeros(PLAN.grid, dtype=np.uint8)
        for index in done:
            flags[index] = 1
        monkeypatch.setattr(tasks, "_done", lambda store, token: flags)
        monkeypatch.setattr(worker, "read_tile", self.read)
        monkeypatch.setattr(stitch, "scan_tile", self.compute)

    def read(self, source, tile):
        self.reading[tile.index].set()
        self.record("read", tile)
        if tile.index == self.bad:
            raise BadInput(f"NaN in tile {tile.index}")
        return np.zeros(1), TileReport(pixels=tile.pixels)

    def compute(self, job, tile, read=None, write=None):
        assert read is not None and read[1].pixels == tile.pixels
        self.jobs.append(job)
        self.started(tile)
        following = self.tiles.index(tile) + 1
        if following < len(self.tiles):
            assert self.reading[self.tiles[following].index].wait(timeout=30), "the next tile was not read ahead"
        assert write is not None, "run_batch writes behind"
        write(self.write, tile)
        return read[1]

    def started(self, tile):
        pass

    def write(self, tile):
        self.record("written", tile)

    def record(self, what, tile):
        with self.lock:
            self.events.append((what, tile.index))

    def written(self):
        return [index for what, index in self.events if what == "written"]


JOB = stitch.Job(ModelSpec("model.onnx", "0" * 64), None, "store.zarr", "token")


def test_a_batch_reads_ahead_and_writes_every_tile(monkeypatch):
    fake, reports = FakeRun(monkeypatch, TILES), []
    total = tasks.run_batch(JOB, TILES, advance=reports.append)
    assert fake.written() == [tile.index for tile in TILES]
    assert total.pixels == sum(tile.pixels for tile in TILES) == 300 * 260  # the tiles' boxes divide the image
    assert [r.pixels for r in reports] == [tile.pixels for tile in TILES]
    assert fake.events[0] == ("read", TILES[0].index) and fake.events[1] == ("read", TILES[1].index)


@pytest.mark.parametrize("bad", [0, 1, 5, len(TILES) - 1])
def test_a_bad_tile_read_ahead_fails_at_its_own_turn(monkeypatch, bad):
    """NaN in tile k, read while tile k − 1 computes: tiles 0 … k − 1 are written, then tile k's own BadInput."""
    fake = FakeRun(monkeypatch, TILES, bad=TILES[bad].index)
    with pytest.raises(BadInput, match=rf"NaN in tile \({TILES[bad].index[0]}, {TILES[bad].index[1]}\)"):
        tasks.run_batch(JOB, TILES)
    assert fake.written() == [tile.index for tile in TILES[:bad]]
    reads = [index for what, index in fake.events if what == "read"]
    assert reads == [tile.index for tile in TILES[:bad + 1]]  # nothing past the bad tile is read


def test_a_tile_is_written_while_the_next_computes_in_order(monkeypatch):
    """Tile k's write waits until tile k + 1 is computing (it would hang, and fail, if written before returning);
    writes land in order, the batch ends with its last one written, and the first failed write stops the batch."""
    fake = FakeRun(monkeypatch, TILES[:6])
    computing = {tile.index: threading.Event() for tile in TILES[:6]}

    def write(tile):
        following = TILES.index(tile) + 1
        if following < 6:
            assert computing[TILES[following].index].wait(timeout=30), "not written behind the next tile"
        fake.record("written", tile)

    monkeypatch.setattr(fake, "started", lambda tile: computing[tile.index].set())
    monkeypatch.setattr(fake, "write", write)
    tasks.run_batch(JOB, TILES[:6])
    assert fake.written() == [tile.index for tile in TILES[:6]]
    assert fake.events[-1] == ("written", TILES[5].index)

    def failing(tile):
        if tile == TILES[2]:
            raise OSError("disk full")
        fake.record("written", tile)

    fake.events.clear()
    monkeypatch.setattr(fake, "write", failing)
    with pytest.raises(OSError, match="disk full"):
        tasks.run_batch(JOB, TILES[:6])
    assert fake.written() == [TILES[0].index, TILES[1].index]


def test_tiles_already_done_are_read_not_computed(monkeypatch):
    """A batch run again after its worker died: the tiles it wrote are skipped, and still counted."""
    done = [TILES[0].index, TILES[1].index, TILES[7].index]
    fake, reports = FakeRun(monkeypatch, TILES[:10], done=done), []
    total = tasks.run_batch(JOB, TILES[:10], advance=reports.append)
    assert fake.written() == [tile.index for tile in TILES[:10] if tile.index not in done]
    assert len(reports) == 10 and total.pixels == sum(tile.pixels for tile in TILES[:10])


def test_threads_follow_the_cores(monkeypatch):
    assert [tasks.session_threads(8, slots) for slots in (0, 1, 2, 3, 8, 9)] == [8, 8, 4, 2, 1, 1]
    monkeypatch.setattr(tasks, "usable_cores", lambda: 6)
    assert dispatch.worker_threads(None) is None  # a scheduler's cluster: per machine, when the tiles run
    assert [dispatch.worker_threads(n) for n in (1, 2, 4, 6, 12)] == [6, 3, 1, 1, 1]


class FakeClient:
    """Two machines: A (16 cores, workers of 2 and 2 slots), B (4 cores, one worker of 1 slot); C's worker does
    not answer."""

    def nthreads(self):
        return {"tcp://10.0.0.1:1": 2, "tcp://10.0.0.1:2": 2, "tcp://10.0.0.2:1": 1, "tcp://10.0.0.3:1": 1}

    def run(self, function, on_error="raise"):
        assert function is tasks.usable_cores and on_error == "return"
        return {"tcp://10.0.0.1:1": 16, "tcp://10.0.0.1:2": 16, "tcp://10.0.0.2:1": 4,
                "tcp://10.0.0.3:1": OSError("gone")}


def test_a_clusters_threads_are_its_machines_cores_over_their_slots(monkeypatch):
    assert dispatch._threads_by_host(FakeClient()) == {"10.0.0.1": 4, "10.0.0.2": 4}
    fake = FakeRun(monkeypatch, TILES[:2])
    for host, named, expected in [("10.0.0.1", None, 4), ("10.0.0.3", None, 1), ("10.0.0.1", 2, 2)]:
        monkeypatch.setattr(tasks, "_worker_host", lambda host=host: host)
        fake.jobs.clear()
        job = stitch.Job(ModelSpec("model.onnx", "0" * 64, named), None, "store.zarr", "token")
        tasks.run_batch(job, TILES[:2], threads={"10.0.0.1": 4, "10.0.0.2": 4})
        assert {j.model.threads for j in fake.jobs} == {expected}  # the scan's own `threads` wins


def test_a_scan_in_this_process_reads_ahead_too(monkeypatch):
    """With no cluster, the executor runs every tile as one batch: read ahead, the progress per tile."""
    fake = FakeRun(monkeypatch, TILES[:5])
    with dispatch.executor(workers=None, scheduler=None) as run:
        total = run(JOB, TILES[:5], progress=False)
    assert fake.written() == [tile.index for tile in TILES[:5]]
    assert total.pixels == sum(tile.pixels for tile in TILES[:5])
