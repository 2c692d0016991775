"""`python scripts/bench.py --tiled`: what scanning in tiles costs against one pass, in this process and on a Dask
worker, what a second worker gains, and how peak memory follows the tile rather than the image.

The CPU comes first: lscpu's model name, the flags of its vector units, and the cores this process may use.

1. Tiled against one pass, every model session on one thread, on an image that fits in memory: the digits CNN
   (padding-free: each tile reads only its windows' extra W − S pixels) and ResNet18 with random weights, converted
   at 224×224 (padded: each tile also reads its receptive-field halo). Each of `--repeats` rounds runs, in turn,
   one pass over the in-memory image, a scan in this process (`threads=1`), a scan on a running one-worker cluster
   (`threads=1`; started as `workers=1` starts one, `fc2conv.scan.dispatch.local_cluster`, once, so its start-up
   is not timed), then one pass and a one-worker scan both on every core (the worker's threads from its cores, the
   scan's default); the table gives medians and their ratios, and the tile phase's CPU seconds (this process's,
   and the workers') over one pass's. "tiles" is the scan's tile phase alone (every tile
   read, computed and written: `fc2conv.scan.dispatch`'s run, timed around it), "scan" the whole call (also
   planning, the NGFF pyramid and the outputs, which one pass does not make). "read share" is what the halo
   predicts: the pixels all tiles read over the image's pixels (exact, from the tile plan; ((tile + halo) / tile)²
   for a tile inside the image). The previous round's output is removed before each scan, outside the timing.
2. Workers: the digits CNN over a larger image on running clusters of one and of two single-threaded workers,
   and of one worker whose session takes every core (the default threads), rounds alternating between them.
3. Peak memory: a scan of the digits slide at two sizes, each in a fresh process (VmHWM: the resident peak since
   the process started), at the same tile size.

Images are the demo's slides (`scripts/digits_slide.py`), tiled uncompressed BigTIFFs in a temporary directory.
Nothing is asserted: the numbers are printed as measured.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

import fc2conv
from fc2conv.runtime import DenseModel, scan
from fc2conv.scan import dispatch
from fc2conv.scan.tasks import usable_cores

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from digits_slide import grid_canvas  # noqa: E402  (scripts/ is on the path when bench.py runs)

from models.digits_cnn import DigitsCNN  # noqa: E402
from models.digits_data import load_split  # noqa: E402

TILED = ["digits", "resnet18"]
REFERENCE = {"digits": (1, 32, 32), "resnet18": (3, 224, 224)}


def cpu_line() -> str:
    """'CPU: <lscpu model name> (<vector flags>), <n> cores usable'."""
    from timing import cpu_model_name

    from fc2conv.runtime.cpu import detect

    name = cpu_model_name()
    flags = " ".join(detect().shown_flags()) or "no AVX2"
    return f"CPU: {name} ({flags}), {usable_cores()} cores usable"


class TilePhase:
    """Times the tile phase of every scan in this process: `dispatch.executor`'s run, wrapped (scan() looks it up
    on the module at each call). `wall` and `cpu` are the latest scan's: seconds, and this process's CPU seconds
    (every thread's)."""

    def __init__(self):
        self.wall, self.cpu, self.executor = None, None, dispatch.executor
        dispatch.executor = self._timed

    @contextlib.contextmanager
    def _timed(self, **kwargs):
        with self.executor(**kwargs) as run:

            def timed(*args, **named):
                wall, cpu = time.perf_counter(), time.process_time()
                try:
                    return run(*args, **named)
                finally:
                    self.wall, self.cpu = time.perf_counter() - wall, time.process_time() - cpu

            yield timed


def _export(name: str, directory: Path) -> Path:
    """`name` with random weights, converted and exported once into `directory`."""
    if (directory / f"{name}.onnx").exists():
        return directory / f"{name}.onnx"
    torch.manual_seed(0)
    model = DigitsCNN() if name == "digits" else torchvision.models.get_model(name, weights=None)
    return fc2conv.export_onnx(fc2conv.convert(model.eval(), REFERENCE[name]), directory / f"{name}.onnx")


def _slide(size: int, directory: Path) -> tuple[Path, np.ndarray]:
    """A size×size digits canvas (as many test-split digits as fit, up to all 450) as a tiled BigTIFF."""
    import tifffile

    _, images, _, labels = load_split()
    count = min(len(images), (size // 96) ** 2)
    canvas, _ = grid_canvas(size, images[:count], labels[:count], np.random.default_rng(0))
    path = directory / f"slide{size}.tif"
    tifffile.imwrite(path, canvas, bigtiff=True, tile=(512, 512), photometric="minisblack")
    return path, canvas


def _cluster(workers: int):
    """A running cluster as `scan(workers=N)` starts one (`fc2conv.scan.dispatch.local_cluster`)."""
    return dispatch.local_cluster(workers)


def _rounds(runs: dict, repeats: int, phase: TilePhase) -> dict[str, tuple[float, float, float]]:
    """{name: (whole s, tile phase s, tile phase CPU s)}, medians, of `runs` ({name: (run, its output or None, the
    client of the cluster it runs on or None)}): each run once to warm up (sessions, caches, the workers' models),
    then in turn `repeats` times. CPU seconds are this process's (and the scheduler's, which a local cluster runs
    here) plus, on a cluster, its workers' over the whole call (they work only in the tile phase)."""
    for run, _, _ in runs.values():
        run()
    timings = {key: [] for key in runs}
    for _ in range(repeats):
        for key, (run, out, client) in runs.items():
            if out is not None:
                shutil.rmtree(out, ignore_errors=True)
            phase.wall = phase.cpu = None
            workers = _workers_cpu(client)
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            timings[key].append((wall, phase.wall or wall, (phase.cpu or cpu) + _workers_cpu(client) - workers))
    return {key: tuple(statistics.median(t[k] for t in timings[key]) for k in range(3)) for key in runs}


def _workers_cpu(client) -> float:
    """The CPU seconds a cluster's worker processes have taken so far (0 without a cluster)."""
    return 0.0 if client is None else sum(client.run(time.process_time).values())


def tiled_rows(names: list[str], *, sizes: dict[str, int], tile: int, repeats: int, workdir: Path,
               phase: TilePhase):
    """Yield (model, image size, halo px before+after, {run: (whole s, tiles s, tiles CPU s)}, read share) per
    model."""
    from dask.distributed import Client

    with _cluster(1) as one, Client(one, set_as_default=False) as client:
        for name in names:
            model = _export(name, workdir)
            source, canvas = _slide(sizes[name], workdir)
            timed = _rounds(_runs(model, source, canvas, tile=tile, client=client, workdir=workdir), repeats, phase)
            meta = scan(source, model=model, out=workdir / "meta.zarr", tile=tile, threads=1, force=True).metadata
            stride = meta["stride"][0]
            halo = "+".join(str(cells * stride) for cells in meta["halo_cells"][0])
            yield name, sizes[name], halo, timed, _read_share(meta, tile)


def _runs(model: Path, source: Path, canvas: np.ndarray, *, tile: int, client, workdir: Path) -> dict:
    """The timed runs for `_rounds`: one pass over the image in memory, a scan in this process and a scan on the
    one-worker cluster of `client`, all on one thread; then one pass and a worker's scan on every core."""
    # Sessions of their own: the scans' sessions stay in `fc2conv.scan.worker.load`'s cache of two.
    one, every = DenseModel(model, threads=1), DenseModel(model, threads=usable_cores())
    here, there, default = workdir / "t.zarr", workdir / "w.zarr", workdir / "d.zarr"
    address = client.scheduler.address
    return {"one pass": (lambda: one.run(canvas), None, None),
            "tiled": (lambda: scan(source, model=model, out=here, tile=tile, threads=1, force=True), here, None),
            "one worker": (lambda: scan(source, model=model, out=there, tile=tile, scheduler=address, threads=1,
                                        force=True), there, client),
            "one pass, all cores": (lambda: every.run(canvas), None, None),
            "one worker, all cores": (lambda: scan(source, model=model, out=default, tile=tile, scheduler=address,
                                                   force=True), default, client)}


def _read_share(meta: dict, tile: int) -> float:
    from fc2conv.scan.tiles import make_plan

    plan = make_plan(tuple(meta["image_size"]), stride=tuple(meta["stride"]), window=tuple(meta["window"]),
                     halo=tuple(tuple(h) for h in meta["halo_cells"]), tile=tile, cells=tuple(meta["map_size"]))
    return plan.read_pixels() / (plan.image[0] * plan.image[1])


def worker_rows(*, size: int, tile: int, repeats: int, workdir: Path, phase: TilePhase):
    """Yield (workers, threads per session, whole s, tiles s, tiles CPU s) for running clusters of one and two
    single-threaded workers and of one worker on every core, in alternating rounds."""
    from dask.distributed import Client

    model = _export("digits", workdir)
    source, _ = _slide(size, workdir)
    configs = [(1, 1), (2, 1), (1, None)]  # (workers, the scan's threads; None: from the cores)
    with contextlib.ExitStack() as stack:
        clients = {workers: stack.enter_context(Client(stack.enter_context(_cluster(workers)), set_as_default=False))
                   for workers in (1, 2)}
        runs = {}
        for workers, threads in configs:
            out, client = workdir / f"w{workers}-{threads}.zarr", clients[workers]
            runs[workers, threads] = (lambda out=out, address=client.scheduler.address, threads=threads: scan(
                source, model=model, out=out, tile=tile, scheduler=address, threads=threads, force=True), out, client)
        timed = _rounds(runs, repeats, phase)
    for (workers, threads), times in timed.items():
        yield workers, threads or usable_cores() // workers, *times


def peak_rss_mb(size: int, *, tile: int, workdir: Path) -> tuple[float, float]:
    """(peak resident MB, seconds) of a scan of a size² digits slide in a fresh process."""
    model = _export("digits", workdir)
    source, _ = _slide(size, workdir)
    code = f"""
import re, time
from pathlib import Path
from fc2conv.runtime import DenseModel, scan
start = time.perf_counter()
scan({str(source)!r}, model={str(model)!r}, out={str(workdir / 'rss.zarr')!r}, tile={tile}, threads=1, force=True)
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
print(peak / 1024, time.perf_counter() - start)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak, seconds = map(float, done.stdout.split())
    return peak, seconds


def main_tiled(args) -> int:
    names = [n for n in args.models if n in TILED] or TILED
    sizes = {"digits": args.image, "resnet18": args.resnet_image}
    phase = TilePhase()
    print(cpu_line())
    print(f"onnxruntime; tile {args.tile}; medians of {args.repeats} alternating rounds; {_load()} before")
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        print("\ntiled against one pass (tiles: the scan's tile phase; scan: the whole call; CPU: the tile phase's CPU "
              "seconds over one pass's)")
        print(f"{'model':<9} {'image':>11} {'halo px':>8} {'threads':>7} {'where':<13} {'one pass s':>10} "
              f"{'tiles s':>8} {'scan s':>7} {'tiles/one':>9} {'scan/one':>9} {'CPU/one':>8} {'read share':>10}")
        for name, size, halo, timed, share in tiled_rows(names, sizes=sizes, tile=args.tile, repeats=args.repeats,
                                                          workdir=workdir, phase=phase):
            rows = [(1, "this process", "one pass", "tiled"), (1, "one worker", "one pass", "one worker"),
                    (usable_cores(), "one worker", "one pass, all cores", "one worker, all cores")]
            for threads, where, base, key in rows:
                (once, _, once_cpu), (whole, tiles, cpu) = timed[base], timed[key]
                print(f"{name:<9} {f'{size}×{size}':>11} {halo:>8} {threads:>7} {where:<13} {once:>10.2f} "
                      f"{tiles:>8.2f} {whole:>7.2f} {tiles / once:>8.2f}× {whole / once:>8.2f}× "
                      f"{cpu / once_cpu:>7.2f}× {share:>9.2f}×", flush=True)
        print(f"\nworkers (digits, {args.workers_image}×{args.workers_image}; speed-up of the tile phase over one "
              "single-threaded worker)")
        print(f"{'workers':<9} {'threads':>7} {'tiles s':>8} {'scan s':>8} {'CPU s':>7} {'tiles MP/s':>10} "
              f"{'speed-up':>9}")
        first = None
        for workers, threads, whole, tiles, cpu in worker_rows(size=args.workers_image, tile=args.tile,
                                                               repeats=args.repeats, workdir=workdir, phase=phase):
            first = first or tiles
            rate = args.workers_image ** 2 / 1e6 / tiles
            print(f"{workers:<9} {threads:>7} {tiles:>8.2f} {whole:>8.2f} {cpu:>7.2f} {rate:>10.1f} "
                  f"{first / tiles:>8.2f}×", flush=True)
        print("\npeak memory (digits, one process)")
        print(f"{'image':<13} {'peak MB':>8} {'seconds':>8}")
        peaks = []
        for size in args.rss_sizes:
            peak, seconds = peak_rss_mb(size, tile=args.tile, workdir=workdir)
            peaks.append(peak)
            print(f"{f'{size}×{size}':<13} {peak:>8.1f} {seconds:>8.1f}", flush=True)
        print(f"growth {args.rss_sizes[-1]}² / {args.rss_sizes[0]}²: {peaks[-1] / peaks[0]:.3f} (target ≤ 1.10)")
    print(f"\n{_load()} after")
    return 0


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)"
