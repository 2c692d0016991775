"""`export_onnx`: dynamic H/W, every converted layer a `Conv`, checker-clean, metadata, onnxruntime parity.

Parity of whole networks uses the tolerance between runtimes (`assert_close(..., across_runtimes=True)`, 1e-4
relative in float32): onnxruntime and PyTorch compute every convolution of the backbone with different
kernels; the largest error measured over the 18 families is 4.4e-5 (inception_v3).
"""

from __future__ import annotations

import json
import warnings

import onnx
import pytest
import torch
from helpers import FAMILIES, ZOO, assert_close, assert_onnx_overwrite_needs_force, build_torchvision, crop_size, randn
from onnx_helpers import op_counts, run_onnx, session
from torch import nn

import fc2conv
from fc2conv.errors import ConversionError
from fc2conv.onnx import export_onnx
from fc2conv.onnx.export import PROTOBUF_LIMIT
from models.small_cnn import small_cnn


def _metadata(path) -> dict:
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in model.metadata_props}


def _check_export(name: str, tmp_path) -> None:
    size = crop_size(name)
    converted = fc2conv.convert(build_torchvision(name), (3, size, size))
    if sum(p.numel() * p.element_size() for p in converted.parameters()) >= PROTOBUF_LIMIT:  # regnet_y_128gf
        with pytest.raises(ConversionError, match="limited to 2 GiB by protobuf"):
            export_onnx(converted, tmp_path / f"{name}.onnx")
        assert not any(tmp_path.iterdir())
        return
    path = export_onnx(converted, tmp_path / f"{name}.onnx")
    model = onnx.load(str(path))  # export_onnx ran the full checker on it (see test_existing_file_needs_force)
    # Every converted Linear is a Conv: no Gemm; MatMul only for Linears fc2conv keeps (ConvNeXt blocks).
    ops = op_counts(model)
    modules = list(converted.modules())
    assert ops["Gemm"] == 0
    assert ops["MatMul"] == sum(isinstance(m, nn.Linear) for m in modules)
    assert ops["Conv"] == sum(isinstance(m, nn.Conv2d) for m in modules)
    dims = [[d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim]
            for t in (model.graph.input[0], model.graph.output[0])]
    assert dims == [["batch", 3, "height", "width"], ["batch", 1000, "out_height", "out_width"]]
    geo = fc2conv.geometry(converted)
    meta = _metadata(path)
    assert meta["fc2conv.stride"] == list(geo.stride) and meta["fc2conv.window"] == list(geo.window)
    assert meta["fc2conv.input_shape"] == [3, size, size] and meta["fc2conv.exact"] == geo.exact
    (sh, sw) = geo.stride
    runtime = session(path)
    for seed, (batch, height, width) in enumerate([(2, size, size), (1, size + sh, size + 2 * sw),
                                                  (1, size + 3 * sh, size + sw)]):
        x = randn(batch, 3, height, width, seed=seed)
        with torch.no_grad():
            expected = converted(x)
        actual = run_onnx(runtime, x)
        assert actual.shape == expected.shape
        assert_close(actual, expected, across_runtimes=True)


@pytest.mark.parametrize("name", FAMILIES)
def test_export_parity_families(name, tmp_path):
    _check_export(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ZOO if n not in FAMILIES])
def test_export_parity_zoo(name, tmp_path):
    _check_export(name, tmp_path)


@pytest.fixture(scope="module")
def small_converted():
    torch.manual_seed(0)
    model = small_cnn().eval()
    return model, fc2conv.convert(model, (3, 32, 32))


def test_metadata_labels_mean_std(small_converted, tmp_path):
    _, converted = small_converted
    labels = [f"class {k}" for k in range(10)]
    path = export_onnx(converted, tmp_path / "m.onnx", labels=labels, mean=[0.5, 0.4, 0.3], std=[0.2])
    meta = _metadata(path)
    assert meta == {"fc2conv.stride": [4, 4], "fc2conv.window": [32, 32], "fc2conv.input_shape": [3, 32, 32],
                    "fc2conv.receptive_field": [[3, 3], [3, 3]], "fc2conv.mode": "dense", "fc2conv.exact": True,
                    "fc2conv.context": "",
                    "fc2conv.labels": labels, "fc2conv.mean": [0.5, 0.4, 0.3], "fc2conv.std": [0.2]}


