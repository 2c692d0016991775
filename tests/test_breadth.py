"""Public model code fc2conv never saw (tests/breadth_models.py): code that reads channel counts as Python numbers or
branches on sizes (kuangliu's ShuffleNet and ShuffleNetV2, weiaicunzai's NASNet-A), heads written channels-last
(torchaudio's M5, ConvNeXt-style heads, a Linear at every position before the pool), and `convert_onnx` on static
exports whose head pool is a fixed window.

Every conversion is proven: the dense model equals the original at the reference size and, cell by cell, the
original's head on its windows at larger sizes of both parities (`fc2conv.verify`); global mode equals the original;
ONNX exports agree in onnxruntime. Branches on spatial sizes are kept when they go one way at every size tried, kept
inside a module computed whole when they do not, or refused naming the line.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from breadth_models import M5, ChannelsLastHead, NasNetA, PerPositionLinear, ShuffleNet, ShuffleNetV2
from helpers import assert_close, randn, seeded_model
from onnx_helpers import run_onnx
from torch import nn

import fc2conv
from fc2conv import ConversionError
from fc2conv.onnx import convert_onnx

CIFAR = (3, 32, 32)
SIZE_READERS = {
    "shufflenet": (lambda: ShuffleNet(out_planes=(48, 96, 192), num_blocks=(1, 1, 1)), CIFAR, [(96, 64), (65, 47)]),
    "shufflenetv2": (lambda: ShuffleNetV2(num_blocks=(1, 1, 1)), CIFAR, [(96, 64), (65, 47)]),
    "nasnet": (lambda: NasNetA(filters=4, stemfilter=4), CIFAR, [(40, 36), (41, 37)]),
}
CHANNELS_LAST = {
    "m5 squeeze": (lambda: M5(n_channel=8, head="squeeze"), (1, 8000), [(16192,), (12001,)]),
    "m5 squeeze log_softmax": (lambda: M5(n_channel=8, head="squeeze log_softmax"), (1, 8000), [(16192,)]),
    "m5 log_softmax": (lambda: M5(n_channel=8, head="log_softmax"), (1, 8000), [(16192,)]),
    "convnext-style permute back": (lambda: ChannelsLastHead("permute"), CIFAR, [(48, 40), (41, 37)]),
    "convnext-style flatten": (lambda: ChannelsLastHead("flatten"), CIFAR, [(48, 40)]),
    "linear at every position, mean": (lambda: PerPositionLinear("mean"), CIFAR, [(48, 40), (41, 37)]),
    "linear at every position, amax": (lambda: PerPositionLinear("amax"), CIFAR, [(48, 40)]),
    "linear at every position, 1-D": (lambda: PerPositionLinear("mean", spatial=1), (3, 64), [(81,)]),
}


def _assert_converts(factory, shape, sizes, modes=("dense", "global")) -> dict[str, nn.Module]:
    model, converted = seeded_model(factory), {}
    for mode in modes:
        converted[mode] = fc2conv.convert(model, shape, mode=mode)
        report = fc2conv.verify(model, converted[mode], sizes=sizes)
        assert report.ok, report
        # every check ran, but larger sizes in global and cam mode for a fixed pool, where the original pools part of
        # the map and the converted model all of it
        assert all(c.passed or converted[mode].fc2conv.widened for c in report.checks), report
    return converted


@pytest.mark.parametrize("case", sorted(SIZE_READERS))
def test_code_that_reads_channel_counts_and_branches_on_sizes_converts_exactly(case):
    factory, shape, sizes = SIZE_READERS[case]
    dense = _assert_converts(factory, shape, sizes)["dense"]
    if case == "nasnet":  # Fit's `x.size(2) != prev.size(2)`: one way in every cell at every size tried
        assert any("breadth_models.py:" in note and "goes the same way at every input size" in note
                   for note in dense.fc2conv.plan.notes)


@pytest.mark.parametrize("case", ["shufflenetv2", "nasnet"])
def test_size_readers_export_to_onnx_with_dynamic_sizes(case, tmp_path):
    factory, shape, sizes = SIZE_READERS[case]
    dense = fc2conv.convert(seeded_model(factory), shape)
    path = fc2conv.export_onnx(dense, tmp_path / f"{case}.onnx")
    for size in sizes:
        x = randn(2, shape[0], *size, seed=1)
        with torch.no_grad():
            assert_close(run_onnx(path, x), dense(x), across_runtimes=True)


@pytest.mark.parametrize("case", sorted(CHANNELS_LAST))
def test_channels_last_heads_convert_exactly(case, tmp_path):
    factory, shape, sizes = CHANNELS_LAST[case]
    converted = _assert_converts(factory, shape, sizes)
    path = fc2conv.export_onnx(converted["dense"], tmp_path / "head.onnx")
    x = randn(2, shape[0], *sizes[0], seed=2)
    with torch.no_grad():
        assert_close(run_onnx(path, x), converted["dense"](x), across_runtimes=True)


class M5MaxOverPositions(M5):
    """M5 with `max(dim=1)[0]` after its Linear: a reduction fc2conv does not carry channels-last (amax it does)."""

    def forward(self, x):
        for conv, bn, pool in ((self.conv1, self.bn1, self.pool1), (self.conv2, self.bn2, self.pool2),
                               (self.conv3, self.bn3, self.pool3), (self.conv4, self.bn4, self.pool4)):
            x = pool(F.relu(bn(conv(x))))
        x = self.fc1(F.avg_pool1d(x, x.shape[-1]).permute(0, 2, 1))
        return x.max(dim=1)[0]


def test_a_channels_last_head_fc2conv_cannot_carry_gets_a_true_message():
    with pytest.raises(ConversionError) as caught:
        fc2conv.convert(M5MaxOverPositions(n_channel=8).eval(), (1, 8000))
    message = str(caught.value)
    assert "is 2×35 class scores" in message and "(max) reads" in message and "channels-last" in message
    assert "not a vector of class scores" not in message


# -- branches on spatial sizes: kept, kept inside a module computed whole, or refused naming the line


class EvenPad(nn.Module):
    """Pads an odd-sized map to even, as TensorFlow-ported code does before a stride-2 layer."""

    def forward(self, x):
        if x.size(2) % 2 == 1:
            x = F.pad(x, (0, 0, 0, 1))
        return x


class Branchy(nn.Module):
    def __init__(self, where: str):
        super().__init__()
        self.where = where
        self.pad = EvenPad()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc = nn.Linear(8, 4)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())

    def forward(self, x):
        if self.where == "top" and x.size(2) % 2 == 1:
            x = F.pad(x, (0, 0, 0, 1))
        elif self.where == "module":
            x = self.pad(x)
        return self.fc(self.block(self.conv(x)).mean((2, 3)))


def test_a_size_branch_inside_a_module_is_computed_whole_and_exact_at_both_parities():
    model = seeded_model(lambda: Branchy("module"))
    dense = fc2conv.convert(model, CIFAR)
    assert fc2conv.verify(model, dense, sizes=[(64, 48), (65, 49)]).ok
    assert any("EvenPad" in note and "kept whole" in note and "test_breadth.py:" in note
               for note in dense.fc2conv.plan.notes)


def test_a_size_branch_in_the_models_own_forward_is_refused_naming_the_line():
    with pytest.raises(ConversionError) as caught:
        fc2conv.convert(seeded_model(lambda: Branchy("top")), CIFAR)
    message = str(caught.value)
    assert "branches on a size of the input (False at 32×32" in message
    assert "test_breadth.py:" in message and "x.size(2) % 2 == 1" in message and "Hint:" in message


class PaddedHead(nn.Module):
    """The branch and the head's Linear in one module: keeping it whole would hide the head."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        if x.size(2) % 2 == 1:
            x = F.pad(x, (0, 0, 0, 1))
        return self.fc(x.mean((2, 3)))


