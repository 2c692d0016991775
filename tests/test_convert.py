"""The converter on the specification's examples, every head spelling, every mode, and its refusals."""

from __future__ import annotations

import copy
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import assert_close, build_torchvision, randn
from torch import nn

import fc2conv
from fc2conv import ConversionError
from fc2conv.layers import LinearConv2d
from models.small_cnn import small_cnn

# ------------------------------------------------------------------------------------ example models


class MLP(nn.Module):
    def __init__(self, sizes=(20, 64, 3), act=nn.ReLU):
        super().__init__()
        layers = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), act()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x):
        return self.net(x)


class LSTMHead(nn.Module):
    """Conv features read as a sequence of columns by an LSTM, then a Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.rnn = nn.LSTM(8 * 16, 32, batch_first=True)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.conv(x)  # N×8×16×W
        x = x.permute(0, 3, 1, 2).flatten(2)  # N×W×(8·16)
        x, _ = self.rnn(x)
        return self.fc(x[:, -1])


class Backbone(nn.Module):
    """Padding-free convolutions: every dense cell is exactly the original on its window."""

    def __init__(self, channels=6):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, channels, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(channels, channels, 3, stride=2),
            nn.BatchNorm2d(channels), nn.ReLU(),
        )


class Head(Backbone):
    """A backbone followed by one of the head spellings the converter must recognise."""

    def __init__(self, spelling: str, hidden=(16,), classes=5, features=(6, 3, 3)):
        super().__init__(features[0])
        self.spelling = spelling
        c, h, w = features
        pooled = spelling.startswith(("mean", "adaptive", "amax", "gap"))
        width = c if pooled else c * h * w
        layers = []
        for size in hidden:
            layers += [nn.Linear(width, size), nn.BatchNorm1d(size), nn.Hardswish(), nn.Dropout(0.3)]
            width = size
        self.head = nn.Sequential(*layers, nn.Linear(width, classes))
        self.flatten = nn.Flatten()
        self.gap = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.features(x)
        s = self.spelling
        if s == "torch.flatten":
            x = torch.flatten(x, 1)
        elif s == "view_size":
            x = x.view(x.size(0), -1)
        elif s == "view_fixed":
            x = x.view(-1, 54)
        elif s == "reshape":
            x = x.reshape(x.shape[0], -1)
        elif s == "nn.Flatten":
            x = self.flatten(x)
        elif s == "mean_tuple":
            x = x.mean((2, 3))
        elif s == "mean_list_keepdim":
            x = x.mean([2, 3], keepdim=True).flatten(1)
        elif s == "adaptive_functional":
            x = F.adaptive_avg_pool2d(x, 1).squeeze(-1).squeeze(-1)
        elif s == "adaptive_max":
            x = torch.flatten(F.adaptive_max_pool2d(x, (1, 1)), 1)
        elif s == "amax":
            x = x.amax(dim=(-2, -1))
        elif s == "gap_module":
            x = self.flatten(self.gap(x))
        return self.head(x)


SPELLINGS = ["torch.flatten", "view_size", "view_fixed", "reshape", "nn.Flatten", "mean_tuple",
             "mean_list_keepdim", "adaptive_functional", "adaptive_max", "amax", "gap_module"]
INPUT = (3, 17, 17)  # 17 → conv 15 → pool 7 → conv(s2) 3


def _seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return module.eval()


# ------------------------------------------------------------------------------------ equivalence


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("mode", ["dense", "global"])
def test_every_head_spelling_converts_exactly(spelling, mode):
    model = _seeded(Head(spelling))
    converted = fc2conv.convert(model, INPUT, mode=mode)
    assert not any(isinstance(m, nn.Linear | nn.BatchNorm1d) for m in converted.modules())
    report = fc2conv.verify(model, converted)
    # Without a pool the original only runs at its reference size: nothing to compare at a larger one.
    runs_larger = mode == "dense" or spelling.startswith(("mean", "adaptive", "amax", "gap"))
    expected = [True, True] if runs_larger else [True, None]
    assert [c.passed for c in report.checks] == expected, str(report)


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_float64_is_exact_to_1e10(spelling):
    model = _seeded(Head(spelling)).double()
    converted = fc2conv.convert(model, INPUT)
    report = fc2conv.verify(model, converted)
    assert report.dtype == "float64" and report.tolerance == 1e-10
    assert report.ok, str(report)


def test_small_cnn_from_the_specification():
    model = _seeded(small_cnn())
    converted = fc2conv.convert(model, (3, 32, 32))
    decisions = {d.layer: d for d in fc2conv.plan(model, (3, 32, 32))}
    conv = [d for d in decisions.values() if d.rule == "global conv"]
    assert len(conv) == 1 and conv[0].kernel == (8, 8) and conv[0].in_channels == 32
    assert fc2conv.verify(model, converted).ok
    x = randn(2, 3, 32, 32)
    with torch.no_grad():
        assert converted(x).shape == (2, 10, 1, 1)
        assert_close(converted(x).flatten(1), model(x))
        assert converted(randn(1, 3, 64, 48)).shape == (1, 10, 9, 5)  # stride 4, window 32


@pytest.mark.parametrize("sizes,act", [((20, 64, 3), nn.ReLU), ((8, 32, 32, 1), nn.Tanh)],
                         ids=["classifier", "regression"])
def test_mlp_applies_at_every_pixel(sizes, act):
    model = _seeded(MLP(sizes, act))
    converted = fc2conv.convert(model, (sizes[0],))
    assert all(isinstance(m, LinearConv2d) and m.kernel_size == (1, 1)
               for m in converted.modules() if isinstance(m, nn.Conv2d))
    x = randn(2, sizes[0], 5, 4)
    with torch.no_grad():
        out = converted(x)
        per_pixel = model(x.permute(0, 2, 3, 1).reshape(-1, sizes[0])).reshape(2, 5, 4, -1).permute(0, 3, 1, 2)
    assert out.shape == (2, sizes[-1], 5, 4)
    assert_close(out, per_pixel)
    assert fc2conv.geometry(converted).stride == (1, 1)
    assert fc2conv.verify(model, converted).ok


def test_dense_cells_equal_the_original_on_every_window():
    model = _seeded(Head("torch.flatten"))
    converted = fc2conv.convert(model, INPUT)
    geo = fc2conv.geometry(converted)
    assert geo.stride == (4, 4) and geo.window == (17, 17) and geo.exact
    image = randn(1, 3, 17 + 4 * 5, 17 + 4 * 3)
    with torch.no_grad():
        out = converted(image)
        assert out.shape == (1, 5, 6, 4)
        for i in range(out.shape[2]):
            for j in range(out.shape[3]):
                top, left, bottom, right = geo.box(i, j)
                assert_close(out[:, :, i, j], model(image[:, :, top:bottom, left:right]))


def test_geometry_stride_comes_from_the_network_not_the_first_step():
    # 18 leaves one pixel the original never reads, so the map grows one pixel early, then every 4.
    model = _seeded(Head("torch.flatten"))
    converted = fc2conv.convert(model, (3, 18, 18))
    assert fc2conv.geometry(converted).stride == (4, 4)


def test_adaptive_pool_is_removed_where_it_is_the_identity():
    model = build_torchvision("vgg11")
    converted = fc2conv.convert(model, (3, 224, 224))
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in converted.modules())
    rules = [d.rule for d in fc2conv.plan(model)]
    assert rules == ["removed", "global conv", "1×1 conv", "1×1 conv"]


def test_adaptive_pool_is_folded_where_it_is_not_the_identity():
    model = build_torchvision("vgg11")  # at 112 the features are 3×3 and the pool stretches them to 7×7
    converted = fc2conv.convert(model, (3, 112, 112))
    plan = fc2conv.plan(model, (3, 112, 112))
    assert [d.rule for d in plan][:2] == ["folded", "global conv (pool folded)"]
    assert plan[1].kernel == (3, 3)
    report = fc2conv.verify(model, converted, batch=1)
    assert report.ok, str(report)


def test_global_mode_keeps_pools_and_matches_at_any_size():
    model = build_torchvision("resnet18")
    converted = fc2conv.convert(model, mode="global")
    assert any(isinstance(m, nn.AdaptiveAvgPool2d) for m in converted.modules())
    x = randn(1, 3, 200, 260)
    with torch.no_grad():
        assert_close(converted(x).flatten(1), model(x))


def test_cam_maps_average_to_the_logits():
    model = build_torchvision("resnet18")
    cam = fc2conv.convert(model, mode="cam")
    x = randn(2, 3, 224, 224)
    with torch.no_grad():
        maps = cam(x)
        assert maps.shape == (2, 1000, 7, 7)
        assert_close(maps.mean((2, 3)), model(x))
    assert fc2conv.geometry(cam).stride == (32, 32)


@pytest.mark.parametrize("name,why", [
    ("vgg11", "not computed linearly from a global average pool"),
    ("mobilenet_v3_small", "Hardswish"),
])
def test_cam_refuses_heads_that_are_not_linear(name, why):
    with pytest.raises(ConversionError, match=why):
        fc2conv.convert(build_torchvision(name), mode="cam")


def test_squeezenet_is_already_convolutional_but_dense_slides():
    model = build_torchvision("squeezenet1_1")
    plan = fc2conv.plan(model)
    assert "already convolutional" in str(plan)
    dense = fc2conv.convert(model)
    assert any(isinstance(m, nn.AvgPool2d) for m in dense.modules())
    assert fc2conv.verify(model, dense, batch=1).ok


def test_convnext_channels_last_linears_become_1x1_convs():
    model = build_torchvision("convnext_tiny")
    plan = fc2conv.plan(model)
    assert sum(d.rule == "left alone" for d in plan) == 36  # two Linears in each of 18 blocks
    converted = fc2conv.convert(model, channels_last_linears=True)
    assert not any(isinstance(m, nn.Linear) for m in converted.modules())
    assert fc2conv.verify(model, converted, batch=1).ok


def test_squeeze_excitation_pools_stay_global_in_dense_mode():
    model = build_torchvision("mobilenet_v3_small")
    plan = fc2conv.plan(model)
    assert sum(d.rule == "kept global" for d in plan) == 9
    assert [d.rule for d in plan if "pool" in d.rule] == ["window avg pool"]
    assert not fc2conv.geometry(fc2conv.convert(model)).exact


def test_functional_linear_residual_and_softmax():
    class Functional(Backbone):
        def __init__(self):
            super().__init__()
            self.w1 = nn.Parameter(torch.randn(6, 6))
            self.b1 = nn.Parameter(torch.randn(6))
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            v = self.features(x).mean((2, 3))
            v = v + F.relu(F.linear(v, self.w1, self.b1)) * 0.5
            return F.log_softmax(self.fc(v), dim=-1)

    model = _seeded(Functional())
    converted = fc2conv.convert(model, INPUT)
    assert fc2conv.verify(model, converted).ok


# ------------------------------------------------------------------------------------ the caller's model


def test_convert_never_changes_the_callers_model():
    model = build_torchvision("vgg11").train()
    before = copy.deepcopy(model.state_dict())
    structure = [(name, type(m)) for name, m in model.named_modules()]
    with pytest.warns(UserWarning, match="training mode"):
        converted = fc2conv.convert(model)
    assert model.training
    assert [(name, type(m)) for name, m in model.named_modules()] == structure
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    conv = converted.get_submodule("classifier.0")
    assert conv.weight.data_ptr() != model.classifier[0].weight.data_ptr()


def test_inplace_shares_weight_storage():
    model = build_torchvision("alexnet")
    converted = fc2conv.convert(model, inplace=True)
    for index in (1, 4, 6):
        conv, linear = converted.get_submodule(f"classifier.{index}"), model.classifier[index]
        assert isinstance(conv, nn.Conv2d)
        assert conv.weight.data_ptr() == linear.weight.data_ptr()
        assert conv.bias.data_ptr() == linear.bias.data_ptr()


def test_converted_layers_are_real_convolutions_for_tracers():
    converted = fc2conv.convert(_seeded(Head("torch.flatten")), INPUT)
    graph = torch.fx.symbolic_trace(converted).graph
    assert any(n.target is torch.conv2d or "conv2d" in str(n.target) for n in graph.nodes)
    assert not any("linear" in str(n.target) or "unfold" in str(n.target) for n in graph.nodes)


# ------------------------------------------------------------------------------------ refusals


def test_rnn_head_is_refused():
    with pytest.raises(ConversionError, match=r"'fc' \(Linear\).*sequences or tokens"):
        fc2conv.convert(_seeded(LSTMHead()), (3, 16, 20))


def test_vit_is_refused_with_the_layer_named():
    model = torchvision.models.vit_b_32(weights=None, image_size=64, num_classes=10).eval()
    with pytest.raises(ConversionError, match=r"heads\.head"):
        fc2conv.convert(model, (3, 64, 64))


class PoolsOfOneMap(Backbone):
    """Average and max pools of the same features, combined before or after Linears (timm's catavgmax)."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.fc, self.fc_a, self.fc_b = nn.Linear(12, 3), nn.Linear(6, 3), nn.Linear(6, 3)

    def forward(self, x):
        f = self.features(x)
        if self.how == "cat":
            return self.fc(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1))
        if self.how == "concat last dim":
            return self.fc(torch.concat([F.adaptive_avg_pool2d(f, 1).flatten(1), f.amax((2, 3))], dim=-1))
        if self.how == "cat maps":  # timm: cat the N×C×1×1 pools, then flatten
            return self.fc(torch.cat((F.adaptive_avg_pool2d(f, 1), F.adaptive_max_pool2d(f, 1)), 1).flatten(1))
        if self.how == "sum":
            return self.fc_a(f.mean((2, 3))) + self.fc_b(F.adaptive_max_pool2d(f, 1).flatten(1))
        return self.fc_a(f.mean((2, 3)) * f.amax((2, 3)))  # "mul"