def test_a_model_beyond_protobufs_limit_is_refused_before_exporting(small_converted, tmp_path, monkeypatch):
    _, converted = small_converted
    weights = sum(p.numel() * p.element_size() for p in converted.parameters())
    monkeypatch.setattr("fc2conv.onnx.export.PROTOBUF_LIMIT", weights)  # as if these were 2 GiB
    with pytest.raises(ConversionError, match=r"holds 0\.0 GiB of weights, and an ONNX file is limited to 2 GiB"):
        export_onnx(converted, tmp_path / "m.onnx")
    assert not any(tmp_path.iterdir())


def test_global_mode_has_no_geometry(small_converted, tmp_path):
    original, _ = small_converted
    converted = fc2conv.convert(original, (3, 32, 32), mode="global")
    meta = _metadata(export_onnx(converted, tmp_path / "g.onnx"))
    assert meta["fc2conv.mode"] == "global" and meta["fc2conv.stride"] is None and meta["fc2conv.window"] is None


def test_static_export(small_converted, tmp_path):
    _, converted = small_converted
    model = onnx.load(str(export_onnx(converted, tmp_path / "s.onnx", dynamic=False)))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]


def test_dynamo_exporter(small_converted, tmp_path):
    _, converted = small_converted
    path = export_onnx(converted, tmp_path / "d.onnx", exporter="dynamo")
    assert op_counts(path)["Gemm"] == 0
    x = randn(2, 3, 45, 37)
    with torch.no_grad():
        assert_close(run_onnx(path, x), converted(x))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"labels": ["a", "b"]}, "fc2conv.labels must name each of the model's 10 classes, not 2"),
    ({"mean": [0.1, 0.2]}, "fc2conv.mean must be 1 or 3 numbers"),
    ({"std": [0.2, 0.0, 0.1]}, "fc2conv.std must be positive"),
    ({"exporter": "tf"}, "exporter must be one of"),
    ({"input_shape": (32, 32)}, "does not match the reference shape"),
    ({"input_shape": (3, 16, 16)}, r"does not run at input_shape=\(3, 16, 16\)"),
])
def test_bad_arguments_write_nothing(small_converted, tmp_path, kwargs, message):
    _, converted = small_converted
    with pytest.raises(ConversionError, match=message):
        export_onnx(converted, tmp_path / "bad.onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_refuses_unconverted_model(small_converted, tmp_path):
    original, _ = small_converted
    with pytest.raises(ConversionError, match="model returned by fc2conv"):
        export_onnx(original, tmp_path / "x.onnx")


def test_existing_file_needs_force(small_converted, tmp_path):
    _, converted = small_converted
    target = tmp_path / "m.onnx"
    assert_onnx_overwrite_needs_force(lambda force: export_onnx(converted, target, force=force), target)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left behind


class CatAvgMax(nn.Module):
    """A head on concatenated average and max pools of one map (timm's catavgmax)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU())
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        f = self.features(x)
        return self.fc(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1))


def test_pools_of_one_map_export_and_agree_with_convert_onnx(tmp_path):
    """Both routes to a dense ONNX model, fc2conv.convert + export_onnx and convert_onnx on the original's
    own export, give the same map of scores."""
    torch.manual_seed(0)
    model = CatAvgMax().eval()
    converted = fc2conv.convert(model, (3, 19, 19))
    exported = export_onnx(converted, tmp_path / "dense.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(1, 3, 19, 19),), tmp_path / "original.onnx", dynamo=False,
                          input_names=["input"], opset_version=18)
    from fc2conv.onnx import convert_onnx

    rewritten = convert_onnx(tmp_path / "original.onnx", tmp_path / "rewritten.onnx")
    assert op_counts(rewritten)["Gemm"] == 0
    x = randn(2, 3, 31, 27)
    with torch.no_grad():
        dense = converted(x)
    assert dense.shape[2:] == (7, 5)
    assert_close(run_onnx(exported, x), dense)
    assert_close(run_onnx(tmp_path / "rewritten.onnx", x), dense)
