#!/usr/bin/env bash
# The README's second main job: scan an image far larger than one pass should hold, tile by tile on a local
# Dask cluster, and check what it found. Sets up .venv first if needed.
#   1. fc2conv convert   models/digits_cnn.safetensors → out/scan_demo/digits.onnx (verified)
#   2. compose           all 450 test-split digits at known places on an 8192×8192 tiled BigTIFF, in blobs covering
#                        about half of it, and the blobs' outlines as a GeoJSON of annotations (as QuPath exports)
#   3. fc2conv scan      only inside those regions (--mask): tiles with none of them are neither read nor computed;
#                        1024-pixel tiles on two local workers → score map (zarr, also an OME-Zarr image with a
#                        probability pyramid), overview PNG, detections (CSV, and GeoJSON QuPath imports), and the
#                        probability map as a pyramidal OME-TIFF on the slide's level-0 grid (for QuPath)
#   4. report            recall and precision against the placed digits, and stitched vs one pass on a region;
#                        exits 1 below 97% recall or precision, or if the region differs
#   5. where to look     the files for napari, QuPath and any NGFF viewer
#   6. fc2conv view      a napari screenshot of a region (scripts/setup.sh view installs napari, and xvfb as root)
# At reduced precision (the README's "Reduced precision"): extra flags go to `fc2conv scan` and the report, and
# --int8 first quantizes the model on canvases of training-split digits (scripts/digits_precision.py), e.g.
#   bash scripts/scan_demo.sh --backend openvino --precision bf16
#   bash scripts/scan_demo.sh --int8 --backend openvino
set -euo pipefail
int8=0
flags=()
for arg in "$@"; do
    if [ "$arg" = "--int8" ]; then int8=1; else flags+=("$arg"); fi
done
cd "$(dirname "$0")/.."
if printf '%s\n' "$@" | grep -qx openvino; then bash scripts/setup.sh dev; else bash scripts/setup.sh scan; fi
out=${SCAN_DEMO_OUT:-out/scan_demo}
mkdir -p "$out"
fc2conv=.venv/bin/fc2conv

echo "== 1. convert the digits CNN to ONNX (checkpoint trained by scripts/train_digits.py)"
"$fc2conv" convert models/digits_cnn.safetensors --model-def models/digits_cnn.py:DigitsCNN \
    --input-shape 1,32,32 --onnx "$out/digits.onnx" --force --quiet
echo "wrote $out/digits.onnx"
model="$out/digits.onnx"
if [ "$int8" = 1 ]; then
    echo
    echo "== 1b. quantize it to int8, calibrated on canvases of training-split digits"
    .venv/bin/python scripts/digits_precision.py calibration "$out/calibration"
    "$fc2conv" quantize "$out/digits.onnx" --calibration "$out/calibration" -o "$out/digits_int8.onnx" --force
    model="$out/digits_int8.onnx"
fi

echo
echo "== 2. compose a slide of test-split digits (never seen in training)"
.venv/bin/python scripts/digits_slide.py compose "$out/slide.tif" "$out/placed.json" --regions "$out/regions.geojson"

echo
echo "== 3. scan its regions in 1024-pixel tiles on a local Dask cluster of two workers"
"$fc2conv" scan "$out/slide.tif" --model "$model" --out "$out/slide.zarr" --tile 1024 --workers 2 \
    --mask "$out/regions.geojson" \
    --overview "$out/overview.png" --detections "$out/found.csv" --ome-tiff "$out/map.ome.tif" --force \
    ${flags[@]+"${flags[@]}"}

echo
echo "== 4. the detections against the placed digits, and the stitched map against one pass"
.venv/bin/python scripts/digits_slide.py report "$out/placed.json" "$out/found.csv" --map "$out/slide.zarr" \
    --model "$model" --slide "$out/slide.tif" ${flags[@]+"${flags[@]}"}

echo
echo "== 5. where to look at it"
echo "OME-Zarr (napari, vizarr, any NGFF viewer): $out/slide.zarr (raw scores) and $out/slide.zarr/probabilities"
echo "QuPath: import $out/found.geojson over $out/slide.tif; add $out/map.ome.tif to the project to overlay it"
echo "napari: .venv/bin/fc2conv view $out/slide.zarr"
echo "overview: $out/overview.png"
# The screenshot of the README (docs/images/scan_view.png): the 240×360 box holding the most digits, at 2.5×. napari
# is installed here, after the results (scripts/setup.sh view; as root on Debian also xvfb and the GL/X libraries).
echo
echo "== 6. a napari screenshot (installs the view extra the first time)"
bash scripts/setup.sh view || true
if .venv/bin/python -c "import napari" 2>/dev/null && command -v xvfb-run >/dev/null; then
    region=$(.venv/bin/python scripts/digits_slide.py view-region "$out/placed.json")
    xvfb-run -a -s "-screen 0 1600x1200x24" "$fc2conv" view "$out/slide.zarr" --region "$region" \
        --size 600,900 --screenshot "$out/view.png" --force
else
    echo "(no napari screenshot: it needs pip install 'fc2conv[view]' and Debian's xvfb; see docs/scanning.md)"
fi
