"""Every CNN classifier in torchvision, random weights, at its weights' crop size."""

from __future__ import annotations

import pytest
import torch
from helpers import FAMILIES, VIDEO, ZOO, assert_close, build_torchvision, crop_size, randn
from onnx_helpers import run_onnx
from torch import nn

import fc2conv
from fc2conv import ConversionError
from fc2conv.onnx import export_onnx

# Families whose head is not linear from a global average pool to the logits.
NO_CAM = {"alexnet": "global average pool", "vgg11_bn": "global average pool",
          "mobilenet_v3_large": "Hardswish", "convnext_tiny": "not linear"}


def test_zoo_is_every_cnn_classifier():
    assert len(ZOO) == 68


def _conv_heads(converted: nn.Module) -> None:
    """No Linear is left but those the plan leaves alone because they already act per position."""
    left = {name for name, m in converted.named_modules() if isinstance(m, nn.Linear)}
    per_position = {d.layer for d in converted.fc2conv.plan if d.rule == "left alone"}
    assert left <= per_position, f"Linears left: {sorted(left - per_position)}"
    # The last decision is the head: a Linear made a conv, or (SqueezeNet, no Linear) its pool.
    head = {"dense": ("1×1 conv", "global conv", "window avg pool"),
            "global": ("1×1 conv", "global conv", "kept global")}
    assert converted.fc2conv.plan[-1].rule in head[converted.fc2conv.mode], "head not converted"


@pytest.mark.parametrize("name", ZOO)
def test_zoo_converts_exactly(name):
    """Dense equals the original at the crop size and slides beyond it; global equals it at a larger size.
    (inplace=True keeps one copy of the weights; that convert leaves the caller's model alone otherwise is
    tested in test_convert.)"""
    model = build_torchvision(name)
    size = crop_size(name)
    x = randn(1, 3, size, size)
    with torch.no_grad():
        logits = model(x)
        dense = fc2conv.convert(model, (3, size, size), inplace=True)
        _conv_heads(dense)
        out = dense(x)
        assert out.shape == (*logits.shape, 1, 1)
        assert_close(out.flatten(1), logits)

        # Two and three steps of a stride-32 network, non-square on purpose. (`geometry` runs the network
        # at dozens of sizes; it is checked on one model of every family below, through `verify`.)
        larger = randn(1, 3, size + 64, size + 96, seed=1)
        height, width = dense(larger).shape[2:]
        assert height >= 3 and width >= 4 and width > height

        glob = fc2conv.convert(model, (3, size, size), mode="global", inplace=True)
        _conv_heads(glob)
        assert_close(glob(larger).flatten(1), model(larger))


# Float64 convolutions have no fast CPU kernels (a depthwise one is ~100× slower than float32), so CI runs
# them on one model of every family at a small size, where the adaptive pools of AlexNet/VGG are folded
# rather than removed; `-m slow` runs every model at its crop size.
FLOAT64_SIZE = 80
FLOAT64_CASES = [pytest.param(name, FLOAT64_SIZE, id=f"{name}-{FLOAT64_SIZE}") for name in FAMILIES] + [
    pytest.param(name, crop_size(name), id=f"{name}-crop", marks=pytest.mark.slow) for name in ZOO
]


@pytest.mark.parametrize("name,size", FLOAT64_CASES)
def test_float64_agrees_to_1e10(name, size):
    model = build_torchvision(name).double()
    x = randn(1, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        dense = fc2conv.convert(model, (3, size, size))
        assert_close(dense(x).flatten(1), model(x))  # tolerance(float64) = 1e-10


@pytest.mark.parametrize("name", FAMILIES)
def test_dense_cells_are_the_head_on_feature_windows(name):
    model = build_torchvision(name)
    size = crop_size(name)
    dense = fc2conv.convert(model, (3, size, size), inplace=True)
    report = fc2conv.verify(model, dense, batch=1)
    assert [c.passed for c in report.checks] == [True, True], str(report)


@pytest.mark.parametrize("name", FAMILIES)
def test_cam_where_the_head_is_linear(name):
    model = build_torchvision(name)
    size = crop_size(name)
    if name in NO_CAM:
        with pytest.raises(ConversionError, match=NO_CAM[name]):
            fc2conv.convert(model, (3, size, size), mode="cam", inplace=True)
        return
    cam = fc2conv.convert(model, (3, size, size), mode="cam", inplace=True)
    report = fc2conv.verify(model, cam, batch=1)
    assert [c.passed for c in report.checks] == [True, True], str(report)


VIDEO_CASES = [pytest.param(name, clip, id=f"{name}-{'x'.join(map(str, clip))}") for name, clip in VIDEO.items()] + [
    pytest.param(name, (16, 112, 112), id=f"{name}-16x112x112", marks=pytest.mark.slow) for name in VIDEO
    if name != "s3d"
]


@pytest.mark.parametrize("name,clip", VIDEO_CASES)
def test_video_classifiers(name, clip, tmp_path):
    """Dense equals the original at the reference clip and gives a T'×H'×W' map of windows on a larger one (every
    cell the head on its window of the features); global equals the original on a larger clip; the ONNX export
    (Conv3d, dynamic time, height and width) agrees in onnxruntime."""
    model = build_torchvision(name)
    shape = (3, *clip)
    dense = fc2conv.convert(model, shape)
    _conv_heads(dense)
    report = fc2conv.verify(model, dense, batch=1)
    assert [c.passed for c in report.checks] == [True, True], str(report)
    assert all(n > 1 for n in report.checks[1].output_shape[2:]), str(report)
    glob = fc2conv.convert(model, shape, mode="global")
    report = fc2conv.verify(model, glob, batch=1)
    assert [c.passed for c in report.checks] == [True, True], str(report)
    path = export_onnx(dense, tmp_path / f"{name}.onnx")
    stride = fc2conv.geometry(dense).stride
    larger = randn(1, 3, *(c + s for c, s in zip(clip, stride, strict=True)), seed=2)
    with torch.no_grad():
        expected = dense(larger)
    assert expected.shape[2:] == (2, 2, 2)
    assert_close(run_onnx(path, larger), expected, across_runtimes=True)
