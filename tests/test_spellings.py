"""Model code as people write it: global context of every spelling, pools written by hand, modules built inside
forward, sizes read as Python numbers, models that run at some sizes only, and the guarantees that hold for all
of them (exact conversions, honest verification, exports that run where they claim, nothing but
ConversionError). Every model here is a small one of our own reproducing one spelling."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, randn
from onnx_helpers import run_onnx
from torch import nn

import fc2conv
from fc2conv import ConversionError
from fc2conv.onnx import export_onnx

SHAPE = (3, 16, 16)


class PaddedBackbone(nn.Module):
    """Two padded convs: 16×16 → 8×8 features, channels 8."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x):
        return F.relu(self.c2(F.relu(self.c1(x))))


# -- global context: each block pools the whole map and feeds the result back into the features


class SELinear(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, 4), nn.Linear(4, c)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        return x * s.view(x.size(0), -1, 1, 1)


class SEConv(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.pool, self.fc1, self.fc2 = nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(self.pool(x)))))


class SEHandPool(nn.Module):
    """Squeeze-excitation with the pool written by hand: its kernel read from the tensor."""

    def __init__(self, c=8):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(F.avg_pool2d(x, x.size()[2:])))))


class ECA(nn.Module):
    """Pooled vector → Conv1d across channels → sigmoid → rescale (ECA-Net)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))
        return x * torch.sigmoid(y).view(x.shape[0], -1, 1, 1)


class SplitAttention(nn.Module):
    """ResNeSt: two splits, pooled sum → convs → softmax over the splits → weighted sum of the splits."""

    def __init__(self, c=8):
        super().__init__()
        self.conv, self.fc1, self.fc2 = nn.Conv2d(c, 2 * c, 3, padding=1), nn.Conv2d(c, 4, 1), nn.Conv2d(4, 2 * c, 1)

    def forward(self, x):
        n = x.shape[0]
        splits = self.conv(x).view(n, 2, x.shape[1], x.shape[2], x.shape[3])
        gap = F.adaptive_avg_pool2d(splits.sum(dim=1), 1)
        attn = F.softmax(self.fc2(F.relu(self.fc1(gap))).view(n, 2, -1, 1, 1), dim=1)
        return (splits * attn).sum(dim=1)


class CBAM(nn.Module):
    """Channel attention (avg and max pools, shared MLP) and spatial attention (channel mean and max → 7×7 conv)."""

    def __init__(self, c=8):
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(c, 4, 1), nn.ReLU(), nn.Conv2d(4, c, 1))
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x):
        x = x * torch.sigmoid(self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1)))
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial(pooled))


class GlobalContext(nn.Module):
    """GCNet: attention pooling as a product of the features with a softmax over positions, then added back."""

    def __init__(self, c=8):
        super().__init__()
        self.key, self.transform = nn.Conv2d(c, 1, 1), nn.Conv2d(c, c, 1)

    def forward(self, x):
        n, c, h, w = x.shape
        weights = F.softmax(self.key(x).view(n, 1, h * w), dim=-1)  # N×1×HW
        context = torch.matmul(x.view(n, c, h * w), weights.transpose(1, 2)).view(n, c, 1, 1)
        return x + self.transform(context)


class WithBlock(nn.Module):
    """PaddedBackbone → a context block → global average pool → Linear."""

    def __init__(self, block: type[nn.Module]):
        super().__init__()
        self.body, self.block, self.fc = PaddedBackbone(), block(), nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.block(self.body(x)).mean((2, 3)))


CONTEXT = [SELinear, SEConv, SEHandPool, ECA, SplitAttention, CBAM, GlobalContext]


@pytest.mark.parametrize("block", CONTEXT, ids=lambda b: b.__name__)
def test_global_context_of_every_spelling_stays_and_the_head_converts(block):
    torch.manual_seed(0)
    model = WithBlock(block).eval()
    dense = fc2conv.convert(model, SHAPE)
    assert isinstance(dense.fc, nn.Conv2d), dense.fc2conv.plan
    geo = fc2conv.geometry(dense)
    assert geo.exact is False and geo.receptive_field is None and "block" in geo.context, geo
    report = fc2conv.verify(model, dense)
    assert [c.passed for c in report.checks] == [True, True], str(report)
    glob = fc2conv.convert(model, SHAPE, mode="global")
    big = randn(2, 3, 24, 20, seed=1)
    with torch.no_grad():
        assert_close(glob(big).flatten(1), model(big))


# -- pools written by hand


class HandPool(nn.Module):
    def __init__(self, spelling: str):
        super().__init__()
        self.spelling, self.body, self.fc = spelling, PaddedBackbone(), nn.Linear(8, 5)

    def forward(self, x):
        f = self.body(x)
        pooled = {
            "size()[2:]": lambda: F.avg_pool2d(f, f.size()[2:]),
            "size(2)": lambda: F.avg_pool2d(f, f.size(2)),
            "(size(2), size(3))": lambda: F.avg_pool2d(f, (f.size(2), f.size(3))),
            "max kernel_size=shape[2:]": lambda: F.max_pool2d(f, kernel_size=f.shape[2:]),
            "fixed 8": lambda: F.avg_pool2d(f, 8),
            "nn.AvgPool2d(8)": lambda: nn.AvgPool2d(8)(f),
        }[self.spelling]()
        return self.fc(pooled.view(pooled.size(0), -1))


SPELLINGS = ["size()[2:]", "size(2)", "(size(2), size(3))", "max kernel_size=shape[2:]", "fixed 8", "nn.AvgPool2d(8)"]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_pools_written_by_hand_are_global_pools(spelling):
    torch.manual_seed(0)
    model = HandPool(spelling).eval()
    dense = fc2conv.convert(model, SHAPE)
    big = randn(2, 3, 40, 28, seed=1)
    with torch.no_grad():
        assert dense(big).shape[2:] != (1, 1)
    report = fc2conv.verify(model, dense)
    assert [c.passed for c in report.checks] == [True, True], str(report)
    geo = fc2conv.geometry(dense)
    assert geo.exact and geo.receptive_field is not None
    # Global mode: one vector at every size. Where the original's own kernel is fixed it covers only part of a
    # larger map, and the converted model pools the whole map instead (verify says so rather than comparing).
    glob = fc2conv.convert(model, SHAPE, mode="global")
    square = randn(2, 3, 40, 40, seed=2)  # `f.size(2)` is a square kernel: the original pools squares only
    with torch.no_grad():
        assert glob(square).shape[2:] == (1, 1)
        if "fixed" in spelling or "nn.AvgPool2d" in spelling:
            assert_close(glob(big).flatten(1), model.fc(model.body(big).mean((2, 3))))
            assert "pools the whole map at every size" in str(glob.fc2conv.plan)
            assert "skipped: above its reference size the original's fixed pool" in str(fc2conv.verify(model, glob))
        else:
            assert_close(glob(square).flatten(1), model(square))
    if "max" not in spelling:
        cam = fc2conv.convert(model, SHAPE, mode="cam")
        assert fc2conv.verify(model, cam).ok


def test_hand_written_pools_in_one_and_three_dimensions():
    class Pooled(nn.Module):
        def __init__(self, conv: type[nn.Module], pool):
            super().__init__()
            self.conv, self.pool, self.fc = conv(2, 4, 3), pool, nn.Linear(4, 3)

        def forward(self, x):
            f = self.conv(x)
            return self.fc(self.pool(f, f.size()[2:]).flatten(1))

    for conv, pool, shape in [(nn.Conv1d, F.avg_pool1d, (2, 20)), (nn.Conv3d, F.avg_pool3d, (2, 6, 8, 10))]:
        model = Pooled(conv, pool).eval()
        dense = fc2conv.convert(model, shape)
        assert fc2conv.verify(model, dense).ok
        assert fc2conv.geometry(dense).stride == (1,) * (len(shape) - 1)


# -- tracing real code


class InlineModules(nn.Module):
    def __init__(self, dropout: bool = False):
        super().__init__()
        self.dropout, self.conv, self.fc = dropout, nn.Conv2d(3, 4, 3), nn.Linear(4 * 7 * 7, 2)

    def forward(self, x):
        x = nn.ReLU(inplace=True)(self.conv(x))
        x = nn.AvgPool2d(2)(x)
        if self.dropout:
            x = nn.Dropout(0.5)(x)
        return self.fc(x.flatten(1))


def test_modules_built_inside_forward_are_traced_through():
    model = InlineModules().eval()
    dense = fc2conv.convert(model, SHAPE)
    assert fc2conv.verify(model, dense).ok
    with pytest.warns(UserWarning, match="Dropout built inside forward.*training mode.*cannot be verified"):
        fc2conv.convert(InlineModules(dropout=True).eval(), SHAPE)


class IntSize(nn.Module):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 14 * 14, 2)

    def forward(self, x):
        x = self.conv(x)
        return self.fc(x.view(x.size(0), int(x.size(self.axis)) * 4 * 14 * 14 // int(x.size(self.axis))))


def test_a_channel_count_read_as_a_python_number_is_a_constant():
    model = IntSize(axis=1).eval()
    assert fc2conv.verify(model, fc2conv.convert(model, SHAPE)).ok


def test_a_spatial_size_read_as_a_python_number_names_the_line_and_the_fix():
    with pytest.raises(ConversionError) as caught:
        fc2conv.convert(IntSize(axis=2).eval(), SHAPE)
    message = str(caught.value)
    assert "test_spellings.py:" in message and "int(x.size(self.axis))" in message and "control flow" not in message
    assert "turns a size of the input into a Python number (14 at 16×16" in message
    assert "model's own forward" in message and "Hint:" in message


class DataShuffle(nn.Module):
    """A channel shuffle written with `x.data.size()`: exporters read sizes through `.data` as constants."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 16 * 16, 2)

    def forward(self, x):
        x = self.conv(x)
        n, c, h, w = x.data.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(x.flatten(1))


