"""The demo's canvas of test-split digits, and the check that the dense map found each one where it was put.

    python scripts/digits_canvas.py compose CANVAS.png PLACED.json [--digits 8] [--seed 1]
    python scripts/digits_canvas.py report PLACED.json RUN.json      # RUN.json: `fc2conv run --json --topk 11`
    python scripts/digits_canvas.py denser CANVAS.png PLACED.json MODEL.onnx DENSER.onnx OUTDIR [--digit 7]

`compose` draws distinct digits from the test split (never seen in training) at random places on a black
canvas. `report` reads where `fc2conv run` found each class best (its top cell, whose window is centred on
the digit it sees) and prints it next to where the digit was placed. A digit is found when its best window
has probability ≥ 0.5 and is centred on the digit within 4 pixels (one stride of the map: the network is
trained to answer within ±2 and its answers blur by a pixel or two beyond); a class that was not placed must
stay below 0.5 everywhere. Exit 1 otherwise.

`denser` runs the stride-4 model and its `--density 4` conversion (stride 1) on the canvas, writes a heatmap
of every placed digit from the denser map (`OUTDIR/heatmap_<digit>_stride1.png`), prints how far the denser
map's cells (4i, 4j) are from the stride-4 map (they are the same windows), and draws one digit's two
probability maps side by side as text, one character per cell, each stride-4 cell as a 4×4 block so both
cover the same window positions. It informs and never fails on the maps: `report` is the demo's check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fc2conv.shapes import times
from models.digits_data import MARGIN, STRIDE, compose, load_split

CANVAS = (144, 240)
THRESHOLD = 0.5
RAMP = " .:-=+*#%@"  # probability 0 … 1 in tenths, one character per cell
SHOWN = 4  # stride-4 cells a side in the side-by-side drawing (16 window positions at stride 1)


def compose_command(canvas_path: Path, placed_path: Path, digits: int, seed: int) -> int:
    _, x_test, _, y_test = load_split()
    rng = np.random.default_rng(seed)
    chosen = [int(rng.choice(np.flatnonzero(y_test == d))) for d in rng.choice(10, size=digits, replace=False)]
    canvas, placed = compose(x_test[chosen], y_test[chosen], CANVAS, digits, rng, gap=8, border=MARGIN)
    if len(placed) != digits:
        print(f"error: only {len(placed)} of {digits} digits fit on the canvas", file=sys.stderr)
        return 1
    Image.fromarray(canvas).save(canvas_path)
    placed_path.write_text(json.dumps([{"digit": d, "top": t, "left": le} for d, t, le in placed], indent=1))
    print(f"wrote {canvas_path} ({CANVAS[1]}×{CANVAS[0]}) with {digits} test-split digits at known places")
    return 0


def report_command(placed_path: Path, run_path: Path) -> int:
    placed = {str(p["digit"]): (p["top"], p["left"]) for p in json.loads(placed_path.read_text())}
    best = {p["label"]: p for p in json.loads(run_path.read_text())["top_classes"]}
    failures = 0
    print(f"{'digit':<6} {'placed (top, left)':<20} {'found (top, left)':<20} {'probability':>11}")
    for digit in sorted(placed):
        where = placed[digit]
        hit = best.get(digit)
        found = (hit["box"][0] + MARGIN, hit["box"][1] + MARGIN) if hit else None
        ok = (hit is not None and hit["score"] >= THRESHOLD
              and max(abs(found[0] - where[0]), abs(found[1] - where[1])) <= STRIDE)
        failures += not ok
        shown = f"({found[0]}, {found[1]})" if found else "-"
        score = f"{hit['score']:.3f}" if hit else "-"
        print(f"{digit:<6} {f'({where[0]}, {where[1]})':<20} {shown:<20} {score:>11}  {'found' if ok else 'MISSED'}")
    for label, hit in sorted(best.items()):
        if label not in placed and label != "background" and hit["score"] >= THRESHOLD:
            failures += 1
            spot = f"({hit['box'][0] + MARGIN}, {hit['box'][1] + MARGIN})"
            print(f"{label:<6} {'not placed':<20} {spot:<20} {hit['score']:>11.3f}  FALSE ALARM")
    if failures:
        print(f"error: {failures} digit(s) missed or falsely detected", file=sys.stderr)
        return 1
    print(f"all {len(placed)} digits found within {STRIDE} pixels; no other digit scored ≥ {THRESHOLD}")
    return 0


def denser_command(canvas_path: Path, placed_path: Path, model_path: Path, denser_path: Path, out: Path,
                   digit: int) -> int:
    from fc2conv.runtime import DenseModel, heatmap

    placed = {p["digit"]: (p["top"], p["left"]) for p in json.loads(placed_path.read_text())}
    coarse, fine = (DenseModel(path).run(canvas_path) for path in (model_path, denser_path))
    r = coarse.metadata["stride"][0] // fine.metadata["stride"][0]
    same = np.abs(fine.scores[:, ::r, ::r] - coarse.scores).max() / np.abs(coarse.scores).max()
    step, fine_step = coarse.metadata["stride"][0], fine.metadata["stride"][0]
    sizes = [times(result.scores.shape[1:]) for result in (fine, coarse)]
    print(f"{denser_path} on {canvas_path}: a {sizes[0]} map of windows every {fine_step} "
          f"pixel{'s' if fine_step > 1 else ''} (stride {step}: {sizes[1]})")
    print(f"its cells ({r}i, {r}j) against the stride-{step} map: max relative difference {same:.1e}")
    for d in sorted(placed):
        heatmap(canvas_path, fine, d, out / f"heatmap_{d}_stride1.png", force=True)
    print(f"heatmaps: {out}/heatmap_<digit>_stride1.png")
    digit = digit if digit in placed else min(placed)
    print()
    print(side_by_side(coarse.probabilities[digit], fine.probabilities[digit], r, placed[digit], digit))
    return 0


def side_by_side(coarse: np.ndarray, fine: np.ndarray, r: int, where: tuple[int, int], digit: int) -> str:
    """Two probability maps of one class around a placed digit as text: the coarse map's cells drawn r×r, so a
    character of either covers one window position (its top-left pixel) at the fine map's stride."""
    starts = []
    for axis, spot in enumerate(where):  # SHOWN coarse cells around the window centred on the digit
        centre = (spot - MARGIN + STRIDE // 2) // STRIDE
        last = min(coarse.shape[axis] - SHOWN, (fine.shape[axis] - SHOWN * r) // r)
        starts.append(max(0, min(centre - SHOWN // 2, last)))
    (i0, j0), size = starts, SHOWN * r
    rows, cols = range(i0 * r, i0 * r + size), range(j0 * r, j0 * r + size)

    def char(p: float) -> str:
        return RAMP[min(len(RAMP) - 1, int(p * len(RAMP)))]

    lines = [f"probability of {digit} for the windows whose top-left pixel is in rows {rows[0]}…{rows[-1]}, columns "
             f"{cols[0]}…{cols[-1]}",
             f"(the digit was placed at ({where[0]}, {where[1]}): centred in the window at ({where[0] - MARGIN}, "
             f"{where[1] - MARGIN}));  \"{RAMP}\" = 0 … 1",
             f"{'row':>4}  {f'stride {STRIDE} (cells drawn {r}×{r})':<{size + 2}}   stride {STRIDE // r}"]
    for y in rows:
        left = "".join(char(coarse[y // r, x // r]) for x in cols)
        right = "".join(char(fine[y, x]) for x in cols)
        lines.append(f"{y:>4}  |{left}|   |{right}|")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("compose")
    make.add_argument("canvas", type=Path)
    make.add_argument("placed", type=Path)
    make.add_argument("--digits", type=int, default=8)
    make.add_argument("--seed", type=int, default=1)
    check = commands.add_parser("report")
    check.add_argument("placed", type=Path)
    check.add_argument("run", type=Path)
    dense = commands.add_parser("denser")
    dense.add_argument("canvas", type=Path)
    dense.add_argument("placed", type=Path)
    dense.add_argument("model", type=Path)
    dense.add_argument("denser", type=Path)
    dense.add_argument("out", type=Path)
    dense.add_argument("--digit", type=int, default=7, help="the digit drawn as text (default 7; else the first)")
    args = parser.parse_args()
    if args.command == "compose":
        return compose_command(args.canvas, args.placed, args.digits, args.seed)
    if args.command == "denser":
        return denser_command(args.canvas, args.placed, args.model, args.denser, args.out, args.digit)
    return report_command(args.placed, args.run)


if __name__ == "__main__":
    sys.exit(main())
