"""Run a scan's tile tasks: in this process one after another, or on Dask distributed.

`workers=N` starts a local cluster of N processes with one task slot each, listening on the loopback interface
only, and closes it afterwards; `scheduler="tcp://HOST:PORT"` joins a running cluster (reached within
`CONNECT_TIMEOUT` seconds, or `ScanError`). A task computes a batch of neighbouring tiles, batches shrinking
as the scan goes from at most 16 tiles to one (`fc2conv.scan.tasks.batches`), and writes them into the store
itself (`fc2conv.scan.tasks.run_batch`, the next tile read while one computes; this process runs all its tiles as
one batch): the client receives only their small report (pixels, float samples outside [0, 1]). A task whose
worker dies is run again by the scheduler on another worker (Dask's own guarantee), where the tiles already
written are not computed again; a task that kills three workers fails the scan with a `ScanError`. Each
model session on a cluster gets the cores of its worker's machine divided among the task slots there
(`worker_threads`: on a local cluster of N workers, max(1, cores // N)), unless the scan names its `threads`. The
local cluster logs nothing below CRITICAL: a failing task's error comes back to the caller, which reports it in a
line. A progress bar on stderr shows tiles done, megapixels per second and the time left.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator

from ...errors import InputError, ScanError, first_line
from . import tasks
from .samples import TileReport
from .stitch import Job
from .tiles import Tile

__all__ = ["CONNECT_TIMEOUT", "LEAN", "check_scheduler", "executor", "local_cluster", "worker_threads"]

CONNECT_TIMEOUT = 5
_ADDRESS = re.compile(r"^(tcp|tls)://(\[[0-9a-fA-F:.]+\]|[^\s/:\[\]]+):\d+/?$")  # host name, IPv4 or [IPv6]


def check_scheduler(address: str) -> None:
    if not _ADDRESS.match(address):
        raise InputError(f"scheduler= must be tcp://HOST:PORT (or tls://); got {address!r}")


def worker_threads(workers: int | None) -> int | None:
    """Threads per model session on a local cluster of `workers` processes (one task slot each) on this machine's
    cores; None without one (a `scheduler`'s cluster: chosen per machine when the tiles run)."""
    return None if workers is None else tasks.session_threads(tasks.usable_cores(), workers)


@contextlib.contextmanager
def executor(*, workers: int | None, scheduler: str | None) -> Iterator[Callable[..., None]]:
    """Yield `run(job, tiles, progress=None)`, which computes and writes every tile, returns their reports added up,
    and re-raises the first task error, here or on the cluster (see the module docstring). The cluster is reached
    or started on entry, so a scheduler that cannot be reached fails before anything is written."""
    if workers is None and scheduler is None:

        def run_here(job: Job, tiles: list[Tile], progress: bool | None = None) -> TileReport:
            with _progress(len(tiles), progress) as advance:
                tasks.run_batch(job, tiles, advance=advance)
                return advance.total

        yield run_here
        return
    with _client(workers, scheduler) as client:

        def run_there(job: Job, tiles: list[Tile], progress: bool | None = None) -> TileReport:
            with _progress(len(tiles), progress) as advance:
                _submit_all(client, job, tiles, advance)
                return advance.total

        yield run_there


def _submit_all(client, job: Job, tiles: list[Tile], advance: Callable[..., None]) -> None:
    from dask.distributed import as_completed
    from distributed import KilledWorker

    threads = _threads_by_host(client) if job.model.threads is None else None
    batches = tasks.batches(tiles, sum(client.nthreads().values()))
    futures = {client.submit(tasks.run_batch, job, batch, threads=threads, key=_key(job, batch)): len(batch)
               for batch in batches}
    try:
        for future in as_completed(futures, loop=client.loop):
            advance(future.result(), tiles=futures[future])
    except KilledWorker as e:
        raise ScanError(f"a task killed one worker after another ({first_line(e, limit=120)}): a tile may "
                        "need more memory than a worker has; try a smaller tile= (with force=True to "
                        "start again)") from None
    finally:
        client.cancel(list(futures))


def _key(job: Job, batch: list[Tile]) -> str:
    """The task's key: the scan's token and the batch's first and last tiles (row-column, in plan order)."""
    (r0, c0), (r1, c1) = batch[0].index, batch[-1].index
    return f"fc2conv-{job.token}-{r0}-{c0}-to-{r1}-{c1}"


def _threads_by_host(client) -> dict[str, int]:
    """Threads per model session on each machine of the cluster: its cores over its workers' task slots."""
    from distributed.comm import get_address_host

    cores = client.run(tasks.usable_cores, on_error="return")
    cores_by_host: dict[str, int] = {}
    slots_by_host: dict[str, int] = {}
    for address, slots in client.nthreads().items():
        host = get_address_host(address)
        slots_by_host[host] = slots_by_host.get(host, 0) + slots
        if isinstance(cores.get(address), int):
            cores_by_host[host] = max(cores_by_host.get(host, 0), cores[address])
    return {host: tasks.session_threads(cores_by_host[host], slots)
            for host, slots in slots_by_host.items() if host in cores_by_host}


@contextlib.contextmanager
def _client(workers: int | None, scheduler: str | None) -> Iterator:
    from dask.distributed import Client

    if scheduler is not None:
        check_scheduler(scheduler)
        try:
            client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT}s", set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise ScanError(f"cannot reach the Dask scheduler at {scheduler} within {CONNECT_TIMEOUT} s "
                            f"({first_line(e, named=True)}); is it running, and is the address right?") from None
        with client:
            yield client
        return
    with local_cluster(workers) as cluster, Client(cluster, set_as_default=False) as client:
        yield client


