"""The digits CNN at reduced precision: a calibration set of training-split digits, and test-split accuracy in
float32, bf16 and int8 on both backends.

    python scripts/digits_precision.py calibration DIR [--count 16] [--size 384] [--seed 5]
    fc2conv quantize out/digits.onnx --calibration DIR -o out/digits_int8.onnx
    python scripts/digits_precision.py accuracy out/digits.onnx out/digits_int8.onnx [--threads 2]

`calibration` writes `--count` PNG canvases of `--size`² pixels, each with training-split digits in random cells of
the demo slide's 96-pixel grid (`digits_slide.grid_canvas`): the test split is never seen by calibration.
`accuracy` classifies the 450 test-split digits centred in their 32×32 windows, and test-split background windows
(blank, gaps, cut or off-centre digits, as `scripts/train_digits.py` reports them), through each path:
onnxruntime fp32 (the reference), OpenVINO fp32 and bf16, and the int8 file in onnxruntime and OpenVINO. Every
input is prepared as `fc2conv run` prepares an image (uint8 / 255, then the file's normalisation). Exit 1 if a
path's digit accuracy is more than `MAX_DROP` points below float32's. torch is not needed.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from digits_slide import PITCH, grid_canvas  # noqa: E402

from fc2conv.runtime import DenseModel  # noqa: E402
from models.digits_data import BACKGROUND, SEED, centred, load_split, windows  # noqa: E402

MAX_DROP = 0.5  # percentage points of test-split digit accuracy a reduced precision may lose against float32


def calibration_set(directory: Path, *, count: int = 16, size: int = 384, seed: int = 5) -> list[Path]:
    """`count` PNG canvases of training-split digits in `directory` (created if needed); their paths."""
    from PIL import Image

    x_train, _, y_train, _ = load_split()
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        picks = rng.choice(len(x_train), (size // PITCH) ** 2, replace=False)
        canvas, _ = grid_canvas(size, x_train[picks], y_train[picks], rng)
        paths.append(directory / f"train{index:02d}.png")
        Image.fromarray(canvas).save(paths[-1])
    return paths


def paths(fp32: Path, int8: Path | None, threads: int | None) -> list[tuple[str, DenseModel]]:
    """(name, model) of every path to compare, onnxruntime fp32 first; OpenVINO's only when it is installed."""
    found = [("onnxruntime fp32", DenseModel(fp32, threads=threads))]
    openvino = importlib.util.find_spec("openvino") is not None
    if openvino:
        found += [(f"openvino {p}", DenseModel(fp32, backend="openvino", precision=p, threads=threads))
                  for p in ("fp32", "bf16")]
    if int8 is not None:
        found.append(("onnxruntime int8", DenseModel(int8, threads=threads)))
        if openvino:
            found.append(("openvino int8", DenseModel(int8, backend="openvino", threads=threads)))
    return found


def classify(model: DenseModel, images: np.ndarray) -> np.ndarray:
    """The best class of each N×32×32 uint8 window, prepared as `fc2conv run` prepares an image."""
    batch = np.concatenate([model.normalise(image[None].astype(np.float32) / 255) for image in images])
    return model.infer(batch)[:, :, 0, 0].argmax(axis=1)


def accuracy_rows(fp32: Path, int8: Path | None, threads: int | None = None) -> list[tuple[str, str, float, float]]:
    """(path, precision as executed, digit accuracy, background accuracy) on the test split."""
    _, x_test, _, y_test = load_split()
    digits = centred(x_test)
    crops, classes = windows(x_test, y_test, 200, np.random.default_rng(SEED + 1))
    background = crops[classes == BACKGROUND]
    rows = []
    for name, model in paths(fp32, int8, threads):
        right = float((classify(model, digits) == y_test).mean())
        blank = float((classify(model, background) == BACKGROUND).mean())
        rows.append((name, model.numerics["precision"], right, blank))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("calibration")
    make.add_argument("directory", type=Path)
    make.add_argument("--count", type=int, default=16)
    make.add_argument("--size", type=int, default=384)
    make.add_argument("--seed", type=int, default=5)
    check = commands.add_parser("accuracy")
    check.add_argument("fp32", type=Path)
    check.add_argument("int8", type=Path, nargs="?")
    check.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.command == "calibration":
        written = calibration_set(args.directory, count=args.count, size=args.size, seed=args.seed)
        print(f"wrote {len(written)} canvases of training-split digits ({args.size}×{args.size}) to {args.directory}")
        return 0
    rows = accuracy_rows(args.fp32, args.int8, args.threads)
    reference = rows[0][2]
    print(f"{'path':<18} {'executed':<10} {'digits':>8} {'Δ points':>8} {'background':>10}")
    failed = []
    for name, executed, right, blank in rows:
        drop = (right - reference) * 100
        print(f"{name:<18} {executed:<10} {right:>8.2%} {drop:>+8.2f} {blank:>10.2%}")
        if drop < -MAX_DROP:
            failed.append(name)
    if failed:
        print(f"error: more than {MAX_DROP} points below float32: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
