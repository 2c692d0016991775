"""`fc2conv scan` on Dask distributed: a local cluster gives the one-pass map, and a worker killed mid-run loses
nothing. Every cluster listens on the loopback interface only and is shut down by the test that started it."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from helpers import assert_close
from scan_helpers import done_tiles, noise, one_pass, write_tiff

from fc2conv.runtime import scan

pytest.importorskip("distributed")  # the scan extra: Python 3.11 or later


@pytest.fixture
def cluster():
    """(cluster, client) of two single-threaded worker processes, closed after the test."""
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                      silence_logs=50) as local, Client(local, set_as_default=False) as client:
        yield local, client


def test_local_cluster_map_equals_one_pass(digits_onnx, tmp_path):
    image = noise(700, 650, channels=1)
    result = scan(write_tiff(tmp_path / "in.tif", image), model=digits_onnx, out=tmp_path / "out.zarr", tile=128,
                  workers=2, detections=tmp_path / "found.csv")
    assert result.tiles == result.computed == 6 * 5  # 168×155 cells in tiles of 32×32
    assert_close(result.scores()[...], one_pass(digits_onnx, image))


def test_the_clusters_fc2conv_starts_are_lean(monkeypatch):
    """No statistical profiler in the workers, and malloc's adaptive thresholds left on (Dask's nanny would set
    MALLOC_TRIM_THRESHOLD_, which turns them off); the nanny's other variables still reach the workers."""
    import dask
    from dask.distributed import Client

    from fc2conv.scan import dispatch

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)  # Dask's nanny leaves it in this process's environ

    def settings() -> tuple:
        return (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS"),
                dask.config.get("distributed.worker.profile.enabled"))

    with dispatch.local_cluster(1) as local, Client(local, set_as_default=False) as client:
        assert list(client.run(settings).values()) == [(None, "1", False)]
    assert "MALLOC_TRIM_THRESHOLD_" in dask.config.get("distributed.nanny.pre-spawn-environ")  # Dask's own unchanged


# Run on one worker (by `exec`, so nothing of this module is pickled): its third tile creates `marker`, naming the
# tile, and blocks until the worker process is killed. Tasks (`fc2conv.scan.tasks.run_batch`) call
# `fc2conv.scan.stitch.scan_tile` by name.
BLOCK_IN_A_TILE = """
import os, pathlib, time
import fc2conv.scan.stitch as stitch

scan_tile, started = stitch.scan_tile, []

def block_in_the_third(job, tile, read=None, write=None):
    started.append(tile.index)
    if len(started) == 3:
        pathlib.Path(marker + ".tmp").write_text("%d %d" % tile.index)
        os.replace(marker + ".tmp", marker)  # whole when it appears
        time.sleep(3600)
    return scan_tile(job, tile, read=read, write=write)

stitch.scan_tile = block_in_the_third
"""


def test_worker_killed_mid_run_loses_nothing(digits_onnx, tmp_path, cluster):
    """SIGKILL one of two workers while it computes a tile (it blocks there until killed, so the scan cannot end
    without it): the scheduler reruns its tiles elsewhere and the map is complete."""
    import zarr

    local, client = cluster
    image = noise(1201, 1003, channels=1)
    source, out = write_tiff(tmp_path / "in.tif", image, tile=256), tmp_path / "out.zarr"
    marker, outcome = tmp_path / "blocked", {}

    def run() -> None:
        try:
            outcome["result"] = scan(source, model=digits_onnx, out=out, tile=32, scheduler=local.scheduler_address)
        except BaseException as e:  # re-raised in the test's thread below
            outcome["error"] = e

    address, victim = next(iter(client.run(os.getpid).items()))
    client.run(exec, BLOCK_IN_A_TILE, {"marker": str(marker)}, workers=[address])
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300  # only turns a hang into a failure: the worker blocks until killed
    while not marker.exists() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists(), outcome.get("error", "the worker never reached its third tile")
    row, column = map(int, marker.read_text().split())
    assert any(_in_batch(key, (row, column)) for key in client.processing()[address]), "not the victim's tile"
    killed_at = done_tiles(tmp_path / ".out.zarr.partial")
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert killed_at < result.tiles and result.computed == result.tiles == 37 * 31
    assert zarr.open_array(str(out / "done"), mode="r")[row, column] == 1  # the blocked tile, computed elsewhere
    assert_close(result.scores()[...], one_pass(digits_onnx, image))
    assert victim not in client.run(os.getpid).values()  # the nanny started a new worker process


def _in_batch(key: str, index: tuple[int, int]) -> bool:
    """Whether the task `key` (fc2conv-TOKEN-R0-C0-to-R1-C1: its first and last tiles in plan order) holds the tile
    at `index`."""
    first, last = key.split("-")[2:4], key.split("-")[5:7]
    return tuple(map(int, first)) <= index <= tuple(map(int, last))
