"""The scanning demo's slide: every test-split digit on one large canvas, written as a tiled pyramidal BigTIFF,
and the check of `fc2conv scan`'s detections against where the digits were put.

    python scripts/digits_slide.py compose SLIDE.tif PLACED.json [--regions REGIONS.geojson] [--size 8192] [--seed 1]
    python scripts/digits_slide.py view-region PLACED.json
    python scripts/digits_slide.py report PLACED.json FOUND.csv --map OUT.zarr --model MODEL.onnx --slide SLIDE.tif \
        [--backend openvino] [--precision bf16]

`compose` puts each of the 450 digits of scikit-learn's test split (never seen in training) once, in random
cells of a 96-pixel grid at a random offset inside its cell (at least 8 pixels between two digits, as in the
first demo), and records where. With `--regions` the digits lie only in a few blobs covering about half of the
slide, as tissue lies on glass, and the blobs' outlines (one grid cell outside them) are written as a GeoJSON of
QuPath annotations in level-0 pixels: the demo scans only those regions (`fc2conv scan --mask`). `view-region`
prints a 240×360 box holding the most digits, for the demo's napari screenshot.

`report` matches detections to placed digits: a detection is right when it has the digit's label and its window
is centred on the digit within 4 pixels (one stride); each placed digit
matches at most one detection. It prints recall (placed digits found) and precision (detections that are
right), what went wrong, and checks a region of the stitched map against one pass of the model over that
region (run with the scan's `--backend` and `--precision`: a tiled scan equals one pass of the same backend and
precision, measured bit for bit on every path). Exit 1 if recall or precision is below 97% or the region differs by
more than 1e-5.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.digits_data import DIGIT, MARGIN, STRIDE, load_split

PITCH = 96  # grid cell of one digit: 24 pixels of digit, offsets in 4 … 68, so two digits are ≥ 8 pixels apart
GAP = 4
TARGET = 0.97
REGION = (3000, 3500, 1400, 1800)  # top, left, height, width of the region checked against one pass


def grid_canvas(size: int, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                allowed: np.ndarray | None = None) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """A black size×size uint8 canvas with every image once in a random grid cell (of the `allowed` ones, a bool
    grid of size // PITCH a side, if given); (label, top, left) each."""
    free = np.flatnonzero(allowed.reshape(-1)) if allowed is not None else np.arange((size // PITCH) ** 2)
    if len(images) > len(free):
        raise ValueError(f"{len(images)} digits do not fit on a {size}×{size} canvas ({len(free)} places)")
    canvas = np.zeros((size, size), np.uint8)
    placed = []
    for index, slot in enumerate(rng.choice(free, size=len(images), replace=False)):
        row, col = divmod(int(slot), size // PITCH)
        top, left = (row * PITCH + int(rng.integers(GAP, PITCH - DIGIT - GAP + 1)),
                     col * PITCH + int(rng.integers(GAP, PITCH - DIGIT - GAP + 1)))
        canvas[top:top + DIGIT, left:left + DIGIT] = images[index]
        placed.append((int(labels[index]), top, left))
    return canvas, placed


def write_slide(path: Path, canvas: np.ndarray, *, levels: int = 3, tile: int = 512) -> None:
    """A tiled, zlib-compressed BigTIFF with `levels` − 1 reduced resolutions as SubIFDs."""
    import tifffile

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        options = {"tile": (tile, tile), "compression": "zlib", "photometric": "minisblack"}
        tif.write(canvas, subifds=levels - 1, **options)
        for level in range(1, levels):
            tif.write(canvas[:: 2**level, :: 2**level], subfiletype=1, **options)


def compose_command(slide: Path, placed_path: Path, size: int, seed: int, regions: Path | None = None) -> int:
    _, x_test, _, y_test = load_split()
    allowed = _blobs(size // PITCH, seed) if regions else None
    canvas, placed = grid_canvas(size, x_test, y_test, np.random.default_rng(seed), allowed)
    write_slide(slide, canvas)
    placed_path.write_text(json.dumps([{"digit": d, "top": t, "left": le} for d, t, le in placed]))
    print(f"wrote {slide} ({size}×{size}, tiled BigTIFF, {slide.stat().st_size / 1e6:.1f} MB) with {len(placed)} "
          "test-split digits at known places")
    if regions:
        count = _write_regions(regions, allowed)
        print(f"wrote {regions}: {count} regions around them (QuPath annotations), {allowed.mean():.0%} of the grid")
    return 0


def _blobs(slots: int, seed: int) -> np.ndarray:
    """A slots × slots bool grid: about half of it in a few blobs of a smoothed random field."""
    from skimage.filters import gaussian

    field = gaussian(np.random.default_rng(seed).standard_normal((slots, slots)), sigma=slots / 12)
    return field > np.quantile(field, 0.5)


def _write_regions(path: Path, allowed: np.ndarray) -> int:
    """The outlines of the allowed grid cells' blobs, grown by one cell so every digit lies well inside, as a
    FeatureCollection of QuPath annotations (polygons in level-0 pixels, x then y)."""
    from skimage.measure import find_contours
    from skimage.morphology import dilation

    grown = np.pad(dilation(allowed, np.ones((3, 3), bool)), 1)
    features = []
    for contour in find_contours(grown.astype(float), 0.5):
        ring = [[round((c - 1) * PITCH + PITCH / 2, 1), round((r - 1) * PITCH + PITCH / 2, 1)] for r, c in contour]
        features.append({"type": "Feature", "properties": {"objectType": "annotation", "name": "region"},
                         "geometry": {"type": "Polygon", "coordinates": [ring]}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return len(features)


def view_region(placed: list[dict], height: int = 240, width: int = 360) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of a height × width box, starting a few pixels before a digit, holding the most
    digits whole."""
    best, box = -1, (0, 0, height, width)
    for p in placed:
        top, left = max(0, p["top"] - 20), max(0, p["left"] - 8)
        count = sum(top <= q["top"] and q["top"] + DIGIT <= top + height and left <= q["left"] and
                    q["left"] + DIGIT <= left + width for q in placed)
        if count > best:
            best, box = count, (top, left, top + height, left + width)
    return box


def match(placed: list[dict], found: list[dict]) -> tuple[int, list[dict], list[tuple[dict, dict | None]]]:
    """(right detections, false alarms, missed digits with the detection at their place if any)."""
    where = {(p["top"], p["left"]): p for p in placed}
    taken: set[tuple[int, int]] = set()
    right, wrong = 0, []
    for d in sorted(found, key=lambda d: -float(d["score"])):
        top, left = int(d["top"]) + MARGIN, int(d["left"]) + MARGIN  # the digit a centred window sees
        near = [key for key in where if key not in taken and abs(key[0] - top) <= STRIDE
                and abs(key[1] - left) <= STRIDE and str(where[key]["digit"]) == d["label"]]
        if near:
            taken.add(near[0])
            right += 1
        else:
            wrong.append(d)
    missed = []
    for key, p in where.items():
        if key not in taken:
            beside = next((d for d in wrong if abs(int(d["top"]) + MARGIN - key[0]) <= STRIDE
                           and abs(int(d["left"]) + MARGIN - key[1]) <= STRIDE), None)
            missed.append((p, beside))
    return right, wrong, missed


def region_error(stored: Path, model: Path, slide: Path, backend: str = "onnxruntime",
                 precision: str = "fp32") -> tuple[tuple[int, int, int, int], float]:
    """Max |stitched − one pass| / max |one pass| over the cells of `REGION`, whose one pass reads only it."""
    import tifffile
    import zarr

    from fc2conv.runtime import DenseModel

    top, left, height, width = REGION
    with tifffile.TiffFile(slide) as tif:
        pixels = zarr.open(tif.series[0].aszarr(level=0), mode="r")[top:top + height, left:left + width]
    one_pass = DenseModel(model, backend=backend, precision=precision).run(pixels).scores
    rows, cols = one_pass.shape[1:]
    stitched = zarr.open_array(str(stored / "scores"), mode="r")[
        :, top // STRIDE:top // STRIDE + rows, left // STRIDE:left // STRIDE + cols]
    computed = ~np.isnan(stitched[0])  # a masked scan leaves the cells outside its mask missing
    difference = np.abs(stitched[:, computed] - one_pass[:, computed]).max(initial=0.0)
    return (top, left, height, width), float(difference / np.abs(one_pass).max())


def report_command(placed_path: Path, found_path: Path, stored: Path, model: Path, slide: Path,
                   backend: str = "onnxruntime", numbers: str = "fp32") -> int:
    """Print recall and precision of the detections, and the stitched map against one pass of the scan's `backend`
    at its precision `numbers`; 1 below target."""
    placed = json.loads(placed_path.read_text())
    with open(found_path, newline="") as f:
        found = list(csv.DictReader(f))
    right, wrong, missed = match(placed, found)
    recall, precision = right / len(placed), right / max(len(found), 1)
    print(f"{len(placed)} digits placed, {len(found)} detected, {right} right")
    print(f"recall    {recall:.1%}  (placed digits found with the right label within {STRIDE} pixels)")
    print(f"precision {precision:.1%}  (detections that are a placed digit, right label and place)")
    for p, beside in missed:
        seen = f"read as {beside['label']} ({float(beside['score']):.2f})" if beside else "nothing found there"
        print(f"  missed {p['digit']} at ({p['top']}, {p['left']}): {seen}")
    for d in wrong:
        if not any(beside is d for _, beside in missed):
            print(f"  false alarm {d['label']} ({float(d['score']):.2f}) at window ({d['top']}, {d['left']})")
    box, error = region_error(stored, model, slide, backend, numbers)
    top, left, height, width = box
    print(f"stitched vs one pass on rows {top}…{top + height - 1}, columns {left}…{left + width - 1} "
          f"(across tile borders; the cells the scan computed): max relative difference {error:.1e} "
          "(tolerance 1e-05)")
    failed = [name for name, ok in (("recall", recall >= TARGET), ("precision", precision >= TARGET),
                                    ("stitching", error <= 1e-5)) if not ok]
    if failed:
        print(f"error: below target: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("compose")
    make.add_argument("slide", type=Path)
    make.add_argument("placed", type=Path)
    make.add_argument("--size", type=int, default=8192)
    make.add_argument("--seed", type=int, default=1)
    make.add_argument("--regions", type=Path, help="place the digits in blobs and write their outlines here")
    where = commands.add_parser("view-region")
    where.add_argument("placed", type=Path)
    check = commands.add_parser("report")
    check.add_argument("placed", type=Path)
    check.add_argument("found", type=Path)
    check.add_argument("--map", type=Path, required=True, dest="stored")
    check.add_argument("--model", type=Path, required=True)
    check.add_argument("--slide", type=Path, required=True)
    check.add_argument("--backend", default="onnxruntime", help="the scan's backend, for the one-pass region")
    check.add_argument("--precision", default="fp32", help="the scan's precision, for the one-pass region")
    args = parser.parse_args()
    if args.command == "compose":
        return compose_command(args.slide, args.placed, args.size, args.seed, args.regions)
    if args.command == "view-region":
        print(",".join(map(str, view_region(json.loads(args.placed.read_text())))))
        return 0
    return report_command(args.placed, args.found, args.stored, args.model, args.slide, args.backend, args.precision)


if __name__ == "__main__":
    sys.exit(main())
