"""Property: on randomly generated CNN classifiers (tests/strategies.py) the converted network is the same network.

For every example, in every mode that applies:
- dense, global and cam (cam exactly when the logits are linear in a global average pool; otherwise
  refused with ConversionError) equal the original at the reference size in float32 (1e-5) and float64
  (1e-10), and no Linear or BatchNorm1d is left;
- dense on a larger, non-square input has one cell per stride step of the architecture, every cell
  equals the original's own head on the window of the original's features at that cell (also in
  float64), and, without padding, the original model run on the image crop `Geometry.box(i, j)`;
- global and cam equal the original at the larger size, and the caller's model is never changed.
On smaller samples, because each takes seconds: `fc2conv.geometry` measures the architecture's stride and
window, and the exported ONNX model agrees in onnxruntime.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import assert_close, measured_receptive_field, randn
from hypothesis import HealthCheck, given, settings
from strategies import Arch, Hidden, Stage, architectures, build_generated
from torch import nn

import fc2conv
from fc2conv import ConversionError, Geometry
from fc2conv.tolerance import max_errors, tolerance

# Fixed seed (derandomize) and no example database, so CI runs the same examples every time. A deadline
# would fail examples that are slow only because the shared CI box is busy; generating a model takes
# more draws than hypothesis expects of a strategy, hence too_slow.
PROFILE = {"derandomize": True, "database": None, "deadline": None, "print_blob": True,
           "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
CI_EXAMPLES, SLOW_EXAMPLES, GEOMETRY_EXAMPLES, ONNX_EXAMPLES = 300, 2000, 30, 12


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a loaded 2-core box threads that wait for
    each other make every forward pass about 20× slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _larger(arch: Arch) -> tuple[int, int, int]:
    """A larger, non-square input: two more stride steps down, one across."""
    c, h, w = arch.input_shape
    return c, h + 2 * arch.stride, w + arch.stride


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


class Summands:
    """Records, per example, the size of the terms the model's last Linear sums: max over its outputs of
    Σ|w·x| + |b|. Float32 rounding of a logit is relative to that, not to the logit, and random heads can
    cancel: a one-class head over 2040 features gave logits of 0.02 from terms summing to 6.2 in absolute
    value, and rounding of 1.9e-7 (1.07e-5 of the logit, 3e-8 of the terms; float64: 1e-16)."""

    def __init__(self, model: nn.Module):
        self.linear = model.head[-1]
        self.scale = 0.0

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        terms = inputs[0].abs() @ self.linear.weight.abs().T + self.linear.bias.abs()
        self.scale = max(self.scale, terms.max().item())

    def run(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        handle = self.linear.register_forward_hook(self)
        try:
            return model(x)
        finally:
            handle.remove()

    def limit(self, expected: torch.Tensor) -> float | None:
        """The relative error `assert_close` allows against `expected`: in float64 fc2conv's tolerance (None, the
        default: relative to max |expected|, the exactness proof); in float32 fc2conv's tolerance of the larger of
        max |expected| and the size of the summed terms (its rounding), as a fraction of max |expected|."""
        if expected.dtype == torch.float64:
            return None
        peak = expected.abs().max().item()
        scale = max(peak, self.scale)
        return tolerance(torch.float32) * scale / peak if peak > 0 else tolerance(torch.float32) * scale


def check_dense_cells(model, out: torch.Tensor, image: torch.Tensor, crops) -> None:
    """Every cell of the dense output `out` on `image` is the original's own head on the window of the
    original's features at that cell (the meaning of a dense cell, padded or not), and with `crops` (the
    geometry, for padding-free models) the original model run on the image crop `crops.box(i, j)`."""
    arch = model.arch
    assert out.shape == (image.shape[0], arch.classes, 3, 2)  # two stride steps down, one across
    features, (_, fh, fw), head = model.features(image), arch.features, model.classify
    if arch.covering_pool:  # the head's pool is a stage's, slid with stride 1: windows of the map it covered
        pools = [i for i, layer in enumerate(model.features) if isinstance(layer, nn.MaxPool2d | nn.AvgPool2d)]
        at = pools[sum(1 for s in arch.stages[: arch.covering_stage] if s.pool)]
        features, (fh, fw) = model.features[:at](image), arch.map_before_covering_pool

        def head(window: torch.Tensor) -> torch.Tensor:
            return model.classify(model.features[at:](window))

    summands = Summands(model)
    windows = [[summands.run(head, features[:, :, i : i + fh, j : j + fw].contiguous())
                for j in range(2)] for i in range(3)]
    expected = torch.stack([torch.stack(row, -1) for row in windows], -2)
    assert_close(out, expected, limit=summands.limit(expected))
    if crops is not None:
        summands = Summands(model)
        runs = [[summands.run(model, image[:, :, top:bottom, left:right])
                 for top, left, bottom, right in (crops.box(i, j) for j in range(2))] for i in range(3)]
        expected = torch.stack([torch.stack(row, -1) for row in runs], -2)
        assert_close(out, expected, limit=summands.limit(expected))


def check_conversion(arch: Arch) -> None:
    model = build_generated(arch)
    before = _state(model)
    x = randn(2, *arch.input_shape, seed=1)
    big = randn(2, *_larger(arch), seed=2)
    _, fh, fw = arch.features
    with torch.no_grad():
        summands, big_summands = Summands(model), Summands(model)
        logits = summands.run(model, x)
        big_logits = big_summands.run(model, big) if arch.pool else None  # else it runs at one size only
        converted = {mode: fc2conv.convert(model, arch.input_shape, mode=mode) for mode in ("dense", "global", "cam")
                     if arch.cam or mode != "cam"}
        if not arch.cam:
            with pytest.raises(ConversionError, match="cam mode"):
                fc2conv.convert(model, arch.input_shape, mode="cam")

        for mode, net in converted.items():
            assert not any(isinstance(m, nn.Linear | nn.BatchNorm1d) for m in net.modules()), mode
            out = net(x)
            # cam keeps the map the global average pool saw: the features, or the 2×2 map a covering pool averaged.
            cam_map = arch.map_before_covering_pool if arch.covering_average else (fh, fw)
            assert out.shape == ((2, arch.classes, *cam_map) if mode == "cam" else (2, arch.classes, 1, 1))
            assert_close(out.mean((2, 3)), logits, limit=summands.limit(logits))
            if mode != "dense" and arch.pool:  # pools are kept: the same function at any size
                assert_close(net(big).mean((2, 3)), big_logits, limit=big_summands.limit(big_logits))

        # The architecture's own stride and window; test_geometry_is_the_architectures checks that
        # fc2conv.geometry measures the same (it takes seconds, so on fewer examples).
        geometry = Geometry((arch.stride, arch.stride), arch.input_shape[1:])
        check_dense_cells(model, converted["dense"](big), big, crops=None if arch.padded else geometry)

        double = build_generated(arch, torch.float64)
        dense = fc2conv.convert(double, arch.input_shape, mode="dense", inplace=True)
        assert_close(dense(x.double()).flatten(1), double(x.double()))  # 1e-10 of max |logit|
        check_dense_cells(double, dense(big.double()), big.double(), crops=None)

    assert model.training is False
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@settings(max_examples=CI_EXAMPLES, **PROFILE)
@given(architectures())
def test_generated_classifiers_convert_exactly(arch):
    check_conversion(arch)


@pytest.mark.slow
@settings(max_examples=SLOW_EXAMPLES, **PROFILE)
@given(architectures())
def test_generated_classifiers_convert_exactly_many(arch):
    check_conversion(arch)


@settings(max_examples=GEOMETRY_EXAMPLES, **PROFILE)
@given(architectures())
def test_geometry_is_the_architectures(arch):
    """`geometry` measures the product of the strides and the reference window, and cells are exact; the receptive
    field it derives from the graph is the one found by perturbation, and no wider than the window without
    padding."""
    dense = fc2conv.convert(build_generated(arch), arch.input_shape)
    geo = fc2conv.geometry(dense)
    assert (geo.stride, geo.window, geo.exact) == ((arch.stride, arch.stride), arch.input_shape[1:], True)
    assert geo.receptive_field == measured_receptive_field(dense, arch.input_shape[0])
    if not arch.padded:
        assert geo.receptive_field == ((0, 0), (0, 0))


@settings(max_examples=ONNX_EXAMPLES, **PROFILE)
@given(architectures(max_side=24))
def test_exported_onnx_agrees_in_onnxruntime(arch):
    """The dense model exported to ONNX gives the original logits at the reference size and the same
    cells on a larger non-square input in onnxruntime, and its metadata carries the geometry."""
    import onnx
    import onnxruntime as ort

    from fc2conv.onnx import export_onnx

    model = build_generated(arch)
    dense = fc2conv.convert(model, arch.input_shape)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(dense, Path(tmp) / "model.onnx")
        metadata = {p.key: json.loads(p.value) for p in onnx.load(path).metadata_props}
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    assert metadata["fc2conv.stride"] == [arch.stride] * 2 and metadata["fc2conv.window"] == [*arch.input_shape[1:]]
    x, big = randn(2, *arch.input_shape, seed=1), randn(2, *_larger(arch), seed=2)
    with torch.no_grad():
        summands = Summands(model)
        logits = summands.run(model, x)
        (out,) = session.run(None, {"input": x.numpy()})
        assert_close(torch.from_numpy(out).flatten(1), logits, limit=summands.limit(logits))
        (out,) = session.run(None, {"input": big.numpy()})
        check_dense_cells(model, torch.from_numpy(out), big, crops=None)


# Hand-picked corners the strategy can reach but a few hundred examples may not.
CORNERS = [
    Arch((3, 5, 5), (Stage(2, 5),), classes=1),  # 1×1 features, one logit
    Arch((1, 40, 7), (Stage(4, 3, 2, 1, batchnorm=True, pool="max"), Stage(4, 3, 2, 1, groups=4)),
         "adaptive", (3, 1), "view", (Hidden(5, True, "gelu", True),), classes=7),  # pool upsamples rows
    Arch((4, 17, 31), (Stage(8, 1, groups=4), Stage(8, 5, 2, 2, groups=8, activation="hardswish")), "mean",
         hidden=(Hidden(1, True, None, True), Hidden(9, False, None)), classes=2),  # cam through BN1d/Dropout
]


@pytest.mark.parametrize("arch", CORNERS, ids=["1x1 features, one logit", "pool upsamples rows", "cam through BN1d"])
def test_corner_architectures(arch):
    check_conversion(arch)


@pytest.mark.parametrize("pool_size,mode", [((2, 2), "dense"), ((1, 1), "cam")])
def test_reshape_by_shape_0_after_a_folded_or_global_pool(pool_size, mode):
    """Found by the generator: `x.shape[0]` on the head's vectors (fx: getattr 'shape', then [0])."""
    arch = Arch((3, 8, 8), (Stage(2, 1),), "adaptive", pool_size, "reshape")  # features 2×8×8
    model = build_generated(arch)
    converted = fc2conv.convert(model, arch.input_shape, mode=mode)
    x = randn(2, *arch.input_shape)
    with torch.no_grad():
        assert_close(converted(x).mean((2, 3)), model(x))


def test_padding_makes_dense_cells_differ_from_cropped_runs():
    """The documented limit, measured: with padding a cell is the head on the features at its place, which
    near the window's edges saw real neighbouring pixels where the crop run saw zero padding."""
    arch = Arch((3, 15, 15), (Stage(4, 3, padding=1, pool="max"), Stage(4, 3, 2, 1)), classes=3, seed=1)
    model = build_generated(arch)
    dense = fc2conv.convert(model, arch.input_shape)
    image = randn(1, 3, 15 + 4 * arch.stride, 15 + 4 * arch.stride, seed=3)
    with torch.no_grad():
        out, features = dense(image), model.features(image)
        _, fh, fw = arch.features
        for i, j in [(0, 0), (2, 2), (4, 1)]:  # a corner, the centre, an edge
            assert_close(out[:, :, i, j], model.classify(features[:, :, i : i + fh, j : j + fw].contiguous()))
            top, left = i * arch.stride, j * arch.stride
            crop = model(image[:, :, top : top + 15, left : left + 15])
            assert max_errors(out[:, :, i, j], crop)[1] > 1e-3
