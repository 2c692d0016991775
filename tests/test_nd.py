"""Signals and volumes: 1-D and 3-D classifiers through every layer of fc2conv (convert, geometry and its
receptive field, verify, export_onnx and convert_onnx, the torch-free runtime, the command line). The models are
small ones of our own with the shapes of public code: a speech CNN like the torchaudio tutorial's (Conv1d stack,
`F.avg_pool1d(x, x.shape[-1])`, a Linear on permuted features), a 12-lead ECG CNN (`nn.Flatten` → Linear), and
a volumetric CNN (`x.view(-1, C*d*h*w)` → Linear). torchvision's video classifiers are in test_zoo."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, measured_receptive_field, randn
from onnx_helpers import run_onnx
from torch import nn

import fc2conv
from fc2conv.onnx import convert_onnx, export_onnx
from fc2conv.runtime import DenseModel


class SpeechCNN(nn.Module):
    """The torchaudio tutorial's M5 shape: strided Conv1d stack, a pool over the whole signal, a Linear on the
    permuted features, log-softmax over the classes (output N×1×K)."""

    def __init__(self, classes: int = 7, channels: int = 8):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 40, stride=8)
        self.bn1, self.pool1 = nn.BatchNorm1d(channels), nn.MaxPool1d(2)
        self.conv2 = nn.Conv1d(channels, 2 * channels, 3)
        self.bn2, self.pool2 = nn.BatchNorm1d(2 * channels), nn.MaxPool1d(2)
        self.fc1 = nn.Linear(2 * channels, classes)

    def forward(self, x):
        x = self.pool1(F.relu(self.bn1(self.conv1(x))))
        x = self.pool2(F.relu(self.bn2(self.conv2(x))))
        x = F.avg_pool1d(x, x.shape[-1])
        x = x.permute(0, 2, 1)
        return F.log_softmax(self.fc1(x), dim=2)


class ECGCNN(nn.Module):
    """12 leads, padded convolutions, Flatten → Linear → ReLU → Dropout → Linear."""

    def __init__(self, length: int = 200, classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(12, 8, 7, padding=3), nn.ReLU(), nn.MaxPool1d(2),
                                      nn.Conv1d(8, 8, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * (length // 4), 16), nn.ReLU(), nn.Dropout(0.3),
                                  nn.Linear(16, classes))

    def forward(self, x):
        return self.head(self.features(x))


class VolumeCNN(nn.Module):
    """Conv3d, MaxPool3d, Conv3d, then `x.view(-1, C*d*h*w)` → Linear."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.c1, self.pool, self.c2 = nn.Conv3d(1, 4, 3), nn.MaxPool3d(2), nn.Conv3d(4, 6, 3)
        self.fc = nn.Linear(6 * 2 * 3 * 4, classes)

    def forward(self, x):
        x = F.relu(self.c2(self.pool(F.relu(self.c1(x)))))
        return self.fc(x.view(-1, 6 * 2 * 3 * 4))


# (model, reference shape without batch, a larger input's spatial size, whether its head pools the whole input)
CASES = {
    "speech": (SpeechCNN, (1, 400), (700,), True),
    "ecg": (ECGCNN, (12, 200), (236,), False),
    "volume": (VolumeCNN, (1, 10, 12, 14), (14, 16, 20), False),
}


def _nd_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = CASES[name][0]().eval()
    for m in model.modules():  # batch norm that is not the identity
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("name", sorted(CASES))
def test_dense_equals_the_original_and_slides(name):
    model = _nd_model(name)
    shape, larger, _ = CASES[name][1:]
    dense = fc2conv.convert(model, shape)
    x = randn(2, *shape)
    with torch.no_grad():
        out = dense(x)
        assert out.shape == (2, out.shape[1], *(1,) * (len(shape) - 1))
        assert_close(out.flatten(1), model(x).flatten(1))
        big = dense(randn(2, shape[0], *larger, seed=1))
    assert all(n > 1 for n in big.shape[2:]), big.shape
    assert not any(isinstance(m, nn.Linear) for m in dense.modules())
    report = fc2conv.verify(model, dense)
    assert [c.passed for c in report.checks] == [True, True], str(report)