def test_a_size_branch_next_to_a_linear_is_refused_naming_both():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), PaddedHead()).eval()
    with pytest.raises(ConversionError, match=r"(?s)test_breadth\.py:.*holds the Linear '1\.fc'"):
        fc2conv.convert(model, CIFAR)


# -- convert_onnx: a static export's fixed-window head pool slides, as fc2conv.convert makes it


class PooledByItsSize(nn.Module):
    def __init__(self, pool: str):
        super().__init__()
        self.pool = pool
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.features(x)
        x = F.avg_pool2d(x, x.size()[2:]) if self.pool == "read" else F.max_pool2d(x, 8)
        return self.fc(x.view(x.size(0), -1))


@pytest.mark.parametrize("pool", ["read", "fixed"])
def test_convert_onnx_slides_the_fixed_window_of_a_static_export(pool, tmp_path):
    """`torch.onnx.export` without dynamic axes writes `F.avg_pool2d(x, x.size()[2:])` as AveragePool(8, stride 8):
    converted, it slides with stride 1, and its map equals fc2conv.convert's cell for cell, also where the pool is
    fixed in the PyTorch code (`F.max_pool2d(x, 8)`), which fc2conv.convert slides with stride 1 too
    (tests/test_onnx_routes.py)."""
    model = seeded_model(lambda: PooledByItsSize(pool))
    source = tmp_path / "static.onnx"
    torch.onnx.export(model, (torch.zeros(1, *CIFAR),), source, dynamo=False)
    dense_onnx = convert_onnx(source, tmp_path / "dense.onnx")
    dense = fc2conv.convert(model, CIFAR)
    x = randn(2, 3, 96, 64, seed=3)
    with torch.no_grad():
        expected, actual = dense(x), run_onnx(tmp_path / "dense.onnx", x)
    assert tuple(actual.shape) == (2, 5, 17, 9) and dense_onnx.graph.node[-1].op_type == "Conv"
    assert_close(actual, expected, across_runtimes=True)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(SIZE_READERS))
def test_size_readers_at_their_published_sizes(case, tmp_path):
    factories = {"shufflenet": lambda: ShuffleNet(out_planes=(200, 400, 800), num_blocks=(4, 8, 4)),
                 "shufflenetv2": lambda: ShuffleNetV2(out_channels=(48, 96, 192, 1024), num_blocks=(3, 7, 3)),
                 "nasnet": lambda: NasNetA(repeat_cell_num=2, reduction_num=2, filters=12, stemfilter=12)}
    converted = _assert_converts(factories[case], CIFAR, [(64, 64), (97, 65)], modes=("dense", "global", "cam"))
    path = fc2conv.export_onnx(converted["dense"], tmp_path / f"{case}.onnx")
    x = randn(2, 3, 97, 65, seed=4)
    with torch.no_grad():
        assert_close(run_onnx(path, x), converted["dense"](x), across_runtimes=True)
    model = seeded_model(factories[case]).double()
    report = fc2conv.verify(model, fc2conv.convert(model, CIFAR), sizes=[(64, 48)])
    assert report.ok, report
