"""Denser maps (`density=r`, filter rarefaction) and pooled predictions (`mode="pool"`): the guarantees of
fc2conv.conversion.density and of test-time pooling, on generated architectures, padded torchvision stacks, ONNX and
the CLI."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from helpers import FAMILIES, assert_close, build_torchvision, crop_size, measured_receptive_field, randn
from hypothesis import HealthCheck, given, settings
from onnx_helpers import run_onnx
from strategies import architectures, build_generated
from torch import nn
from typer.testing import CliRunner

import fc2conv
from fc2conv import ConversionError, allowed_densities
from fc2conv.cli import EXIT_OK, EXIT_USAGE, app
from fc2conv.layers import DilatedAverage, LinearConv
from fc2conv.onnx import export_onnx
from models.small_cnn import SmallCNN

PROFILE = {"deadline": None, "derandomize": True, "suppress_health_check": [HealthCheck.too_slow]}


def stitched(ordinary: nn.Module, x: torch.Tensor, density: int, step: tuple[int, ...], shape: torch.Size,
             inside: bool) -> torch.Tensor:
    """Shift-and-stitch: cell r·i + a from cell i of the ordinary map of `x` shifted by a·step (NaN where no
    ordinary cell exists, or, if `inside`, where its receptive field leaves the shifted input)."""
    geo = fc2conv.geometry(ordinary)
    result = torch.full(shape, float("nan"), dtype=x.dtype)
    for phase in itertools.product(range(density), repeat=x.dim() - 2):
        shifted = x[(slice(None), slice(None), *(slice(a * s, None) for a, s in zip(phase, step, strict=True)))]
        if any(n < w for n, w in zip(shifted.shape[2:], geo.window, strict=True)):
            continue
        with torch.no_grad():
            cells = ordinary(shifted)
        region = [slice(0, min(c, (t - p - 1) // density + 1)) for c, t, p in zip(cells.shape[2:], shape[2:], phase,
                                                                                     strict=True)]
        if inside:
            region = [slice(-(-b // s), min(r.stop, (n - w - a) // s + 1)) for r, n, w, s, (b, a) in zip(
                region, shifted.shape[2:], geo.window, geo.stride, geo.receptive_field, strict=True)]
        target = (slice(None), slice(None), *(slice(p + density * r.start, None, density) for p, r in zip(phase, region,
                                                                                                         strict=True)))
        block = cells[(slice(None), slice(None), *region)]
        view = result[target]
        view[(slice(None), slice(None), *(slice(0, n) for n in block.shape[2:]))] = block
    return result


def check_density(model: nn.Module, shape: tuple[int, ...], density: int, x: torch.Tensor, padded: bool) -> None:
    ordinary = fc2conv.convert(model, shape)
    dense = fc2conv.convert(model, shape, density=density)
    geo, base = fc2conv.geometry(dense), fc2conv.geometry(ordinary)
    assert geo.window == base.window and geo.stride == tuple(s // density for s in base.stride)
    with torch.no_grad():
        out, plain = dense(x), ordinary(x)
    phase0 = out[(slice(None), slice(None), *(slice(None, None, density),) * (x.dim() - 2))]
    common = (slice(None), slice(None), *(slice(0, min(a, b)) for a, b in zip(phase0.shape[2:], plain.shape[2:],
                                                                              strict=True)))
    assert_close(phase0[common], plain[common])  # the cells r·i are the ordinary map, padding or not
    expected = stitched(ordinary, x, density, geo.stride, out.shape, inside=padded)
    defined = ~expected.isnan()
    assert defined.any()
    assert_close(out[defined], expected[defined])


def check_denser_maps(arch) -> None:
    """For the first two densities the architecture allows: the cells r·i are the ordinary map; every cell is
    shift-and-stitch without padding, and with padding on the cells whose receptive field lies inside the
    shifted input."""
    model = build_generated(arch)
    ordinary = fc2conv.convert(model, arch.input_shape)
    allowed = allowed_densities(ordinary)
    # Room for whole receptive fields (padding reaches beyond the window) and a few strides more.
    (top, bottom), (left, right) = fc2conv.geometry(ordinary).receptive_field
    _, h, w = arch.input_shape
    x = randn(2, *arch.input_shape[:1], h + top + bottom + 3 * arch.stride + 11,
              w + left + right + 2 * arch.stride + 7, seed=1)
    for density in allowed[:2]:
        check_density(model, arch.input_shape, density, x, padded=arch.padded)


@settings(max_examples=20, **PROFILE)
@given(architectures(max_side=24))
def test_denser_maps_of_generated_architectures_are_shift_and_stitch(arch):
    check_denser_maps(arch)


@pytest.mark.slow
@settings(max_examples=300, **PROFILE)
@given(architectures(max_side=32))
def test_denser_maps_of_many_generated_architectures(arch):
    check_denser_maps(arch)


@pytest.mark.parametrize(("name", "size", "density"), [("vgg11", 64, 2), ("resnet18", 64, 4),
                                                        pytest.param("alexnet", 224, 2, marks=pytest.mark.slow)])
def test_padded_torchvision_stacks(name, size, density):
    """AlexNet-/VGG-style stacks with padding: verify passes (reference, the cells r·i, interior shift-and-stitch),
    and at the border the denser map does differ from shift-and-stitch, as the README states."""
    model = build_torchvision(name)
    dense = fc2conv.convert(model, (3, size, size), density=density)
    report = fc2conv.verify(model, dense, batch=1)
    assert [c.passed for c in report.checks] == [True, True, True], str(report)
    ordinary = fc2conv.convert(model, (3, size, size))
    x = randn(1, 3, size + 4 * 32, size + 3 * 32, seed=2)
    with torch.no_grad():
        out = dense(x)
    everywhere = stitched(ordinary, x, density, fc2conv.geometry(dense).stride, out.shape, inside=False)
    defined = ~everywhere.isnan()
    difference = (out[defined] - everywhere[defined]).abs().max() / everywhere[defined].abs().max()
    assert difference > 1e-3


# The densities each family allows at its crop size, as the README's support table states them: a product of the
# last strides, and none where squeeze-excitation pools make every cell see the whole image.
FAMILY_DENSITIES = {"alexnet": [2, 4, 8, 32], "convnext_tiny": [2, 4, 8, 32], "squeezenet1_1": [2, 4, 8, 16],
                    "mobilenet_v3_large": [], "efficientnet_b0": [], "efficientnet_v2_s": [], "regnet_y_400mf": []}


@pytest.mark.parametrize("name", FAMILIES)
def test_densities_of_every_family(name):
    """The densities a family allows, and at density 2 the cells 2·i of a larger map are the ordinary map."""
    model, size = build_torchvision(name), crop_size(name)
    ordinary = fc2conv.convert(model, (3, size, size))
    allowed = allowed_densities(ordinary)
    assert allowed == FAMILY_DENSITIES.get(name, [2, 4, 8, 16, 32])
    if not allowed:
        return
    denser = fc2conv.convert(model, (3, size, size), density=2)
    # A converted head stays LinearConv modules (GEMM speed in eager mode), not functional convolutions.
    heads = [[type(m) for m in net.modules() if isinstance(m, LinearConv)] for net in (ordinary, denser)]
    assert heads[1] == heads[0]  # (SqueezeNet has no Linear: none in either)
    step = fc2conv.geometry(ordinary).stride[0]
    assert fc2conv.geometry(denser).stride == (step // 2,) * 2
    x = randn(1, 3, size + step, size + 2 * step, seed=1)
    with torch.no_grad():
        fine, coarse = denser(x), ordinary(x)
    assert_close(fine[:, :, ::2, ::2][:, :, :coarse.shape[2], :coarse.shape[3]], coarse)


class CeilModePools(nn.Module):
    """Pools in ceil mode, whose last windows run past their input (GoogLeNet's max pools; timm's average pools
    that do not count their padding): at 34×34 each of them has such a window."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 6, 3, padding=1)
        self.pool1, self.pool2 = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True), nn.AvgPool2d(2, 2, ceil_mode=True)
        self.fc = nn.Linear(6 * 3 * 3, 3)

    def forward(self, x):
        x = self.pool1(self.conv1(x).relu())
        x = F.max_pool2d(self.conv2(x), 3, 2, 1, ceil_mode=True)
        x = self.pool2(F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False))
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("density", [2, 8, 16])
def test_pools_in_ceil_mode(density):
    """A rarefied pool in ceil mode keeps its last window (padded after the input: −∞ for max; an average divides
    it by what it covers, as does one that does not count its padding), and a max pool padding above half its
    kernel becomes an explicit pad: verify passes (the reference cell included, which reads every overflowing
    window), cells r·i are the ordinary map, and cells whose receptive field lies inside are shift-and-stitch."""
    torch.manual_seed(0)
    model = CeilModePools().eval()
    assert allowed_densities(fc2conv.convert(model, (3, 34, 34))) == [2, 4, 8, 16]
    report = fc2conv.verify(model, fc2conv.convert(model, (3, 34, 34), density=density))
    assert report, str(report)
    x = randn(1, 3, 34 + 8 * 16, 34 + 6 * 16, seed=4)
    check_density(model, (3, 34, 34), density, x, padded=True)