@pytest.mark.parametrize("name", sorted(CASES))
def test_geometry_and_receptive_field_per_axis(name):
    model = _nd_model(name)
    shape = CASES[name][1]
    dense = fc2conv.convert(model, shape)
    geo = fc2conv.geometry(dense)
    assert len(geo.stride) == len(geo.window) == len(shape) - 1 and geo.window == shape[1:] and geo.exact
    assert geo.receptive_field == measured_receptive_field(dense, shape[0])
    assert len(geo.box(*(1,) * len(geo.stride))) == 2 * len(geo.stride)


@pytest.mark.parametrize("name", sorted(CASES))
def test_global_mode(name):
    """With a pool over the whole signal the converted model is the original at every length, one vector; a
    flattened head has no pool to keep, and the original itself runs at its reference size only."""
    model = _nd_model(name)
    shape, larger, pooled = CASES[name][1:]
    converted = fc2conv.convert(model, shape, mode="global")
    big = randn(2, shape[0], *larger, seed=1)
    report = fc2conv.verify(model, converted)
    assert report.ok, str(report)
    if pooled:
        with torch.no_grad():
            assert converted(big).shape[2:] == (1,) * (len(shape) - 1)
            assert_close(converted(big).flatten(1), model(big).flatten(1))
    else:
        assert "skipped: the original does not run" in str(report)


def test_float64_signal_agrees_to_machine_precision():
    model = _nd_model("ecg").double()
    dense = fc2conv.convert(model, (12, 200))
    x = randn(2, 12, 200, dtype=torch.float64)
    with torch.no_grad():
        assert_close(dense(x).flatten(1), model(x))  # 1e-10


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter, chosen for the source file
@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_export_and_convert_onnx_with_dynamic_axes(name, tmp_path):
    model = _nd_model(name)
    shape, larger, _ = CASES[name][1:]
    dense = fc2conv.convert(model, shape)
    path = export_onnx(dense, tmp_path / "dense.onnx")
    names = [d.dim_param for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]
    axes = {2: ["length"], 3: ["height", "width"], 4: ["depth", "height", "width"]}[len(shape)]
    assert names == ["batch", "", *axes]
    big = randn(2, shape[0], *larger, seed=1)
    with torch.no_grad():
        assert_close(run_onnx(path, big), dense(big), across_runtimes=True)
    # The original exported by torch, rewritten by convert_onnx without torch, agrees at the reference size.
    source = tmp_path / "original.onnx"
    torch.onnx.export(model, (randn(1, *shape),), source, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "n"}})
    rewritten = convert_onnx(source, tmp_path / "rewritten.onnx", force=True)
    assert not [n for n in rewritten.graph.node if n.op_type == "Gemm"]
    x = randn(2, *shape, seed=3)
    with torch.no_grad():
        assert_close(run_onnx(tmp_path / "rewritten.onnx", x).reshape(2, -1), model(x).reshape(2, -1),
                     across_runtimes=True)


@pytest.mark.parametrize("name", ["speech", "volume"])
def test_runtime_takes_npy_arrays(name, tmp_path):
    model = _nd_model(name)
    shape, larger, _ = CASES[name][1:]
    dense = fc2conv.convert(model, shape)
    classes = dense(randn(1, *shape)).shape[1]
    path = export_onnx(dense, tmp_path / "dense.onnx", labels=[f"c{k}" for k in range(classes)])
    array = np.random.default_rng(0).standard_normal((shape[0], *larger)).astype(np.float32)
    np.save(tmp_path / "input.npy", array)
    result = DenseModel(path).run(tmp_path / "input.npy")
    with torch.no_grad():
        expected = dense(torch.from_numpy(array)[None])[0].numpy()
    assert_close(result.scores, expected, limit=1e-4)  # onnxruntime against PyTorch
    best = result.top_windows(1)[0]
    assert len(best.cell) == len(shape) - 1 and len(best.box) == 2 * len(best.cell)
    np.save(tmp_path / "wrong.npy", array[:, None])
    with pytest.raises(fc2conv.ConversionError, match="channels first"):
        DenseModel(path).run(tmp_path / "wrong.npy")
