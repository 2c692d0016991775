#!/usr/bin/env bash
# The README's main job on the bundled default: make a digit classifier fully convolutional, then find
# handwritten digits on a larger canvas with its dense map. Sets up .venv first if needed.
#   1. fc2conv convert   models/digits_cnn.safetensors → out/demo/digits.pt2 + digits.onnx (verified; the labels
#                        and the input normalisation come from the checkpoint's metadata)
#   2. compose           8 test-split digits at known places on a 240×144 canvas → out/demo/canvas.png
#   3. fc2conv run       the ONNX model on the canvas → where each class scores best + heatmap PNGs
#   4. report            found vs placed for every digit; exits 1 if a digit is missed or a false one found
#   5. denser map        the same classifier with --density 4 (a window every pixel, one pass) on the same canvas:
#                        heatmap PNGs, and one digit's stride-4 and stride-1 maps side by side as text
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
out=out/demo
mkdir -p "$out"
fc2conv=.venv/bin/fc2conv

echo "== 1. convert the digits CNN (checkpoint trained by scripts/train_digits.py)"
"$fc2conv" convert models/digits_cnn.safetensors --model-def models/digits_cnn.py:DigitsCNN \
    --input-shape 1,32,32 -o "$out/digits.pt2" --onnx "$out/digits.onnx" --force

echo
echo "== 2. compose a canvas of test-split digits (never seen in training)"
.venv/bin/python scripts/digits_canvas.py compose "$out/canvas.png" "$out/placed.json"

echo
echo "== 3. run the dense map over the canvas, and a heatmap of every placed digit"
"$fc2conv" run "$out/digits.onnx" "$out/canvas.png" --topk 11 --json > "$out/run.json"
"$fc2conv" run "$out/digits.onnx" "$out/canvas.png" --topk 11
for digit in $(.venv/bin/python -c 'import json, sys; print(*sorted(p["digit"] for p in json.load(open(sys.argv[1]))))' "$out/placed.json"); do
    "$fc2conv" run "$out/digits.onnx" "$out/canvas.png" --class "$digit" --heatmap "$out/heatmap_$digit.png" --force --quiet
done
echo "heatmaps: $out/heatmap_<digit>.png (probability of that digit over the canvas)"

echo
echo "== 4. where each digit was found, next to where it was placed"
.venv/bin/python scripts/digits_canvas.py report "$out/placed.json" "$out/run.json"

echo
echo "== 5. a denser map: the same windows every pixel instead of every 4 (--density 4), in one pass"
"$fc2conv" convert models/digits_cnn.safetensors --model-def models/digits_cnn.py:DigitsCNN \
    --input-shape 1,32,32 --density 4 --onnx "$out/digits_stride1.onnx" --force
.venv/bin/python scripts/digits_canvas.py denser "$out/canvas.png" "$out/placed.json" "$out/digits.onnx" \
    "$out/digits_stride1.onnx" "$out"
