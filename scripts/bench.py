"""Latency of converted models against their originals, and dense evaluation against a naive sliding window.

    python scripts/bench.py                     # the four reference models, batch 1
    python scripts/bench.py --models resnet50 --repeats 50 --check
    python scripts/bench.py --sliding --check   # dense vs naive sliding window, torch and onnxruntime
    python scripts/bench.py --sliding --models resnet50
    python scripts/bench.py --tiled             # tiled scanning vs one pass, one vs two workers, peak memory
    python scripts/bench.py --density           # a denser map in one dilated pass vs shift-and-stitch vs naive
    python scripts/bench.py --precision         # bf16 and int8 (onnxruntime, OpenVINO) against float32, and scans
    python scripts/bench.py --projection        # MP/s of a ResNet18 scan at growing slide sizes; a 100k² slide's time

Original and converted run alternately, `--repeats` times each after warm-up, so machine noise hits
both alike; the table gives each median and their ratio (converted / original). With `--check` the
script exits 1 if a ratio exceeds `--max-ratio` (1.05).

`--sliding`: the converted model's one dense pass over a large image against the naive sliding window,
every reference-size window cropped out of the image (at the cells' boxes, so both give one score vector
per cell) and run through the original in batches of `--chunk`, in eager PyTorch and in onnxruntime (the
dense model exported by `fc2conv.export_onnx`, the original by the TorchScript exporter with a dynamic batch;
both sessions with thread spinning off, so neither one's idle threads take the cores the other is timed on).
Each of `--repeats` rounds (default 15) times one naive run, then dense passes for as long (see `_median_pair`).
With `--check` the script exits 1 if a speed-up is below `--min-efficiency` (0.9) × the FLOP ratio. The
speed-up (naive time / dense time) is printed beside the FLOP ratio (naive FLOPs / dense FLOPs, counted by
`torch.utils.flop_counter`), and their quotient: 1.0 means the dense pass saves exactly the work it skips.

`--tiled`: `fc2conv scan` against one pass, one worker against two, and peak memory at two image sizes
(`scripts/bench_tiled.py` says how each is measured).

`--density`: a map r times denser (stride S/r) three ways, for r in `--densities` (default 2 4; those a
model does not allow are skipped and named): one pass of `fc2conv.convert(..., density=r)` (dilated),
shift-and-stitch (r² passes of the ordinary dense model over the input shifted by (a·S/r, b·S/r), their maps
interleaved), and the naive sliding window at stride S/r (every window inside the image cropped out and run
through the original in batches, as `--sliding` does). Models: the digits CNN with its trained checkpoint on
the demo's canvas size, AlexNet and ResNet50 with random weights; `--onnxruntime` adds the same three in
onnxruntime (spinning off). Each of `--repeats` rounds (default 5) times one naive run, then each of the
others for as long (`median_rounds`). Speed-ups (stitch / dilated, naive / dilated) are printed beside the
FLOP ratios of the same pairs.

`--precision`: onnxruntime fp32 against OpenVINO fp32 and bf16 and the int8 file of `fc2conv quantize` in both
backends, on the digits CNN, ResNet18 and ResNet50 at `--dense-size`² (default 896) with 1 and 2 threads, in
alternating rounds (`median_rounds`, default 5), with the drift of each from float32; then scan throughput per path
and whether a tiled scan equals one pass of the same backend and precision; then the kernels each path ran
(`scripts/bench_precision.py`). `--quick` shrinks it to a smoke test.

`--projection`: scans of synthetic brightfield slides at `--sizes` (default 4096 8192 12288) with 100% tissue and
with 40% tissue and `mask="auto"`, at float32 and at the fastest reduced precision within the drift budget, each in
this process or on workers, whichever was faster; then the time of a 100,000 × 100,000 slide projected from the
largest size (`scripts/bench_projection.py`). `--models small` takes a small CNN instead of ResNet18; `--quick`
(sizes 512 1024, tile 256, one round) is the smoke test's size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from timing import median_rounds, seconds
from torch.utils.flop_counter import FlopCounterMode

import fc2conv
from fc2conv import allowed_densities
from fc2conv.shapes import times
from fc2conv.storage.checkpoint import load_into, load_state_dict

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["alexnet", "vgg16", "resnet50", "mobilenet_v3_large"]
# The settings: AlexNet on a 500×500 image (the FCN paper's), VGG16 and ResNet50 at 448×448.
SLIDING = [("alexnet", 500), ("vgg16", 448), ("resnet50", 448)]
# Rounds per sliding row: with 5, ResNet50 in onnxruntime measured 0.77-1.10 × its FLOP ratio over 13 runs;
# with 15, 0.91-0.95 over four (a burst of noise then moves a median by less).
SLIDING_ROUNDS = 15
# --density: (model, image height × width, crops per naive batch). The digits CNN on the demo's canvas, whose
# 32×32 crops are so small that batches of 16 would time Python rather than the network; AlexNet and ResNet50
# where one full run, torch and onnxruntime at 5 rounds, stays near 10 minutes on 2 cores.
DENSITY = [("digits", (144, 240), 256), ("alexnet", (320, 320), 16), ("resnet50", (288, 288), 16)]
DENSITY_ROUNDS = 5


def bench(name: str, *, size: int, batch: int, repeats: int, warmup: int, mode: str) -> tuple[float, float]:
    """Median seconds of the original and of its conversion on one input."""
    torch.manual_seed(0)
    original = torchvision.models.get_model(name, weights=None).eval()
    converted = fc2conv.convert(original, (3, size, size), mode=mode)
    x = torch.randn(batch, 3, size, size)
    times: dict[str, list[float]] = {"original": [], "converted": []}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for label, model in (("original", original), ("converted", converted)):
                elapsed = seconds(model, x)
                if i >= warmup:
                    times[label].append(elapsed)
    return statistics.median(times["original"]), statistics.median(times["converted"])


def _median_pair(naive, dense, *, repeats: int, warmup: int) -> tuple[float, float]:
    """Median seconds of the naive and the dense callables (`median_rounds` with one other)."""
    naive_s, (dense_s,) = median_rounds(naive, [dense], repeats=repeats, warmup=warmup)
    return naive_s, dense_s


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _session(path: Path) -> ort.InferenceSession:
    """A CPU session whose idle threads sleep: by default they spin-wait after each run, and while one of two
    alternating sessions spins it takes the cores the other is timed on (the dense pass measured 1.5× slower)."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def sliding(name: str, *, size: int, repeats: int, warmup: int, chunk: int, workdir: Path):
    """Yield (model, size, windows, runtime, naive s, dense s, FLOP ratio): naive sliding window vs dense."""
    torch.manual_seed(0)
    original = torchvision.models.get_model(name, weights=None).eval()
    converted = fc2conv.convert(original, (3, 224, 224))
    geo = fc2conv.geometry(converted)
    image = torch.randn(1, 3, size, size)
    with torch.no_grad():  # not inference_mode: the exporter below traces these tensors
        rows, cols = converted(image).shape[2:]
        boxes = [geo.box(i, j) for i in range(rows) for j in range(cols)]
        crops = torch.cat([image[:, :, top:bottom, left:right] for top, left, bottom, right in boxes])
        chunks = crops.split(chunk)
        naive_flops = _flops(lambda: original(crops[:1])) * len(crops)
        ratio = naive_flops / _flops(lambda: converted(image))

        def naive_torch():
            return [original(c) for c in chunks]

        timing = _median_pair(naive_torch, lambda: converted(image), repeats=repeats, warmup=warmup)
    yield (name, size, len(boxes), "torch", *timing, ratio)

    dense_path = fc2conv.export_onnx(converted, workdir / f"{name}_dense.onnx", force=True)
    naive_path = workdir / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(original, (crops[:1],), naive_path, dynamo=False, input_names=["input"],
                          dynamic_axes={"input": {0: "batch"}}, opset_version=18)
    dense, naive = (_session(p) for p in (dense_path, naive_path))
    image_np, chunks_np = image.numpy(), [c.numpy() for c in chunks]

    def naive_ort():
        return [naive.run(None, {"input": c}) for c in chunks_np]

    timing = _median_pair(naive_ort, lambda: dense.run(None, {"input": image_np}), repeats=repeats, warmup=warmup)
    yield (name, size, len(boxes), "onnxruntime", *timing, ratio)


