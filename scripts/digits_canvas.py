"""The demo's canvas of test-split digits, and the check that the dense map found each one where it was put.

    python scripts/digits_canvas.py compose CANVAS.png PLACED.json [--digits 8] [--seed 1]
    python scripts/digits_canvas.py report PLACED.json RUN.json      # RUN.json: `fc2conv run --json --topk 11`

`compose` draws distinct digits from the test split (never seen in training) at random places on a black
canvas. `report` reads where `fc2conv run` found each class best (its top cell, whose window is centred on
the digit it sees) and prints it next to where the digit was placed. A digit is found when its best window
has probability ≥ 0.5 and is centred on the digit within 4 pixels (one stride of the map: the network is
trained to answer within ±2 and its answers blur by a pixel or two beyond); a class that was not placed must
stay below 0.5 everywhere. Exit 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.digits_cnn import MARGIN, STRIDE, compose, load_split

CANVAS = (144, 240)
THRESHOLD = 0.5


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
    args = parser.parse_args()
    if args.command == "compose":
        return compose_command(args.canvas, args.placed, args.digits, args.seed)
    return report_command(args.placed, args.run)


if __name__ == "__main__":
    sys.exit(main())
