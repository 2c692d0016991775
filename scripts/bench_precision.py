"""`python scripts/bench.py --precision`: dense maps at reduced precision against onnxruntime float32, measured.

For each model (the trained digits CNN; ResNet18 and ResNet50 with random weights, converted at 224×224 and
exported by `fc2conv.export_onnx`) and each thread count, five paths run one `--image`² input in alternating rounds
(`timing.median_rounds`: each round times one onnxruntime fp32 pass, then every other path for as long):
onnxruntime fp32 (the reference), OpenVINO fp32, OpenVINO bf16, and the int8 file of `fc2conv.runtime.quantization` in
onnxruntime and in OpenVINO. The int8 files are calibrated on training-split digit canvases (digits) or on random
images (ResNets: random weights have no data of their own), minmax, float layers "auto" (the ResNets: "last",
whatever its drift: see `_models`); and `--precision auto` on each file. Each row gives the median,
the speed-up over onnxruntime fp32 in the same run, and the drift from it on the timed input (argmax agreement per
cell, max |Δprobability|, max |Δscore| as a share of the largest |score|).

Then, per model and path, tiled scans (`fc2conv.scan` in this process, the largest thread count) of a
`--scan-image`² image (digits: twice that) in `--scan-rounds` rounds of every path in turn: the median megapixels
per second of the whole call (session and cluster start-up included), the speed-up over onnxruntime fp32, and
whether the stitched map equals a one-pass run of the same backend and precision (max |tiled − one pass| /
max |one pass|).
Last, which kernels each path ran: OpenVINO's executed graph, and for onnxruntime the MLAS kernels its dispatch
picks for this CPU's flags (onnxruntime does not report them). Nothing is asserted: the numbers are as measured.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import numpy as np
from timing import median_rounds

from fc2conv.runtime import DenseModel
from fc2conv.runtime.drift import measure

ROOT = Path(__file__).resolve().parents[1]
PRECISION_MODELS = ["digits", "resnet18", "resnet50"]
# (label, file, backend, precision): the five paths, onnxruntime fp32 first (the reference).
PATHS = [("ort fp32", "fp32", "onnxruntime", "fp32"), ("ov fp32", "fp32", "openvino", "fp32"),
         ("ov bf16", "fp32", "openvino", "bf16"), ("ort int8", "int8", "onnxruntime", "fp32"),
         ("ov int8", "int8", "openvino", "fp32")]
# `--precision auto` on each file: it should come within 10% of the fastest path of that file above.
AUTO_PATHS = [("auto fp32", "fp32", "onnxruntime", "auto"), ("auto int8", "int8", "onnxruntime", "auto")]


def _models(name: str, directory: Path) -> dict[str, Path]:
    """The float32 and int8 files of `name` in `directory`."""
    import torch
    import torchvision
    from digits_precision import calibration_set

    import fc2conv
    from fc2conv.runtime.quantization import quantize
    from fc2conv.storage.checkpoint import load_into, load_state_dict
    from models.digits_cnn import DigitsCNN
    from models.digits_data import LABELS

    torch.manual_seed(0)
    fp32 = directory / f"{name}.onnx"
    calibration = directory / f"{name}_calibration"
    if name == "digits":
        model = DigitsCNN()
        checkpoint = ROOT / "models" / "digits_cnn.safetensors"
        load_into(model, load_state_dict(checkpoint), source=str(checkpoint))
        fc2conv.export_onnx(fc2conv.convert(model.eval(), (1, 32, 32)), fp32, labels=LABELS, mean=[0.0], std=[1.0])
        calibration_set(calibration, count=8, size=288)
    else:
        model = torchvision.models.get_model(name, weights=None).eval()
        fc2conv.export_onnx(fc2conv.convert(model, (3, 224, 224)), fp32, mean=[0.485, 0.456, 0.406],
                            std=[0.229, 0.224, 0.225])
        calibration.mkdir()
        for index in range(8):
            np.save(calibration / f"random{index}.npy",
                    np.random.default_rng(index).random((3, 224, 224), dtype=np.float32))
    # Random weights score their classes nearly alike, so no int8 model of the ResNets keeps 99% of the best classes
    # (`fc2conv quantize` would refuse them): the benchmark keeps their scores' layer in float (without it, scores of a
    # dense map larger than the calibration images leave the calibrated range) and reports the drift it gets.
    budget = {} if name == "digits" else {"float_layers": "last", "min_agreement": 0.01}
    int8 = quantize(fp32, directory / f"{name}_int8.onnx", calibration, **budget)
    return {"fp32": fp32, "int8": int8.path}


def _image(name: str, size: int) -> np.ndarray:
    """A size² uint8 test image: test-split digits on their grid for the digits CNN, noise for the ResNets."""
    if name != "digits":
        return np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
    from digits_slide import PITCH, grid_canvas

    from models.digits_data import load_split

    _, images, _, labels = load_split()
    count = min(len(images), max(1, (size // PITCH) ** 2))
    canvas, _ = grid_canvas(max(size, PITCH), images[:count], labels[:count], np.random.default_rng(0))
    return canvas[:size, :size]


def _paths(files: dict[str, Path], threads: int, *, auto: bool = False) -> list[tuple[str, DenseModel]]:
    openvino = importlib.util.find_spec("openvino") is not None
    return [(label, DenseModel(files[kind], backend=backend, precision=precision, threads=threads))
            for label, kind, backend, precision in PATHS + (AUTO_PATHS if auto else [])
            if backend == "onnxruntime" or openvino]


def latency_rows(name: str, files: dict[str, Path], *, size: int, threads: list[int], repeats: int, warmup: int):
    """Yield (model, image, threads, path, executed precision, ms, speed-up, argmax agreement, max |Δp|, max |Δscore|
    / max |score|)."""

    image = _image(name, size)
    for count in threads:
        paths = _paths(files, count, auto=True)
        x = paths[0][1].preprocess(image)
        for _, model in paths:
            if model.chooser is not None:  # --precision auto chooses (and times the paths) at its first input
                model.infer(x)
        runs = [lambda m=model, x=x: m.infer(x) for _, model in paths]
        reference_s, others = median_rounds(runs[0], runs[1:], repeats=repeats, warmup=warmup)
        reference = runs[0]()
        for (label, model), seconds in zip(paths, [reference_s, *others], strict=True):
            drift = measure([(reference, model.infer(x))])
            executed = model.numerics["precision"] if model.choice is None else \
                f"{'ov' if model.choice.backend == 'openvino' else 'ort'}/{model.numerics['precision']}"
            yield (name, f"{size}×{size}", count, label, executed, seconds * 1e3,
                   reference_s / seconds, drift.argmax_agreement, drift.max_abs_probability, drift.max_relative_score)


def scan_rows(name: str, files: dict[str, Path], *, size: int, tile: int, threads: int, rounds: int, workdir: Path):
    """Yield (model, image, tile, path, MP/s, speed-up, tiled vs one pass) for scans of a size² TIFF here: `rounds`
    rounds, each scanning with every path in turn (the median per path), and one one-pass comparison per path."""
    import statistics

    import tifffile

    from fc2conv.runtime import scan

    image = _image(name, size)
    slide = workdir / f"{name}_scan.tif"
    tifffile.imwrite(slide, image, tile=(256, 256), photometric="rgb" if image.ndim == 3 else "minisblack")
    openvino = importlib.util.find_spec("openvino") is not None
    paths = [entry for entry in PATHS if entry[2] == "onnxruntime" or openvino]
    rates: dict[str, list[float]] = {label: [] for label, *_ in paths}
    differences = {}
    for index in range(rounds):
        for label, kind, backend, precision in paths:
            out = workdir / f"{name}_{label.replace(' ', '_')}.zarr"
            done = scan(slide, model=files[kind], out=out, tile=tile, threads=threads, backend=backend,
                        precision=precision, force=True, progress=False)
            rates[label].append(done.megapixels_per_second)
            if index == 0:
                one_pass = DenseModel(files[kind], backend=backend, precision=precision, threads=threads).run(image)
                tiled = done.scores()[...]
                differences[label] = float(np.abs(tiled - one_pass.scores).max() / np.abs(one_pass.scores).max())
    reference = statistics.median(rates[paths[0][0]])
    for label, *_ in paths:
        rate = statistics.median(rates[label])
        yield name, f"{size}×{size}", tile, label, rate, rate / reference, differences[label]


def kernel_rows(files: dict[str, Path], threads: int, size: int) -> list[tuple[str, str]]:
    """(path, what computed it) after one run of each path."""
    rows = []
    for label, model in _paths(files, threads):
        model.run(np.zeros((size, size, model.channels), np.uint8))
        found = model.engine.kernels()
        kernels = ", ".join(f"{k}: {v}" for k, v in found["kernels"].items())
        rows.append((label, kernels if label.startswith("ov") else f"MLAS {kernels} (from CPU flags)"))
    return rows


def main_precision(args) -> int:
    from fc2conv.runtime.cpu import detect

    cpu = detect()
    shown = (f"CPU: {cpu.name or 'unknown'}, class {cpu.kind} (flags {' '.join(cpu.shown_flags()) or 'below avx2'}, "
             f"from {cpu.source})")
    print(f"{shown}; onnxruntime MLAS would pick {cpu.mlas_kernels()}")
    if importlib.util.find_spec("openvino") is None:
        print("OpenVINO is not installed (pip install 'fc2conv[openvino]'): its paths are skipped")
    print(f"latency on {shown}: median of {args.repeats} alternating rounds; speed-up and drift against onnxruntime "
          "fp32; auto fp32 / auto int8: --precision auto on each file, its choice under executed")
    print(f"{'model':<9} {'image':>9} {'threads':>7} {'path':<9} {'executed':<12} {'ms':>9} {'speed-up':>8} "
          f"{'argmax':>8} {'max|Δp|':>8} {'max|Δs|':>8}")
    kernels, scans = {}, []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            directory = Path(workdir) / name
            directory.mkdir()
            files = _models(name, directory)
            for model, image, count, label, executed, ms, speedup, agreement, probability, score in latency_rows(
                    name, files, size=args.dense_size, threads=args.threads, repeats=args.repeats, warmup=args.warmup):
                print(f"{model:<9} {image:>9} {count:>7} {label:<9} {executed:<12} {ms:>9.1f} {speedup:>7.2f}× "
                      f"{agreement:>8.2%} {probability:>8.4f} {score:>8.2%}", flush=True)
            kernels[name] = kernel_rows(files, max(args.threads), min(args.dense_size, 256))
            size = args.scan_image if name != "digits" else 2 * args.scan_image
            scans += list(scan_rows(name, files, size=size, tile=args.scan_tile, threads=max(args.threads),
                                    rounds=args.scan_rounds, workdir=directory))
    print()
    print(f"scan on {shown}: fc2conv scan in this process, {max(args.threads)} threads; MP/s of the whole call, "
          f"median of {args.scan_rounds} alternating rounds")
    print(f"{'model':<9} {'image':>11} {'tile':>5} {'path':<9} {'MP/s':>8} {'speed-up':>8} {'tiled vs one pass':>17}")
    for model, image, tile, label, rate, speedup, difference in scans:
        print(f"{model:<9} {image:>11} {tile:>5} {label:<9} {rate:>8.2f} {speedup:>7.2f}× {difference:>17.1e}")
    print()
    print(f"kernels on {shown} (per path: OpenVINO's executed compute layers; onnxruntime's from CPU flags)")
    for name, rows in kernels.items():
        for label, what in rows:
            print(f"{name:<9} {label:<9} {what}")
    return 0
