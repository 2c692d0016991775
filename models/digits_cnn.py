"""A small CNN that finds scikit-learn's handwritten digits on a larger canvas (its data: `models/digits_data.py`).

The network sees a 32×32 window (a digit with a 4-pixel margin) and has 11 classes: the ten digits and
"background". Its convolutions have no padding, so after `fc2conv.convert` every cell of the dense map is exactly
this network run on the 32×32 crop at that place (stride 4, the product of the two pools).

This file is self-contained (`fc2conv convert ... --model-def models/digits_cnn.py:DigitsCNN` imports it by path).
"""

from __future__ import annotations

from torch import nn

__all__ = ["CLASSES", "DigitsCNN"]

CLASSES = 11  # the digits 0–9 and background: models.digits_data.LABELS


class DigitsCNN(nn.Module):
    """1×32×32 → 11 logits (digits 0–9, background). No padding: dense cells equal the model on crops."""

    def __init__(self, num_classes: int = CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2),  # 32 → 28 → 14
            nn.Conv2d(8, 16, 3), nn.ReLU(), nn.MaxPool2d(2),  # 14 → 12 → 6
            nn.Conv2d(16, 32, 3), nn.ReLU(),  # 6 → 4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))