def main_sliding(args: argparse.Namespace) -> int:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; naive crops in batches of {args.chunk}; "
          f"median of {args.repeats}")
    print(f"{'model':<10} {'image':>8} {'windows':>7} {'runtime':<12} {'naive ms':>10} {'dense ms':>9} "
          f"{'speed-up':>8} {'FLOP ratio':>10} {'speed-up/FLOPs':>14}")
    worst = np.inf
    with tempfile.TemporaryDirectory() as workdir:
        for name, size in [(n, s) for n, s in SLIDING if n in args.models]:
            for model, image, windows, runtime, naive, dense, ratio in sliding(
                name, size=size, repeats=args.repeats, warmup=args.warmup, chunk=args.chunk, workdir=Path(workdir)
            ):
                speedup = naive / dense
                worst = min(worst, speedup / ratio)
                print(f"{model:<10} {image:>4}×{image:<3} {windows:>7} {runtime:<12} {naive * 1e3:>10.1f} "
                      f"{dense * 1e3:>9.1f} {speedup:>7.2f}× {ratio:>9.2f}× {speedup / ratio:>14.2f}", flush=True)
    if args.check and worst < args.min_efficiency:
        print(f"FAILED: worst speed-up / FLOP ratio {worst:.2f} < {args.min_efficiency}", file=sys.stderr)
        return 1
    return 0


