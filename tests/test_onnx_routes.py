"""One geometry, whichever way a model comes in: `fc2conv.convert` on the PyTorch model and `convert_onnx` on its
static export (`torch.onnx.export` at the reference size, no dynamic axes) give the same map, cell for cell.

The heads are a CIFAR collection's (kuangliu/pytorch-cifar: `F.avg_pool2d(out, 4)` on the 4×4 map of a 32×32
input, its `nn.AvgPool2d(4)` and `F.max_pool2d(out, 4)` kin, and the 1-D form) and ImageNet-style
(`nn.AdaptiveAvgPool2d(1)` → flatten → Linear). A fixed kernel that covers the whole map at the reference size is
the head's global pool, and both routes slide it with stride 1, as a global pool is slid: the map steps by the
backbone's stride (8 here), not by the pool's (which would make it 4× coarser per axis).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, randn, seeded_model
from onnx_helpers import run_onnx
from torch import nn

import fc2conv
from fc2conv.onnx import convert_onnx

HEADS = {
    "F.avg_pool2d(out, 4)": lambda out: F.avg_pool2d(out, 4),
    "nn.AvgPool2d(4)": nn.AvgPool2d(4),
    "F.max_pool2d(out, 4)": lambda out: F.max_pool2d(out, 4),
    "nn.AdaptiveAvgPool2d(1)": nn.AdaptiveAvgPool2d(1),
    "F.avg_pool1d(out, 4)": lambda out: F.avg_pool1d(out, 4),
}


class Block(nn.Module):
    """kuangliu's BasicBlock, narrowed: two padded 3×3 convs with batch norm and a shortcut."""

    def __init__(self, conv, norm, channels_in: int, channels: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = conv(channels_in, channels, 3, stride, 1, bias=False), norm(channels)
        self.conv2, self.bn2 = conv(channels, channels, 3, 1, 1, bias=False), norm(channels)
        self.shortcut = (nn.Sequential(conv(channels_in, channels, 1, stride, bias=False), norm(channels))
                         if stride != 1 or channels_in != channels else nn.Sequential())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR collection's ResNet at stride 8 (a 32-sample input gives a 4-sample map), with `head` pooling it."""

    def __init__(self, head: str, classes: int = 5):
        super().__init__()
        one_d = head.startswith("F.avg_pool1d")
        conv, norm = (nn.Conv1d, nn.BatchNorm1d) if one_d else (nn.Conv2d, nn.BatchNorm2d)
        self.conv1, self.bn1 = conv(3, 8, 3, 1, 1, bias=False), norm(8)
        self.layers = nn.Sequential(Block(conv, norm, 8, 8, 1), Block(conv, norm, 8, 16, 2),
                                    Block(conv, norm, 16, 16, 2), Block(conv, norm, 16, 32, 2))
        self.pool, self.flat = HEADS[head], head.startswith("nn.Adaptive")
        self.linear = nn.Linear(32, classes)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = self.pool(out)
        out = torch.flatten(out, 1) if self.flat else out.view(out.size(0), -1)  # ImageNet's and CIFAR's spellings
        return self.linear(out)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_convert_and_convert_onnx_give_the_same_cells(head, tmp_path):
    model = seeded_model(lambda: CifarResNet(head))
    shape = (3, 32) if "1d" in head else (3, 32, 32)
    source, dense_onnx = tmp_path / "static.onnx", tmp_path / "dense.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, a static file
        torch.onnx.export(model, (torch.zeros(1, *shape),), source, dynamo=False)
    convert_onnx(source, dense_onnx)
    dense = fc2conv.convert(model, shape)
    geo = fc2conv.geometry(dense)
    # The backbone's stride, not the pool's 32: the fixed pool slides with stride 1 on the 4-sample map.
    assert geo.stride == (8,) * (len(shape) - 1) and geo.window == shape[1:] and geo.exact
    sizes = [(96,), (41,)] if "1d" in head else [(96, 64), (41, 37)]
    for seed, size in enumerate(sizes):
        x = randn(2, 3, *size, seed=seed)
        with torch.no_grad():
            expected = dense(x)
        actual = run_onnx(dense_onnx, x)
        assert tuple(actual.shape) == tuple(expected.shape)
        if seed == 0:  # a size on the stride grid: one cell per stride past the window, along every axis
            assert expected.shape[2:] == tuple((n - w) // s + 1 for n, w, s in zip(size, geo.window, geo.stride,
                                                                                   strict=True))
        assert_close(actual, expected, across_runtimes=True)
    # The denser map is still exact: every cell is the original's head on its window of the original's features
    # (verify runs that check, in float64, at larger sizes of both parities).
    double = model.double()
    report = fc2conv.verify(double, fc2conv.convert(double, shape), sizes=sizes)
    assert all(c.passed for c in report.checks), report
