"""Run a scan's tile tasks: in this process one after another, or on Dask distributed.

`workers=N` starts a local cluster of N processes with one thread each, listening on the loopback interface
only, and closes it afterwards; `scheduler="tcp://HOST:PORT"` joins a running cluster (reached within
`CONNECT_TIMEOUT` seconds, or `ConversionError`). Each task computes one tile and writes it into the store
itself (`fc2conv.scan.stitch.scan_tile`): the client receives only the tile's pixel count. A task whose worker
dies is run again by the scheduler on another worker (Dask's own guarantee; a task that kills three workers
fails the scan). A progress bar on stderr shows tiles done, megapixels per second and the time left.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator

from ..errors import ConversionError
from .stitch import Job, scan_tile
from .tiles import Tile

__all__ = ["CONNECT_TIMEOUT", "check_scheduler", "executor"]

CONNECT_TIMEOUT = 5
_ADDRESS = re.compile(r"^(tcp|tls)://(\[[0-9a-fA-F:.]+\]|[^\s/:\[\]]+):\d+/?$")  # host name, IPv4 or [IPv6]


def check_scheduler(address: str) -> None:
    if not _ADDRESS.match(address):
        raise ConversionError(f"--scheduler must be tcp://HOST:PORT (or tls://); got {address!r}")


@contextlib.contextmanager
def executor(*, workers: int | None, scheduler: str | None) -> Iterator[Callable[..., None]]:
    """Yield `run(job, tiles, progress=None)`, which computes and writes every tile and re-raises the first task
    error, here or on the cluster (see the module docstring). The cluster is reached or started on entry, so a
    scheduler that cannot be reached fails before anything is written."""
    if workers is None and scheduler is None:

        def run_here(job: Job, tiles: list[Tile], progress: bool | None = None) -> None:
            with _progress(len(tiles), progress) as advance:
                for tile in tiles:
                    advance(scan_tile(job, tile))

        yield run_here
        return
    with _client(workers, scheduler) as client:

        def run_there(job: Job, tiles: list[Tile], progress: bool | None = None) -> None:
            with _progress(len(tiles), progress) as advance:
                _submit_all(client, job, tiles, advance)

        yield run_there


def _submit_all(client, job: Job, tiles: list[Tile], advance: Callable[[int], None]) -> None:
    from dask.distributed import as_completed

    futures = [client.submit(scan_tile, job, tile, key=f"fc2conv-{job.token}-{tile.index[0]}-{tile.index[1]}")
               for tile in tiles]
    try:
        for future in as_completed(futures, loop=client.loop):
            advance(future.result())
    finally:
        client.cancel(futures)


@contextlib.contextmanager
def _client(workers: int | None, scheduler: str | None) -> Iterator:
    from dask.distributed import Client, LocalCluster

    if scheduler is not None:
        check_scheduler(scheduler)
        try:
            client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT}s", set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise ConversionError(f"cannot reach the Dask scheduler at {scheduler} within {CONNECT_TIMEOUT} s "
                                  f"({e}); is it running, and is the address right?") from None
        with client:
            yield client
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield client


@contextlib.contextmanager
def _progress(total: int, enabled: bool | None) -> Iterator[Callable[[int], None]]:
    """`advance(pixels)` after each tile; no bar when `enabled` is False, or None and stderr is not a terminal."""
    from tqdm import tqdm

    start, done = time.perf_counter(), [0]
    with tqdm(total=total, unit="tile", file=sys.stderr, disable=None if enabled is None else not enabled,
              dynamic_ncols=True, leave=False) as bar:

        def advance(pixels: int) -> None:
            done[0] += pixels
            rate = done[0] / 1e6 / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{rate:.1f} MP/s", refresh=False)
            bar.update(1)

        yield advance