# Dask's own background work, lightened on the clusters fc2conv starts: no statistical profiler in the workers (it
# samples the task threads' stacks every 10 ms, holding the GIL, for a dashboard these clusters do not serve), each
# event loop's health check every second instead of every 20 ms, the system monitor every 2 s instead of 0.5 s.
# Idle, a worker then takes 0.5% of a core instead of 2.5%, and the scheduler with this process 0.9% instead of 2.5%
# (measured); the settings are read as each part starts, and a worker started again after a crash gets them too.
LEAN = {"distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s",
        "distributed.admin.system-monitor.interval": "2s"}
# And glibc's malloc works in the workers as in this process: the nanny would set MALLOC_TRIM_THRESHOLD_=65536, which
# also turns off malloc's adaptive thresholds, so every array over 128 kB is mapped afresh and its pages faulted in
# again, tile after tile. A tile's buffers are bounded, so what malloc keeps for reuse is too. Measured on the digits
# CNN: a one-worker tile phase 2% shorter. A value set in the caller's environment still reaches the workers.
_UNSET_BEFORE_SPAWN = ("MALLOC_TRIM_THRESHOLD_",)


@contextlib.contextmanager
def local_cluster(workers: int) -> Iterator:
    """A LocalCluster of `workers` processes with one task slot each, on the loopback interface only, with `LEAN`
    settings, malloc's own thresholds and its logs held below CRITICAL; closed on exit."""
    import dask
    from dask.distributed import LocalCluster

    environ = {key: value for key, value in dask.config.get("distributed.nanny.pre-spawn-environ").items()
               if key not in _UNSET_BEFORE_SPAWN}
    with dask.config.set({**LEAN, "distributed.nanny.pre-spawn-environ": environ}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, silence_logs=logging.CRITICAL)
    with cluster:
        yield cluster


class _Progress:
    """`advance(report, tiles=1)` after each tile or batch: adds its report to `total` and moves the bar."""

    def __init__(self, bar):
        self.bar, self.total, self.start = bar, TileReport(), time.perf_counter()

    def __call__(self, report: TileReport, tiles: int = 1) -> None:
        self.total += report
        rate = self.total.pixels / 1e6 / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{rate:.1f} MP/s", refresh=False)
        self.bar.update(tiles)


@contextlib.contextmanager
def _progress(total: int, enabled: bool | None) -> Iterator[_Progress]:
    """The tiles' progress; no bar when `enabled` is False, or None and stderr is not a terminal."""
    from tqdm import tqdm

    with tqdm(total=total, unit="tile", file=sys.stderr, disable=None if enabled is None else not enabled,
              dynamic_ncols=True, leave=False) as bar:
        yield _Progress(bar)
