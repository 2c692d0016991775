"""Latency of converted models against their originals, and dense evaluation against a naive sliding window.

    python scripts/bench.py                     # the four reference models, batch 1
    python scripts/bench.py --models resnet50 --repeats 50 --check
    python scripts/bench.py --sliding --check   # dense vs naive sliding window, torch and onnxruntime
    python scripts/bench.py --sliding --models resnet50
    python scripts/bench.py --tiled             # tiled scanning vs one pass, one vs two workers, peak memory

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
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

import fc2conv

MODELS = ["alexnet", "vgg16", "resnet50", "mobilenet_v3_large"]
# The settings: AlexNet on a 500×500 image (the FCN paper's), VGG16 and ResNet50 at 448×448.
SLIDING = [("alexnet", 500), ("vgg16", 448), ("resnet50", 448)]
# Rounds per sliding row: with 5, ResNet50 in onnxruntime measured 0.77-1.10 × its FLOP ratio over 13 runs;
# with 15, 0.91-0.95 over four (a burst of noise then moves a median by less).
SLIDING_ROUNDS = 15


def _time(fn, *args) -> float:
    """Seconds `fn(*args)` took."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


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
                elapsed = _time(model, x)
                if i >= warmup:
                    times[label].append(elapsed)
    return statistics.median(times["original"]), statistics.median(times["converted"])


def _median_pair(naive, dense, *, repeats: int, warmup: int) -> tuple[float, float]:
    """Median seconds of the naive and the dense callables, sampled over the same stretches of time.

    Each of `repeats` rounds times one naive run, then the dense pass back to back for as long as the naive
    run took (at most 50 runs). Timing on this 2-core virtual machine is noisy in bursts of about a second
    (the same dense pass ran 217-397 ms in one minute); a burst then lands on both sides alike and the
    dense median rests on many samples. Alternating single runs let a burst hit the short dense runs
    unevenly, and timing each side in its own block let one burst cover a whole side.
    """
    for _ in range(warmup):
        naive()
        dense()
    naive_times, dense_times = [], []
    for _ in range(repeats):
        naive_times.append(_time(naive))
        spent = 0.0
        for _ in range(50):
            dense_times.append(_time(dense))
            spent += dense_times[-1]
            if spent >= naive_times[-1]:
                break
    return statistics.median(naive_times), statistics.median(dense_times)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None,
                        help=f"default: {' '.join(MODELS)} (--tiled: digits resnet18)")
    parser.add_argument("--size", type=int, default=224, help="reference input size (default 224)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs (default 30), or --sliding rounds (default 15, see _median_pair)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 5, --sliding 1)")
    parser.add_argument("--mode", default="dense", choices=["dense", "global"])
    parser.add_argument("--check", action="store_true", help="exit 1 if a ratio exceeds --max-ratio")
    parser.add_argument("--max-ratio", type=float, default=1.05)
    parser.add_argument("--sliding", action="store_true", help="dense pass vs naive sliding window instead")
    parser.add_argument("--chunk", type=int, default=16, help="--sliding: crops per naive batch (default 16)")
    parser.add_argument("--min-efficiency", type=float, default=0.9,
                        help="--sliding --check: exit 1 if a speed-up falls below this × the FLOP ratio")
    parser.add_argument("--tiled", action="store_true", help="tiled scanning vs one pass instead")
    parser.add_argument("--tile", type=int, default=1024, help="--tiled: tile size in pixels (default 1024)")
    parser.add_argument("--image", type=int, default=4096, help="--tiled: digits image side (default 4096)")
    parser.add_argument("--resnet-image", type=int, default=2048, help="--tiled: ResNet18 image side (default 2048)")
    parser.add_argument("--workers-image", type=int, default=8192,
                        help="--tiled: image side for one vs two workers (default 8192)")
    parser.add_argument("--rss-sizes", type=int, nargs=2, default=[4096, 16384],
                        help="--tiled: image sides whose peak memory is compared (default 4096 16384)")
    args = parser.parse_args(argv)
    if args.tiled:
        from bench_tiled import TILED, main_tiled

        args.models = args.models or TILED
        args.repeats = args.repeats or 3
        return main_tiled(args)
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
