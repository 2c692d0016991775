"""Train models/digits_cnn.py on scikit-learn's handwritten digits and save models/digits_cnn.safetensors.

    .venv/bin/python scripts/train_digits.py [--out models/digits_cnn.safetensors] [--force]

Reproducible: a fixed 75/25 stratified split and fixed seeds (CPU, about 20 seconds). Prints the test-split
accuracy on centred digits (must be at least 97%, or the script fails and writes nothing) and how often
test-split windows of background (blank, gaps, cut digits) are called background.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fc2conv.storage.checkpoint import save_state_dict  # noqa: E402
from models.digits_cnn import DigitsCNN  # noqa: E402
from models.digits_data import BACKGROUND, LABELS, SEED, centred, load_split, windows  # noqa: E402

REQUIRED_ACCURACY = 0.97
# What `fc2conv convert` puts into the ONNX metadata from the checkpoint: the class names, and the input normalisation
# (none: the network was trained on gray levels in [0, 1], which is how `fc2conv run` reads an image).
CARRIED = {"fc2conv.labels": json.dumps(LABELS), "fc2conv.mean": "[0.0]", "fc2conv.std": "[1.0]"}
EPOCHS = 8
CANVASES = 400  # fresh ones every epoch, each with 2–6 digits: about 8,400 windows
BATCH = 64
STEPS = EPOCHS * 8_400 // BATCH


def as_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W → float N×1×H×W in [0, 1], as fc2conv.runtime feeds images."""
    return torch.from_numpy(images).float().div(255).unsqueeze(1)


def accuracy(model: DigitsCNN, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        predicted = model(as_tensor(images)).argmax(1).numpy()
    return float((predicted == labels).mean())


def train(seed: int = SEED) -> tuple[DigitsCNN, float, float]:
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # layers this small only lose time to thread synchronisation
    rng = np.random.default_rng(seed)
    x_train, x_test, y_train, y_test = load_split(seed)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=STEPS)
    step = 0
    for epoch in range(EPOCHS):
        crops, classes = windows(x_train, y_train, CANVASES, rng)
        crops, classes = as_tensor(crops), torch.from_numpy(classes)
        model.train()
        order = torch.randperm(len(classes))
        for batch in order.split(BATCH):
            if step == STEPS:
                break
            loss = F.cross_entropy(model(crops[batch]), classes[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
        print(f"epoch {epoch + 1:2d}: loss {loss.item():.3f}", file=sys.stderr)
    test_crops, test_classes = windows(x_test, y_test, 200, np.random.default_rng(seed + 1))
    background = test_classes == BACKGROUND
    return model, accuracy(model, centred(x_test), y_test), accuracy(model, test_crops[background],
                                                                     test_classes[background])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "digits_cnn.safetensors")
    parser.add_argument("--force", action="store_true", help="replace an existing checkpoint")
    args = parser.parse_args()
    start = time.perf_counter()
    model, digits, background = train()
    print(f"test split: {digits:.1%} of centred digits classified correctly, {background:.1%} of background "
          f"windows called background ({time.perf_counter() - start:.0f} s)")
    if digits < REQUIRED_ACCURACY:
        print(f"error: test accuracy {digits:.1%} is below {REQUIRED_ACCURACY:.0%}; not saved", file=sys.stderr)
        return 1
    save_state_dict(model.state_dict(), args.out, force=args.force, metadata=CARRIED)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