def test_timm_resnet_d_whose_shortcuts_pool_in_ceil_mode():
    """timm's ResNet-D downsamples its shortcuts with `AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)`:
    on the finer grid each becomes a `DilatedAverage`, and verify passes at densities 2 and 4."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet26d", pretrained=False).eval()
    for density in (2, 4):
        denser = fc2conv.convert(model, (3, 160, 160), density=density)
        assert any(isinstance(m, DilatedAverage) for m in denser.modules())
        report = fc2conv.verify(model, denser, batch=1)
        assert report, str(report)


def test_float64_and_one_dimension():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 5, stride=2), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(4, 4, 3),
                          nn.Flatten(), nn.Linear(4 * 7, 3)).double().eval()
    x = randn(2, 2, 71, dtype=torch.float64)
    check_density(model, (2, 40), 4, x, padded=False)  # assert_close: 1e-10 in float64


def test_receptive_field_of_a_denser_map():
    model = SmallCNN().eval()
    dense = fc2conv.convert(model, (3, 32, 32), density=2)
    assert fc2conv.geometry(dense).receptive_field == measured_receptive_field(dense, 3)


def test_densities_that_do_not_fit_are_refused_with_the_allowed_ones():
    model = SmallCNN().eval()
    with pytest.raises(ConversionError, match=r"density=3 .*allowed densities: \[2, 4\]"):
        fc2conv.convert(model, (3, 32, 32), density=3)
    with pytest.raises(ValueError, match="mode='dense'"):
        fc2conv.convert(model, (3, 32, 32), mode="global", density=2)
    with pytest.raises(ConversionError, match=r"cannot follow the grid .*whole map"):
        fc2conv.convert(build_torchvision("mobilenet_v3_small"), (3, 64, 64), density=2)
    lp_pool = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LPPool2d(2, 2), nn.Conv2d(4, 4, 3, stride=2), nn.Flatten(),
                            nn.Linear(4 * 3 * 3, 2)).eval()
    with pytest.raises(ConversionError, match=r"'1': a power-average pool \(LPPool2d\) has no dilated form"):
        fc2conv.convert(lp_pool, (3, 18, 18), density=4)
    assert fc2conv.verify(lp_pool, fc2conv.convert(lp_pool, (3, 18, 18), density=2))  # the pool stays on its grid


@pytest.mark.parametrize("reduce", ["avg", "max", "avgmax"])
def test_pooled_predictions_reduce_the_dense_map(reduce):
    """The pooled output is the reduction of the dense map's cells; without padding that is the reduction of the
    original run on every window's crop; at the reference size it is the original."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 6, 3), nn.Flatten(),
                          nn.Linear(6 * 3 * 3, 4)).eval()
    pooled = fc2conv.convert(model, (3, 12, 12), mode="pool", reduce=reduce)
    dense = fc2conv.convert(model, (3, 12, 12))
    x, big = randn(2, 3, 12, 12), randn(2, 3, 21, 17, seed=1)
    with torch.no_grad():
        assert_close(pooled(x).flatten(1), model(x))
        cells = dense(big)
        reduced = {"avg": cells.mean((2, 3)), "max": cells.amax((2, 3)),
                   "avgmax": 0.5 * (cells.mean((2, 3)) + cells.amax((2, 3)))}[reduce]
        assert_close(pooled(big).flatten(1), reduced)
        stride = fc2conv.geometry(dense).stride
        crops = torch.stack([model(big[:, :, i * stride[0]:i * stride[0] + 12, j * stride[1]:j * stride[1] + 12])
                             for i in range(cells.shape[2]) for j in range(cells.shape[3])], -1)
        by_crop = {"avg": crops.mean(-1), "max": crops.amax(-1), "avgmax": 0.5 * (crops.mean(-1) + crops.amax(-1))}
        assert_close(pooled(big).flatten(1), by_crop[reduce])
    assert fc2conv.verify(model, pooled).ok
    with pytest.raises(ConversionError, match="one cell for the whole input"):
        fc2conv.geometry(pooled)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_denser_and_pooled_models_export_to_onnx(tmp_path):
    model = SmallCNN().eval()
    torch.manual_seed(0)
    for name, original, shape, kwargs in [
            ("dense4", model, (3, 32, 32), {"density": 4}), ("pool", model, (3, 32, 32), {"mode": "pool", "reduce":
                                                                                           "avgmax"}),
            ("ceil", CeilModePools().eval(), (3, 34, 34), {"density": 8})]:
        converted = fc2conv.convert(original, shape, **kwargs)
        path = export_onnx(converted, tmp_path / f"{name}.onnx")
        x = randn(2, 3, 45, 38, seed=3)
        with torch.no_grad():
            assert_close(run_onnx(path, x), converted(x), across_runtimes=True)


