"""`python scripts/bench.py --tiled`: what scanning in tiles costs against one pass, what a second worker gains,
and how peak memory follows the tile rather than the image.

1. Tiled against one pass, both on one thread, on an image that fits in memory: the digits CNN (padding-free:
   each tile reads only its windows' extra W − S pixels) and ResNet18 with random weights, converted at 224×224
   (padded: each tile also reads its receptive-field halo). Each of `--repeats` rounds times one pass over the
   in-memory image, a scan in this process (`threads=1`) and a scan on a running one-worker cluster, in turn;
   the table gives medians. "read share" is what the halo predicts: the pixels all tiles read over the
   image's pixels (exact, from the tile plan; ((tile + halo) / tile)² for a tile inside the image).
2. Workers: the digits CNN over a larger image on running clusters of one and of two single-threaded workers.
3. Peak memory: a scan of the digits slide at two sizes, each in a fresh process (VmHWM: the resident peak since
   the process started), at the same tile size.

Images are the demo's slides (`scripts/digits_slide.py`), tiled uncompressed BigTIFFs in a temporary directory.
Nothing is asserted: the numbers are printed as measured.
"""

from __future__ import annotations

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
from fc2conv.runtime import scan
from fc2conv.scan.worker import ModelSpec, file_sha256, load

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from digits_slide import grid_canvas  # noqa: E402  (scripts/ is on the path when bench.py runs)

from models.digits_cnn import DigitsCNN, load_split  # noqa: E402

TILED = ["digits", "resnet18"]
REFERENCE = {"digits": (1, 32, 32), "resnet18": (3, 224, 224)}


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


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _cluster(workers: int):
    from dask.distributed import LocalCluster

    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                        dashboard_address=None, silence_logs=40)


def tiled_rows(names: list[str], *, sizes: dict[str, int], tile: int, repeats: int, workdir: Path):
    """Yield (model, image size, halo px before+after, one pass s, tiled s, one worker s, read share) per model."""
    with _cluster(1) as one:
        for name in names:
            model = _export(name, workdir)
            source, canvas = _slide(sizes[name], workdir)
            runs = _runs(model, source, canvas, tile=tile, scheduler=one.scheduler_address, workdir=workdir)
            for run in runs.values():  # warm up: sessions, caches, the worker's model
                run()
            timings = {key: [] for key in runs}
            for _ in range(repeats):
                for key, run in runs.items():
                    timings[key].append(_seconds(run))
            meta = runs["tiled"]().metadata
            stride = meta["stride"][0]
            halo = "+".join(str(cells * stride) for cells in meta["halo_cells"][0])
            yield (name, sizes[name], halo, *(statistics.median(timings[k]) for k in runs), _read_share(meta, tile))


def _runs(model: Path, source: Path, canvas: np.ndarray, *, tile: int, scheduler: str, workdir: Path) -> dict:
    """The three timed runs: one pass over the image in memory, a scan in this process, a scan on one worker."""
    dense = load(ModelSpec(str(model.resolve()), file_sha256(model), 1))
    return {"one pass": lambda: dense.run(canvas),
            "tiled": lambda: scan(source, model=model, out=workdir / "t.zarr", tile=tile, threads=1, force=True),
            "one worker": lambda: scan(source, model=model, out=workdir / "w.zarr", tile=tile, scheduler=scheduler,
                                       force=True)}


def _read_share(meta: dict, tile: int) -> float:
    from fc2conv.scan.tiles import make_plan

    plan = make_plan(tuple(meta["image_size"]), stride=tuple(meta["stride"]), window=tuple(meta["window"]),
                     halo=tuple(tuple(h) for h in meta["halo_cells"]), tile=tile, cells=tuple(meta["map_size"]))
    return plan.read_pixels() / (plan.image[0] * plan.image[1])


def worker_rows(*, size: int, tile: int, repeats: int, workdir: Path):
    """Yield (workers, seconds, MP/s) for clusters of one and two single-threaded workers."""
    model = _export("digits", workdir)
    source, _ = _slide(size, workdir)
    for workers in (1, 2):
        with _cluster(workers) as cluster:

            def run(cluster=cluster):
                return scan(source, model=model, out=workdir / "w.zarr", tile=tile,
                            scheduler=cluster.scheduler_address, force=True)

            run()  # every worker opens the model once
            seconds = statistics.median(_seconds(run) for _ in range(repeats))
        yield workers, seconds, size * size / 1e6 / seconds


def peak_rss_mb(size: int, *, tile: int, workdir: Path) -> tuple[float, float]:
    """(peak resident MB, seconds) of a scan of a size² digits slide in a fresh process."""
    model = _export("digits", workdir)
    source, _ = _slide(size, workdir)
    code = f"""
import re, time
from pathlib import Path
from fc2conv.runtime import scan
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
    print(f"onnxruntime, one thread per process; tile {args.tile}; median of {args.repeats} rounds")
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        print("\ntiled against one pass")
        print(f"{'model':<9} {'image':>11} {'halo px':>8} {'one pass s':>10} {'tiled s':>8} {'1 worker s':>10} "
              f"{'tiled/one':>9} {'worker/one':>10} {'read share':>10}")
        for name, size, halo, once, tiled, worker, share in tiled_rows(
                names, sizes=sizes, tile=args.tile, repeats=args.repeats, workdir=workdir):
            print(f"{name:<9} {f'{size}×{size}':>11} {halo:>8} {once:>10.2f} {tiled:>8.2f} {worker:>10.2f} "
                  f"{tiled / once:>8.2f}× {worker / once:>9.2f}× {share:>9.2f}×", flush=True)
        print(f"\nworkers (digits, {args.workers_image}×{args.workers_image})")
        print(f"{'workers':<9} {'seconds':>8} {'MP/s':>8} {'speed-up':>9}")
        first = None
        for workers, seconds, rate in worker_rows(size=args.workers_image, tile=args.tile, repeats=args.repeats,
                                                  workdir=workdir):
            first = first or seconds
            print(f"{workers:<9} {seconds:>8.2f} {rate:>8.1f} {first / seconds:>8.2f}×", flush=True)
        print("\npeak memory (digits, one process)")
        print(f"{'image':<13} {'peak MB':>8} {'seconds':>8}")
        peaks = []
        for size in args.rss_sizes:
            peak, seconds = peak_rss_mb(size, tile=args.tile, workdir=workdir)
            peaks.append(peak)
            print(f"{f'{size}×{size}':<13} {peak:>8.1f} {seconds:>8.1f}", flush=True)
        print(f"growth {args.rss_sizes[-1]}² / {args.rss_sizes[0]}²: {peaks[-1] / peaks[0]:.3f} (target ≤ 1.10)")
    return 0