def _density_original(name: str) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """The model and its reference input: the digits CNN with its trained checkpoint, or torchvision with random
    weights at 224×224."""
    torch.manual_seed(0)
    if name != "digits":
        return torchvision.models.get_model(name, weights=None).eval(), (3, 224, 224)
    sys.path.insert(0, str(ROOT))
    from models.digits_cnn import DigitsCNN
    from models.digits_data import WINDOW

    checkpoint = ROOT / "models" / "digits_cnn.safetensors"
    model = DigitsCNN()
    load_into(model, load_state_dict(checkpoint), source=str(checkpoint))
    return model.eval(), (1, WINDOW, WINDOW)


def _stitch(run, image, out, r: int, step: tuple[int, int]):
    """Shift-and-stitch into `out`: for every shift (a, b), the ordinary map of the input shifted by (a, b) steps
    fills the cells (r·i + a, r·j + b). Works on torch tensors and numpy arrays alike."""
    for a in range(r):
        for b in range(r):
            part = run(image[:, :, a * step[0]:, b * step[1]:])
            target = out[:, :, a::r, b::r]
            target[...] = part[:, :, :target.shape[2], :target.shape[3]]
    return out


def density_rows(name: str, *, size: tuple[int, int], densities: list[int], repeats: int, warmup: int, chunk: int,
                 workdir: Path | None):
    """Yield, for each allowed r in `densities` and each runtime (torch, then onnxruntime when `workdir` is
    given): (model, size, runtime, r, stride, cells, windows, dilated s, stitch s, naive s, stitch FLOPs /
    dilated FLOPs, naive FLOPs / dilated FLOPs); or (model, r, allowed densities) for an r it does not allow."""
    original, shape = _density_original(name)
    ordinary = fc2conv.convert(original, shape)
    allowed = allowed_densities(ordinary)
    image = torch.randn(1, shape[0], *size)
    sessions = None
    if workdir is not None:
        naive_path = workdir / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(original, (torch.zeros(1, *shape),), naive_path, dynamo=False, input_names=["input"],
                              dynamic_axes={"input": {0: "batch"}}, opset_version=18)
        sessions = (_session(naive_path),
                    _session(fc2conv.export_onnx(ordinary, workdir / f"{name}_dense.onnx", force=True)))
    for r in densities:
        if r not in allowed:
            yield name, r, allowed
            continue
        dilated = fc2conv.convert(original, shape, density=r)
        dilated_path = workdir / f"{name}_density{r}.onnx" if workdir is not None else None
        yield from _density_row(name, original, ordinary, dilated, r, image, chunk=chunk, repeats=repeats,
                                warmup=warmup, sessions=sessions, dilated_path=dilated_path)