def test_command_line_flags(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    torch.manual_seed(0)
    torch.save(SmallCNN().state_dict(), tmp_path / "small.pt")
    common = ["--model-def", "models/small_cnn.py:SmallCNN", "--input-shape", "3,32,32"]
    runner = CliRunner()
    result = runner.invoke(app, ["convert", str(tmp_path / "small.pt"), *common, "--density", "4", "-o",
                                 str(tmp_path / "d.safetensors"), "--onnx", str(tmp_path / "d.onnx")])
    assert result.exit_code == EXIT_OK, result.stderr
    assert "every 1×1 pixels" in result.stdout and "stitched" in result.stdout and "density 4" in result.stdout
    loaded = fc2conv.load(tmp_path / "d.safetensors", model_def="models/small_cnn.py:SmallCNN")
    assert loaded.fc2conv.density == 4 and fc2conv.geometry(loaded).stride == (1, 1)
    refused = runner.invoke(app, ["convert", str(tmp_path / "small.pt"), *common, "--density", "3", "-o",
                                  str(tmp_path / "x.pt2")])
    assert refused.exit_code == EXIT_USAGE and "allowed densities: [2, 4]" in refused.stderr
    pooled = runner.invoke(app, ["convert", str(tmp_path / "small.pt"), *common, "--mode", "pool", "--reduce",
                                 "max", "--onnx", str(tmp_path / "p.onnx")])
    assert pooled.exit_code == EXIT_OK and "one score vector per input" in pooled.stdout
