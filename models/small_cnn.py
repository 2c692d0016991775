"""The specification's example: a small CNN on 3×32×32 images with a fully connected head."""

from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc1 = nn.Linear(32 * 8 * 8, 128)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.features(x)
        x = x.view(-1, 32 * 8 * 8)
        return self.fc2(self.relu(self.fc1(x)))


def small_cnn(num_classes: int = 10) -> SmallCNN:
    return SmallCNN(num_classes)