@pytest.mark.parametrize("how", ["cat", "concat last dim", "cat maps", "sum", "mul"])
def test_pools_of_one_map_slide_together(how):
    """Both pools become windows on the same grid: every dense cell is the original on its crop."""
    model = _seeded(PoolsOfOneMap(how)).double()
    dense = fc2conv.convert(model, INPUT)
    assert not any(d.rule == "kept global" for d in dense.fc2conv.plan), dense.fc2conv.plan
    big = torch.randn(2, 3, 25, 21, dtype=torch.float64)
    out = dense(big)
    geo = fc2conv.geometry(dense)
    assert out.shape[2:] == (3, 2)
    for i in range(3):
        for j in range(2):
            top, left, bottom, right = geo.box(i, j)
            assert_close(out[:, :, i, j], model(big[:, :, top:bottom, left:right]))
    assert_close(fc2conv.convert(model, INPUT, mode="global")(big).flatten(1), model(big))


def test_pools_of_two_maps_are_refused():
    class TwoMaps(PoolsOfOneMap):
        def forward(self, x):
            f = self.features(x)
            return self.fc(torch.cat([f.mean((2, 3)), self.features[0](x).amax((2, 3))], 1))

    with pytest.raises(ConversionError, match="separate branches"):
        fc2conv.convert(_seeded(TwoMaps("cat")), INPUT)


