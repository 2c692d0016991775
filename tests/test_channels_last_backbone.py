"""A LayerNorm on the pooled vector, and backbones that work channels-last (MambaOut's shape: pool → LayerNorm →
Linear → GELU → Linear after N×H×W×C blocks): converted exactly, the pool over the map's positions slid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fc2conv
from fc2conv.errors import ConversionError


class PooledLayerNorm(nn.Module):
    """Conv map → global pool → LayerNorm (module or function) → Linear → GELU → Linear."""

    def __init__(self, functional: bool):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2))
        self.norm, self.functional = nn.LayerNorm(16), functional
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 5)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        x = F.layer_norm(x, (16,), self.norm.weight, self.norm.bias, 1e-6) if self.functional else self.norm(x)
        return self.fc2(F.gelu(self.fc1(x)))


class GatedChannelsLast(nn.Module):
    """MambaOut in small: blocks on N×H×W×C maps (a LayerNorm, a Linear split into a gate, a depthwise conv through
    permutes, the halves concatenated, a residual), then a mean over the positions and an MLP head with norms."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(16), nn.Linear(16, 48), nn.Linear(24, 16)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.head_norm, self.head_fc1 = nn.LayerNorm(16), nn.Linear(16, 32)
        self.head_norm2, self.head_fc2 = nn.LayerNorm(32), nn.Linear(32, 7)

    def forward(self, x):
        x = self.stem(x).permute(0, 2, 3, 1)
        shortcut = x
        x = F.layer_norm(x, (16,), self.norm.weight, self.norm.bias)
        gate, identity, conv = torch.split(self.fc1(x), [24, 16, 8], dim=-1)
        conv = self.conv(conv.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.fc2(F.gelu(gate) * torch.cat((identity, conv), dim=-1))
        x = x + shortcut
        x = x.mean((1, 2))
        x = F.layer_norm(x, (16,), self.head_norm.weight, self.head_norm.bias, 1e-6)
        return self.head_fc2(self.head_norm2(F.gelu(self.head_fc1(x))))


@pytest.mark.parametrize("functional", [False, True])
def test_a_layernorm_on_the_pooled_vector_is_a_layernorm_over_each_cells_channels(functional):
    model = PooledLayerNorm(functional).eval()
    dense = fc2conv.convert(model, input_shape=(3, 16, 16))
    assert fc2conv.verify(model, dense).ok
    assert "channel LayerNorm" in str(dense.fc2conv.plan)


@pytest.mark.parametrize("mode", ["dense", "global"])
def test_a_backbone_that_works_channels_last_slides_its_pool(mode):
    torch.manual_seed(0)
    model = GatedChannelsLast().eval()
    converted = fc2conv.convert(model, input_shape=(3, 16, 16), mode=mode)
    report = fc2conv.verify(model, converted)
    assert report.ok, report
    plan = str(converted.fc2conv.plan)
    assert ("window avg pool" if mode == "dense" else "kept global") in plan and "channel LayerNorm" in plan
    if mode == "dense":
        with torch.no_grad():
            assert converted(torch.randn(1, 3, 24, 20)).shape == (1, 7, 5, 3)  # (24/2 − 8 + 1) × (20/2 − 8 + 1)


def test_cam_needs_a_head_linear_from_the_pool():
    with pytest.raises(ConversionError, match="not linear"):
        fc2conv.convert(GatedChannelsLast().eval(), input_shape=(3, 16, 16), mode="cam")
