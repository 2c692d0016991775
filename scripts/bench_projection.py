"""`python scripts/bench.py --projection`: how long a 100,000 × 100,000 slide takes on this machine, measured.

1. The CPU: lscpu's model name, its class (`fc2conv.runtime.cpu`) and cores, and the load average before and after.
2. Paths: a dense ResNet18 (converted at 224×224, random weights, ImageNet mean and std; `--models small`: the
   specification's small CNN at 32×32, for smoke tests) scans the smallest `--sizes` slide with 100% tissue in this
   process (threads = cores) on every path: onnxruntime fp32 (the reference) and int8, OpenVINO fp32, bf16, int8 and
   int8 with bf16 float parts. The int8 file is `fc2conv.runtime.quantize`'s, calibrated on crops of a synthetic
   slide, its score layer kept in float (random weights keep no budget in int8, as in `bench.py --precision`). A
   path is within fc2conv's drift budget when the best class of at least `MIN_AGREEMENT` of the slide's cells is the
   reference's; the fastest such reduced-precision path is "best".
3. Placement: fp32 and best, in this process (threads = cores) against a running cluster of `cores` one-thread
   workers as `scan(workers=cores)` starts one (`fc2conv.scan.dispatch.local_cluster`; started once, so its start-up
   is not timed, and each worker's model warmed up first), on the same slide; each then runs where it was faster.
4. Throughput: for each size, a synthetic brightfield slide (`scripts/tissue_slide.py`: tissue-like regions on
   bright glass, a tiled pyramidal BigTIFF) with 100% tissue, scanned whole, and one with 40% tissue, scanned with
   `mask="auto"`; fp32 and best. MP/s is the slide's area over the scan's whole wall time (mask thumbnail, tiles,
   outputs): with a mask the time follows the tiles cropped around the tissue plus the thumbnail, not 40% exactly.
5. Projection of a 100,000² slide, two ways. "As measured at" the largest size: 10,000 MP / MP/s there, per run and
   tissue. There the 40% layout's blobs (`tissue_slide.layout`: sigma max(shape) / 24 blocks, so they grow with
   the slide) are about a tile wide and the mask skips few or no tiles, so 40% tissue costs about what 100% does.
   "With the mask's tiles at 100,000²": the area fc2conv would compute there, counted by its own tile plan and mask
   selection (`scripts/bench_masked_area.py`: the model's stride, window and halo, `--tile`, the same layout and
   seed as the measured slides as the mask), over the computed MP per second of the largest 40% run (its MP
   computed / seconds, which spreads that run's thumbnail and outputs over its computed area; the thumbnail, read
   from a pyramid level of about 1–2k pixels at any slide size, is left out as a fixed cost of seconds). The goal,
   40% tissue in at most `GOAL_MINUTES` at the best path (the fastest of the two runs), is checked on this one.

Scans at the larger sizes run once each (`--rounds` for more, the median); progress goes to stderr. Nothing is asserted.

Duration: the default sizes stop at 12288², not 16384², to keep a run on the idle 2-core machine short: about 11
minutes measured on the AMD EPYC of docs/benchmarks.md (float32 about 1.7 MP/s, OpenVINO int8 about 5.5); `--sizes
4096 8192 16384` would add about 4 minutes there (estimated from those rates). The slides are uncompressed (a 16384²
one with its pyramid takes 1.1 GB of the temporary directory).
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from fc2conv.scan.tasks import usable_cores

ROOT = Path(__file__).resolve().parents[1]
SIZES = [4096, 8192, 12288]
SLIDE = 100_000
TISSUE = 0.4
SEED = 0  # the synthetic slides' layout
GOAL_MINUTES = 30
# (label, file, backend, precision); onnxruntime fp32 first: the reference every other path's drift is measured from.
PATHS = [("ort fp32", "fp32", "onnxruntime", "fp32"), ("ov fp32", "fp32", "openvino", "fp32"),
         ("ov bf16", "fp32", "openvino", "bf16"), ("ort int8", "int8", "onnxruntime", "fp32"),
         ("ov int8", "int8", "openvino", "fp32"), ("ov int8+bf16", "int8", "openvino", "bf16")]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_line() -> str:
    """'CPU: <lscpu model name>, class <class>, <n> cores'."""
    from timing import cpu_model_name

    from fc2conv.runtime.cpu import detect

    name = cpu_model_name()
    cpu = detect()
    return f"CPU: {name}, class {cpu.kind} ({' '.join(cpu.shown_flags())}), {usable_cores()} cores usable"


def load_line(when: str) -> str:
    return f"load average {when}: " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)"


def slide(size: int, fraction: float, directory: Path) -> Path:
    """A size² brightfield slide with `fraction` tissue as a pyramidal BigTIFF in `directory` (written once)."""
    from tissue_slide import brightfield, write_pyramid

    path = directory / f"slide{size}_{round(fraction * 100)}.tif"
    if not path.exists():
        _log(f"  writing a {size}×{size} slide, {fraction:.0%} tissue")
        image, _ = brightfield((size, size), fraction, seed=SEED)
        write_pyramid(path, image)
    return path


def models(name: str, directory: Path) -> dict[str, Path]:
    """The float32 file of `name` and its int8 file, calibrated on 256² crops of a 40% tissue slide."""
    import torch
    import torchvision
    from PIL import Image
    from tissue_slide import brightfield

    import fc2conv
    from fc2conv.runtime import quantize

    sys.path.insert(0, str(ROOT))
    from models.small_cnn import small_cnn

    torch.manual_seed(0)
    model, shape = ((torchvision.models.resnet18(weights=None), (3, 224, 224)) if name == "resnet18"
                    else (small_cnn(), (3, 32, 32)))
    fp32 = fc2conv.export_onnx(fc2conv.convert(model.eval(), shape), directory / f"{name}.onnx",
                               mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    calibration = directory / "calibration"
    calibration.mkdir()
    image, _ = brightfield((1024, 1024), TISSUE, seed=1)
    for index in range(16):
        top, left = divmod(index, 4)
        Image.fromarray(image[top * 256:(top + 1) * 256, left * 256:(left + 1) * 256]).save(
            calibration / f"crop{index:02}.png")
    _log(f"  quantizing {name} to int8")
    int8 = quantize(fp32, directory / f"{name}_int8.onnx", calibration, float_layers="last", min_agreement=0.01)
    return {"fp32": fp32, "int8": int8.path}


def _scan(source: Path, model: Path, out: Path, *, backend: str, precision: str, tile: int, threads: int,
          scheduler: str | None = None, mask: str | None = None):
    from fc2conv.runtime import scan

    where = {"scheduler": scheduler} if scheduler else {"threads": threads}
    return scan(source, model=model, out=out, tile=tile, backend=backend, precision=precision, mask=mask,
                force=True, progress=False, **where)


def path_rows(files: dict[str, Path], source: Path, *, tile: int, threads: int, rounds: int, workdir: Path):
    """Yield (label, MP/s, argmax agreement with the reference, max |Δp|) per path: `rounds` alternating rounds."""
    from fc2conv.runtime.drift import measure

    openvino = importlib.util.find_spec("openvino") is not None
    paths = [entry for entry in PATHS if entry[2] == "onnxruntime" or openvino]
    rates: dict[str, list[float]] = {label: [] for label, *_ in paths}
    maps: dict[str, np.ndarray] = {}
    for index in range(rounds):
        for label, kind, backend, precision in paths:
            _log(f"  paths: round {index + 1}/{rounds}, {label}")
            done = _scan(source, files[kind], workdir / "paths.zarr", backend=backend, precision=precision,
                         tile=tile, threads=threads)
            rates[label].append(done.megapixels_per_second)
            if index == 0:
                maps[label] = done.scores()[...][None]
    for label, *_ in paths:
        drift = measure([(maps[PATHS[0][0]], maps[label])])
        yield label, statistics.median(rates[label]), drift.argmax_agreement, drift.max_abs_probability


def placement(path: tuple, files: dict[str, Path], source: Path, warm: Path, *, tile: int, threads: int,
              scheduler: str, rounds: int, workdir: Path) -> tuple[float, float]:
    """(MP/s in this process, MP/s on the cluster) of one path, in alternating rounds after a warm-up on `warm`."""
    _, kind, backend, precision = path
    _scan(warm, files[kind], workdir / "warm.zarr", backend=backend, precision=precision, tile=tile, threads=threads,
          scheduler=scheduler)  # every worker opens the model
    here, there = [], []
    for _ in range(rounds):
        for rates, where in ((here, None), (there, scheduler)):
            done = _scan(source, files[kind], workdir / "place.zarr", backend=backend, precision=precision,
                         tile=tile, threads=threads, scheduler=where)
            rates.append(done.megapixels_per_second)
    return statistics.median(here), statistics.median(there)


def size_rows(runs: dict[str, tuple], files: dict[str, Path], *, sizes: list[int], tile: int, threads: int,
              rounds: int, workdir: Path):
    """Yield (run, tissue, size, tiles, computed, skipped, mask coverage, MP computed, seconds, slide MP/s) per size,
    tissue and run; `runs` maps a label to (path entry, scheduler address or None)."""
    for size in sizes:
        for fraction, mask in ((1.0, None), (TISSUE, "auto")):
            source = slide(size, fraction, workdir)
            for label, ((_, kind, backend, precision), scheduler) in runs.items():
                seconds = []
                for index in range(rounds):
                    _log(f"  {size}×{size}, {fraction:.0%} tissue, {label}: scan {index + 1}/{rounds}")
                    done = _scan(source, files[kind], workdir / "size.zarr", backend=backend, precision=precision,
                                 tile=tile, threads=threads, scheduler=scheduler, mask=mask)
                    seconds.append(done.seconds)
                coverage = (done.metadata.get("mask") or {}).get("coverage")
                median = statistics.median(seconds)
                yield (label, fraction, size, done.tiles, done.computed, done.skipped, coverage, done.megapixels,
                       median, size * size / 1e6 / median)
        for fraction in (1.0, TISSUE):  # the slides of the next size replace these
            (workdir / f"slide{size}_{round(fraction * 100)}.tif").unlink(missing_ok=True)


def main_projection(args) -> int:
    from fc2conv.runtime.quantization import MIN_AGREEMENT
    from fc2conv.scan import dispatch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    threads = cores = usable_cores()  # the cores this process may use, as the scan's own defaults count them
    args.sizes = sorted(args.sizes)
    print(cpu_line())
    print(load_line("before"), flush=True)
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        files = models(args.model, workdir)
        first = slide(args.sizes[0], 1.0, workdir)
        name = "ResNet18 (224, random weights)" if args.model == "resnet18" else "small CNN (32, random weights)"
        print(f"\npaths: {name}, {args.sizes[0]}×{args.sizes[0]}, 100% tissue, this process, {threads} threads, "
              f"tile {args.tile}; MP/s of the whole scan (median of {args.choose_rounds}); budget: best class "
              f"agrees on ≥ {MIN_AGREEMENT:.0%} of cells")
        print(f"{'path':<13} {'MP/s':>7} {'speed-up':>8} {'argmax':>8} {'max|Δp|':>8} {'budget':>6}")
        rows = list(path_rows(files, first, tile=args.tile, threads=threads, rounds=args.choose_rounds,
                              workdir=workdir))
        for label, rate, agreement, probability in rows:
            within = "yes" if agreement >= MIN_AGREEMENT else "no"
            print(f"{label:<13} {rate:>7.2f} {rate / rows[0][1]:>7.2f}× {agreement:>8.2%} {probability:>8.4f} "
                  f"{within:>6}", flush=True)
        reduced = [row for row in rows[1:] if row[2] >= MIN_AGREEMENT and "fp32" not in row[0]]
        best = max(reduced, key=lambda row: row[1])[0] if reduced else PATHS[0][0]
        print(f"best reduced precision within the budget: {best if reduced else 'none (fp32 kept)'}")
        chosen = {"fp32": PATHS[0], "best": next(p for p in PATHS if p[0] == best)}
        # The cluster `scan(workers=cores)` would start (lean settings), started once: its start-up is not timed.
        with dispatch.local_cluster(cores) as cluster:
            runs = _placed(chosen, files, first, workdir, args=args, threads=threads,
                           scheduler=cluster.scheduler_address)
            print(f"\nthroughput: one scan per row (median of {args.rounds}); MP/s = slide area / wall time; "
                  "40% tissue with mask=auto")
            print(f"{'run':<18} {'tissue':>6} {'slide':>11} {'tiles':>5} {'computed':>8} {'skipped':>7} "
                  f"{'coverage':>8} {'MP computed':>11} {'seconds':>8} {'MP/s':>7}")
            measured = {}
            for label, fraction, size, tiles, computed, skipped, coverage, pixels, seconds, rate in size_rows(
                    runs, files, sizes=args.sizes, tile=args.tile, threads=threads, rounds=args.rounds,
                    workdir=workdir):
                shown = "-" if coverage is None else f"{coverage:.1%}"
                print(f"{label:<18} {fraction:>6.0%} {f'{size}×{size}':>11} {tiles:>5} {computed:>8} {skipped:>7} "
                      f"{shown:>8} {pixels:>11.1f} {seconds:>8.2f} {rate:>7.2f}", flush=True)
                measured[label, fraction] = rate, pixels, seconds  # the largest size's, once the loop ends
        _log(f"  planning a {SLIDE}×{SLIDE} scan and selecting its tiles with the {TISSUE:.0%} layout")
        from bench_masked_area import masked_area

        area = masked_area(SLIDE, TISSUE, model=files["fp32"], tile=args.tile, seed=SEED)
    _project(measured, {label: "workers" if scheduler else "here" for label, (_, scheduler) in runs.items()},
             largest=args.sizes[-1], area=area)
    print(load_line("after"))
    return 0


def _placed(chosen: dict[str, tuple], files, source: Path, workdir: Path, *, args, threads: int,
            scheduler: str) -> dict[str, tuple]:
    """{run label: (path entry, `scheduler` or None)}: each chosen path where it ran faster."""
    warm = slide(512, 1.0, workdir)
    workers = usable_cores()
    print(f"\nplacement: {args.sizes[0]}×{args.sizes[0]}, 100% tissue; this process ({threads} threads) against "
          f"{workers} one-thread workers (a running cluster; median of {args.choose_rounds})")
    print(f"{'run':<18} {'here MP/s':>9} {'workers MP/s':>12} {'runs on':>9}")
    runs = {}
    for role, path in chosen.items():
        here, there = placement(path, files, source, warm, tile=args.tile, threads=threads, scheduler=scheduler,
                                rounds=args.choose_rounds, workdir=workdir)
        on = "workers" if there > here else "here"
        label = f"{role}: {path[0]}"
        print(f"{label:<18} {here:>9.2f} {there:>12.2f} {on:>9}", flush=True)
        runs[label] = (path, scheduler if on == "workers" else None)
    return runs


def _project(measured: dict[tuple[str, float], tuple], where: dict[str, str], *, largest: int, area) -> None:
    """The projections: one row per (run, tissue) of `measured` ((slide MP/s, MP computed, seconds) at `largest`)
    as measured there, one per run at 40% tissue with the tiles the mask selects at 100,000² (`area`, a
    `bench_masked_area.MaskedArea`), and the goal's line on the second: the fastest run, whichever precision and
    placement that is."""
    slide = SLIDE * SLIDE / 1e6
    print(f"\nprojection as measured at {largest}×{largest}: a {SLIDE:,}×{SLIDE:,} slide ({slide:,.0f} MP) = area / "
          f"MP/s there (there the {TISSUE:.0%} layout's blobs are about a tile wide: its mask skips few or no tiles)")
    print(f"{'run':<18} {'tissue':>6} {'on':>7} {'MP/s':>7} {'minutes':>8}")
    for (label, fraction), (rate, _, _) in measured.items():
        print(f"{label:<18} {fraction:>6.0%} {where[label]:>7} {rate:>7.2f} {slide / rate / 60:>8.1f}")
    (y0, y1), (x0, x1) = area.halo
    print(f"\nmask at {SLIDE:,}×{SLIDE:,}: tissue_slide.layout, {TISSUE:.0%} tissue, seed {SEED} ({area.tissue:.1%} of "
          f"its blocks); tile {area.tile}, stride {area.stride[0]}, window {area.window[0]}, halo {y0}+{y1}×{x0}+{x1} "
          f"cells: {area.planned} tiles planned, {area.computed} computed, {area.skipped} skipped; "
          f"{area.megapixels:.1f} MP computed ({area.read_megapixels:.1f} MP read with the halo)")
    print(f"projection with the mask's tiles at {SLIDE:,}×{SLIDE:,}: {area.megapixels:.1f} MP computed / computed "
          f"MP/s of the {TISSUE:.0%} run at {largest}×{largest} (its MP computed / seconds); the mask's thumbnail, a "
          "few seconds at any size, left out")
    print(f"{'run':<18} {'tissue':>6} {'on':>7} {'MP/s':>7} {'minutes':>8}")
    masked = {}
    for (label, fraction), (_, pixels, seconds) in measured.items():
        if fraction == TISSUE:
            masked[label] = area.megapixels / (pixels / seconds) / 60
            print(f"{label:<18} {fraction:>6.0%} {where[label]:>7} {pixels / seconds:>7.2f} {masked[label]:>8.1f}")
    label, minutes = min(masked.items(), key=lambda item: item[1])
    verdict = "met" if minutes <= GOAL_MINUTES else "not met"
    print(f"goal (with the mask's tiles at {SLIDE:,}²): {TISSUE:.0%} tissue in ≤ {GOAL_MINUTES} min at the best path "
          f"({label}, {where[label]}): {verdict} ({minutes:.1f} min)")