def test_untraceable_model_gets_a_hint():
    class DataDependent(Backbone):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(54, 2)

        def forward(self, x):
            if x.sum() > 0:
                x = -x
            return self.fc(self.features(x).flatten(1))

    with pytest.raises(ConversionError, match="leaf_modules"):
        fc2conv.convert(DataDependent().eval(), INPUT)


def test_input_shape_that_does_not_fit_names_the_shape():
    with pytest.raises(ConversionError, match=r"input_shape=\(3, 8, 8\)"):
        fc2conv.convert(_seeded(Head("view_fixed")), (3, 8, 8))


@pytest.mark.parametrize("kwargs,match", [
    ({"input_shape": (224, 224)}, "input_shape"),
    ({"input_shape": (3, 0, 224)}, "input_shape"),
    ({"mode": "sparse"}, "mode"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fc2conv.convert(_seeded(Head("torch.flatten")), **{"input_shape": INPUT, **kwargs})


def test_failed_conversion_leaves_the_model_untouched():
    model = _seeded(LSTMHead()).train()
    before = copy.deepcopy(model.state_dict())
    with warnings.catch_warnings(), pytest.raises(ConversionError):
        warnings.simplefilter("ignore")
        fc2conv.convert(model, (3, 16, 20), inplace=True)
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_plan_lists_every_linear_and_prints_a_table():
    model = build_torchvision("alexnet")
    plan = fc2conv.plan(model)
    assert [d.layer for d in plan] == ["avgpool", "classifier.1", "classifier.4", "classifier.6"]
    assert [d.rule for d in plan] == ["removed", "global conv", "1×1 conv", "1×1 conv"]
    assert plan[1].kernel == (6, 6) and (plan[1].in_channels, plan[1].out_channels) == (256, 4096)
    table = str(plan).splitlines()
    assert table[0].split() == ["layer", "op", "rule", "kernel", "channels", "reason"]
    assert "global conv" in table[2] and "6×6" in table[2]


def test_plan_takes_every_mode_convert_takes():
    """Mode "pool" plans the dense map it reduces afterwards; a mode `convert` refuses, `plan` refuses alike."""
    model = build_torchvision("alexnet")
    assert [(d.layer, d.rule) for d in fc2conv.plan(model, mode="pool")] == [
        (d.layer, d.rule) for d in fc2conv.plan(model, mode="dense")]
    with pytest.raises(ValueError, match=r"^mode= must be one of dense, global, cam, pool"):
        fc2conv.plan(model, mode="sparse")


@pytest.mark.parametrize(("options", "match"), [
    ({"mode": "sparse"}, r"^mode= must be one of dense, global, cam, pool"),
    ({"density": 0}, r"^density= must be a positive integer"),
    ({"density": True}, r"^density= must be a positive integer"),
    ({"density": 2, "mode": "global"}, r"^density= must be a positive integer, with mode='dense'; got 2"),
    ({"mode": "pool", "reduce": "median"}, r"^reduce= must be one of avg, max, avgmax"),
])
def test_conversion_options_are_checked_once_where_they_are_made(options, match):
    """`ConversionOptions` refuses a value out of range by its keyword (an InputError, a ValueError), so `convert`,
    `Recipe` and verification check the same way; no PyTorch is needed to make them."""
    from fc2conv.conversion.options import ConversionOptions
    from fc2conv.errors import InputError

    with pytest.raises(InputError, match=match):
        ConversionOptions(**options)
    with pytest.raises(ValueError, match=match):
        fc2conv.convert(_seeded(Head("torch.flatten")), INPUT, **options)
    with pytest.raises(InputError, match=match):
        fc2conv.Recipe(arch="resnet18", **options)


def test_a_converted_model_keeps_its_options_whole():
    """`converted.fc2conv.options` holds what `convert` was given (with the modules tracing kept whole), and
    `convert_with` converts with them to the same network; `mode`, `density`, `reduce` and `trace_options` read
    them."""
    from fc2conv.conversion.rewrite import convert_with

    model = _seeded(Head("torch.flatten"))
    converted = fc2conv.convert(model, INPUT, mode="pool", reduce="max")
    info = converted.fc2conv
    assert (info.options.mode, info.options.reduce, info.mode, info.reduce, info.density) == (
        "pool", "max", "pool", "max", 1)
    assert info.trace_options is info.options.trace
    again = convert_with(model, INPUT, info.options)
    x = randn(2, *INPUT[:1], 29, 23)
    assert_close(again(x), converted(x))
    assert fc2conv.convert(model, INPUT).fc2conv.reduce is None  # a dense map is not reduced