def _density_row(name, original, ordinary, dilated, r: int, image: torch.Tensor, *, chunk: int, repeats: int,
                 warmup: int, sessions, dilated_path: Path | None):
    """The rows of one density r: torch, then onnxruntime when `sessions` (naive, ordinary) are given."""
    geo = fc2conv.geometry(dilated)
    step, window, size = geo.stride, geo.window, tuple(image.shape[2:])
    with torch.no_grad():  # not inference_mode: the exporter below traces these tensors
        out = dilated(image)
        cells = tuple(out.shape[2:])
        # Every window inside the image (a padded model's map also has cells whose windows run past it).
        fits = [min(n, (s - w) // t + 1) for n, s, w, t in zip(cells, size, window, step, strict=True)]
        crops = torch.cat([image[:, :, top:bottom, left:right]
                           for top, left, bottom, right in (geo.box(i, j) for i in range(fits[0])
                                                            for j in range(fits[1]))])
        chunks = crops.split(chunk)

        def stitch_torch():
            return _stitch(ordinary, image, torch.empty_like(out), r, step)

        dilated_flops = _flops(lambda: dilated(image))
        flops = (_flops(stitch_torch) / dilated_flops, _flops(lambda: original(crops[:1])) * len(crops) / dilated_flops)
        naive_s, (stitch_s, dilated_s) = median_rounds(lambda: [original(c) for c in chunks],
                                                        [stitch_torch, lambda: dilated(image)],
                                                        repeats=repeats, warmup=warmup)
    yield name, size, "torch", r, step[0], cells, len(crops), dilated_s, stitch_s, naive_s, *flops
    if sessions is None:
        return
    naive, ordinary_session = sessions
    session = _session(fc2conv.export_onnx(dilated, dilated_path, force=True))
    image_np, chunks_np, out_np = image.numpy(), [c.numpy() for c in chunks], out.numpy()

    def ordinary_ort(x):
        return ordinary_session.run(None, {"input": np.ascontiguousarray(x)})[0]

    naive_s, (stitch_s, dilated_s) = median_rounds(
        lambda: [naive.run(None, {"input": c}) for c in chunks_np],
        [lambda: _stitch(ordinary_ort, image_np, np.empty_like(out_np), r, step),
         lambda: session.run(None, {"input": image_np})], repeats=repeats, warmup=warmup)
    yield name, size, "onnxruntime", r, step[0], cells, len(crops), dilated_s, stitch_s, naive_s, *flops


def main_density(args: argparse.Namespace) -> int:
    runtimes = "torch and onnxruntime (thread spinning off)" if args.onnxruntime else "torch"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {runtimes}; median of {args.repeats} "
          f"rounds; stitch: r² ordinary dense passes; naive: every window at stride S/r, in batches")
    print(f"{'model':<9} {'image':>9} {'runtime':<12} {'r':>2} {'stride':>6} {'cells':>7} {'windows':>7} "
          f"{'dilated ms':>10} {'stitch ms':>10} {'speed-up':>8} {'FLOPs':>7} {'naive ms':>10} {'speed-up':>8} "
          f"{'FLOPs':>7}")
    refused = []
    with tempfile.TemporaryDirectory() as workdir:
        for name, size, chunk in [entry for entry in DENSITY if entry[0] in args.models]:
            size = tuple(args.density_size) if args.density_size else size
            for row in density_rows(name, size=size, densities=args.densities, repeats=args.repeats,
                                    warmup=args.warmup, chunk=chunk,
                                    workdir=Path(workdir) if args.onnxruntime else None):
                if len(row) == 3:
                    refused.append(f"{row[0]} does not allow r={row[1]} (allowed: {row[2]})")
                    continue
                model, (h, w), runtime, r, stride, cells, windows, dilated, stitch, naive, stitch_x, naive_x = row
                print(f"{model:<9} {f'{h}×{w}':>9} {runtime:<12} {r:>2} {stride:>6} {times(cells):>7} "
                      f"{windows:>7} {dilated * 1e3:>10.1f} {stitch * 1e3:>10.1f} {stitch / dilated:>7.2f}× "
                      f"{stitch_x:>6.2f}× {naive * 1e3:>10.1f} {naive / dilated:>7.2f}× {naive_x:>6.2f}×", flush=True)
    for line in refused:
        print(f"skipped: {line}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None,
                        help=f"default: {' '.join(MODELS)} (--tiled: digits resnet18)")
    parser.add_argument("--size", type=int, default=224, help="reference input size (default 224)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs (default 30), or --sliding rounds (default 15, see _median_pair), or --tiled "
                             "rounds (default 7)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 5, --sliding 1)")
    parser.add_argument("--mode", default="dense", choices=["dense", "global"])
    parser.add_argument("--check", action="store_true", help="exit 1 if a ratio exceeds --max-ratio")
    parser.add_argument("--max-ratio", type=float, default=1.05)
    parser.add_argument("--sliding", action="store_true", help="dense pass vs naive sliding window instead")
    parser.add_argument("--chunk", type=int, default=16, help="--sliding: crops per naive batch (default 16)")
    parser.add_argument("--min-efficiency", type=float, default=0.9,
                        help="--sliding --check: exit 1 if a speed-up falls below this × the FLOP ratio")
    parser.add_argument("--tiled", action="store_true", help="tiled scanning vs one pass instead")
    parser.add_argument("--density", action="store_true",
                        help="a denser map: one dilated pass vs shift-and-stitch vs naive windows, instead")
    parser.add_argument("--densities", type=int, nargs="+", default=[2, 4], help="--density: r values (default 2 4)")
    parser.add_argument("--density-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="--density: one image size for every model (default: each model's own)")
    parser.add_argument("--onnxruntime", action="store_true", help="--density: onnxruntime rows too")
    parser.add_argument("--tile", type=int, default=None,
                        help="--tiled: tile size in pixels (default 1024); --projection: default 2048")
    parser.add_argument("--image", type=int, default=4096, help="--tiled: digits image side (default 4096)")
    parser.add_argument("--resnet-image", type=int, default=2048, help="--tiled: ResNet18 image side (default 2048)")
    parser.add_argument("--workers-image", type=int, default=8192,
                        help="--tiled: image side for one vs two workers (default 8192)")
    parser.add_argument("--rss-sizes", type=int, nargs=2, default=[4096, 16384],
                        help="--tiled: image sides whose peak memory is compared (default 4096 16384)")
    parser.add_argument("--precision", action="store_true",
                        help="reduced precision (bf16, int8; onnxruntime and OpenVINO) against float32, instead")
    parser.add_argument("--dense-size", type=int, default=896, help="--precision: image side (default 896)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="--precision: thread counts")
    parser.add_argument("--scan-image", type=int, default=2048,
                        help="--precision: ResNet scan image side (digits: twice this; default 2048)")
    parser.add_argument("--scan-tile", type=int, default=1024, help="--precision: scan tile (default 1024)")
    parser.add_argument("--scan-rounds", type=int, default=3, help="--precision: scans per path (default 3)")
    parser.add_argument("--projection", action="store_true",
                        help="scan throughput at growing slide sizes and a 100,000² slide's projected time, instead")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="--projection: slide sides (default 4096 8192 12288)")
    parser.add_argument("--rounds", type=int, default=1, help="--projection: scans per slide row (default 1)")
    parser.add_argument("--choose-rounds", type=int, default=2,
                        help="--projection: rounds choosing the path and the placement (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="--precision, --projection: one round, small images (a smoke test: timings mean little)")
    args = parser.parse_args(argv)
    if args.projection:
        from bench_projection import SIZES, main_projection

        args.model = (args.models or ["resnet18"])[0]
        if args.model not in ("resnet18", "small"):
            parser.error("--projection: --models is resnet18 (the default) or small")
        if args.quick:
            args.sizes, args.tile, args.rounds, args.choose_rounds = args.sizes or [512, 1024], args.tile or 256, 1, 1
        args.sizes, args.tile = args.sizes or SIZES, args.tile or 2048
        return main_projection(args)
    if args.precision:
        from bench_precision import PRECISION_MODELS, main_precision

        args.models = args.models or PRECISION_MODELS
        if args.quick:
            args.dense_size, args.threads, args.scan_image, args.scan_tile, args.scan_rounds = 160, [1], 192, 128, 1
        args.repeats = args.repeats or (1 if args.quick else 5)
        args.warmup = (0 if args.quick else 1) if args.warmup is None else args.warmup
        return main_precision(args)
    if args.tiled:
        from bench_tiled import TILED, main_tiled

        args.models = args.models or TILED
        args.tile = args.tile or 1024
        args.repeats = args.repeats or 7  # one pass over a large image varies from round to round by 10%
        return main_tiled(args)
    if args.density:
        args.models = args.models or [name for name, _, _ in DENSITY]
        args.repeats = args.repeats or DENSITY_ROUNDS
        args.warmup = 1 if args.warmup is None else args.warmup
        return main_density(args)
    args.models = args.models or MODELS
    if args.repeats is None:
        args.repeats = SLIDING_ROUNDS if args.sliding else 30
    if args.warmup is None:
        args.warmup = 1 if args.sliding else 5  # one naive VGG16 sliding run took 14-22 s here
    if args.sliding:
        return main_sliding(args)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.size}×{args.size}, mode={args.mode}, median of {args.repeats}")
    print(f"{'model':<20} {'original ms':>12} {'converted ms':>13} {'ratio':>7}")
    worst = 0.0
    for name in args.models:
        original, converted = bench(name, size=args.size, batch=args.batch, repeats=args.repeats,
                                    warmup=args.warmup, mode=args.mode)
        ratio = converted / original
        worst = max(worst, ratio)
        print(f"{name:<20} {original * 1e3:>12.2f} {converted * 1e3:>13.2f} {ratio:>7.3f}", flush=True)
    if args.check and worst > args.max_ratio:
        print(f"FAILED: worst ratio {worst:.3f} > {args.max_ratio}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