def test_x_data_sizes_export_with_a_dynamic_batch(tmp_path):
    model = DataShuffle().eval()
    dense = fc2conv.convert(model, SHAPE)
    path = export_onnx(dense, tmp_path / "shuffle.onnx")
    x = randn(3, 3, 24, 20)
    with torch.no_grad():
        assert_close(run_onnx(path, x), dense(x), across_runtimes=True)


class BatchBaked(nn.Module):
    """Kept whole (a leaf): reads the batch as a Python number, which the exporter bakes in."""

    def forward(self, x):
        return x.view(int(x.size(0)), x.size(1), x.size(2), x.size(3)) * 2


class WithBaked(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.baked, self.fc = nn.Conv2d(3, 4, 3), BatchBaked(), nn.Linear(4 * 14 * 14, 2)

    def forward(self, x):
        return self.fc(self.baked(self.conv(x)).flatten(1))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the exporter's own warning about int()
def test_an_export_with_a_baked_size_is_refused_and_not_written(tmp_path):
    dense = fc2conv.convert(WithBaked().eval(), SHAPE, leaf_modules=[BatchBaked])
    with pytest.raises(ConversionError, match=r"fails in onnxruntime on a 2×3×16×16 input .*baked a size"):
        export_onnx(dense, tmp_path / "baked.onnx")
    assert list(tmp_path.iterdir()) == []


class OddSizes(nn.Module):
    """Inception-like: a stride-2 branch and a pooled branch meet in a sum; at odd sizes one is a row short."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x):
        return self.fc((self.a(x) + F.max_pool2d(self.b(x), 2)).flatten(1))


def test_a_model_that_runs_at_some_sizes_only_gets_its_geometry():
    model = OddSizes().eval()
    with pytest.raises(RuntimeError):
        model(randn(1, 3, 17, 17))  # the branches disagree at odd sizes
    dense = fc2conv.convert(model, SHAPE)
    assert fc2conv.geometry(dense).stride == (2, 2)
    assert fc2conv.verify(model, dense).ok


# -- nothing but ConversionError, and verify checks what it claims


class ReturnsDict(nn.Module):
    def __init__(self, key: str = "scores"):
        super().__init__()
        self.key = key
        self.body, self.fc = PaddedBackbone(), nn.Linear(8, 2)

    def forward(self, x, labels=None):
        features = self.body(x).mean((2, 3))
        if labels is not None:  # an optional input fc2conv does not pass: traced as None, not as a graph input
            raise ValueError("fc2conv must not trace this branch")
        return {self.key: self.fc(features), "features": features}


def test_the_logits_of_a_dict_output_are_the_scores():
    model = ReturnsDict("logits").eval()
    dense = fc2conv.convert(model, SHAPE)
    assert fc2conv.verify(model, dense).ok


class Raises(nn.Module):
    def forward(self, x):
        raise KeyError("not in this model")


@pytest.mark.parametrize("model", [ReturnsDict(), Raises(), nn.Sequential(nn.Conv2d(3, 2, 3), nn.LSTM(14, 4))],
                         ids=["dict", "raises", "lstm"])
def test_nothing_but_conversion_error_leaves_the_api(model):
    for call in (lambda: fc2conv.convert(model.eval(), SHAPE), lambda: fc2conv.plan(model.eval(), SHAPE)):
        with pytest.raises(ConversionError):
            call()


def test_verify_evaluates_the_head_of_a_model_that_reads_its_input_size():
    """The head's `x.view(batch, -1)` with the batch read from the input before the features: verify runs the
    head on every window (it used to report "the original does not run here" and pass)."""

    class EarlyBatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.fc = PaddedBackbone(), nn.Linear(8 * 8 * 8, 3)

        def forward(self, x):
            batch = x.size(0)
            return self.fc(self.body(x).view(batch, -1))

    model = EarlyBatch().eval()
    report = fc2conv.verify(model, fc2conv.convert(model, SHAPE))
    assert [c.passed for c in report.checks] == [True, True], str(report)


def test_verify_of_an_mlp_checks_every_pixel():
    mlp = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2)).eval()
    report = fc2conv.verify(mlp, fc2conv.convert(mlp, (6,)))
    assert [c.passed for c in report.checks] == [True, True], str(report)


def test_success_is_quiet(capfd):
    model = WithBlock(SEConv).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dense = fc2conv.convert(model, SHAPE)
        fc2conv.verify(model, dense)
        fc2conv.geometry(dense)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


class ReshapedByItsShape(nn.Module):
    """Hugging Face's EfficientNet head: the pooled N×C×1×1 features reshaped by their own `shape[:2]`."""

    def __init__(self):
        super().__init__()
        self.body, self.pool, self.fc = PaddedBackbone(), nn.AdaptiveAvgPool2d(1), nn.Linear(8, 2)

    def forward(self, x):
        pooled = self.pool(self.body(x))
        return self.fc(pooled.reshape(pooled.shape[:2]))


@pytest.mark.parametrize("mode", ["dense", "global", "cam"])
def test_pooled_features_reshaped_by_their_shape_convert_in_every_mode(mode):
    model = ReshapedByItsShape().eval()
    converted = fc2conv.convert(model, SHAPE, mode=mode)
    report = fc2conv.verify(model, converted, sizes=[(32, 24)])
    assert report.ok and all(check.passed for check in report.checks), report
