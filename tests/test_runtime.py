"""`fc2conv.runtime`: load an exported model, read images of any kind and size, score maps with boxes,
rankings, heatmap PNGs, clear errors (also for bad fc2conv metadata, named when the model opens), and no PyTorch
anywhere (checked with torch blocked)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import assert_clean_refusal, assert_close, invoke
from onnx_helpers import run_without_torch
from PIL import Image
from scan_helpers import noise

import fc2conv
from fc2conv.errors import ConversionError
from fc2conv.onnx import export_onnx
from fc2conv.runtime import DenseModel, heatmap
from models.small_cnn import small_cnn

MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
LABELS = [f"label{k}" for k in range(10)]


@pytest.fixture(scope="module")
def labelled_onnx(tmp_path_factory):
    """(converted model, path of its export with labels, mean and std)."""
    torch.manual_seed(0)
    converted = fc2conv.convert(small_cnn().eval(), (3, 32, 32))
    path = tmp_path_factory.mktemp("runtime") / "small.onnx"
    export_onnx(converted, path, labels=LABELS, mean=MEAN, std=STD)
    return converted, path


def _expected(converted, image: np.ndarray) -> torch.Tensor:
    """What the PyTorch model gives on the normalised image."""
    x = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None]
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return converted(x)[0]


def test_scores_equal_pytorch_and_boxes_follow_geometry(labelled_onnx):
    converted, path = labelled_onnx
    image = noise(50, 41)
    result = DenseModel(path).run(image)
    assert_close(torch.from_numpy(result.scores), _expected(converted, image))
    assert result.scores.shape == (10, 5, 3) and result.input_size == (50, 41)
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1, rtol=1e-5)
    geo = fc2conv.geometry(converted)
    assert all(result.box(i, j) == geo.box(i, j) for i in range(5) for j in range(3))
    with pytest.raises(ConversionError, match="outside the 5×3 score map"):
        result.box(5, 0)


def test_rankings_and_dict(labelled_onnx):
    result = DenseModel(labelled_onnx[1]).run(noise(50, 41))
    probabilities = result.probabilities
    windows = result.top_windows(4)
    assert [w.score for w in windows] == sorted((w.score for w in windows), reverse=True)
    assert windows[0].score == pytest.approx(probabilities.max())
    for p in windows + result.top_classes(10):
        assert p.label == LABELS[p.class_index] and p.box == result.box(*p.cell)
        assert p.score == pytest.approx(probabilities[p.class_index][p.cell])
    classes = result.top_classes(10)
    assert sorted(c.class_index for c in classes) == list(range(10))
    assert [c.score for c in classes] == pytest.approx(sorted(probabilities.max(axis=(1, 2)), reverse=True))
    summary = json.loads(json.dumps(result.to_dict(k=3)))
    assert summary["map_size"] == [5, 3] and summary["stride"] == [4, 4] and len(summary["top_windows"]) == 3


@pytest.mark.parametrize("kind", ["path", "pil", "rgba", "float", "gray"])
def test_image_kinds_agree(labelled_onnx, tmp_path, kind):
    model = DenseModel(labelled_onnx[1])
    rgb = noise(50, 41)
    if kind == "gray":  # a grayscale image repeated over the three channels
        gray = noise(50, 41, channels=1)
        expected, image = model.run(np.repeat(gray[:, :, None], 3, axis=2)), gray
    else:
        expected = model.run(rgb)
        image = {"path": tmp_path / "in.png", "pil": Image.fromarray(rgb),
                 "rgba": np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]),
                 "float": rgb.astype(np.float64) / 255}[kind]
        if kind == "path":
            Image.fromarray(rgb).save(image)
    np.testing.assert_allclose(model.run(image).scores, expected.scores, rtol=1e-5, atol=1e-6)


def test_color_to_gray_model(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 3)).eval()
    path = export_onnx(fc2conv.convert(net, (1, 8, 8)), tmp_path / "gray.onnx")
    rgb = noise(12, 9)
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255
    with torch.no_grad():
        expected = fc2conv.convert(net, (1, 8, 8))(torch.from_numpy(luma)[None, None])[0]
    assert_close(torch.from_numpy(DenseModel(path).run(rgb).scores), expected)


def test_heatmap_png(labelled_onnx, tmp_path):
    model = DenseModel(labelled_onnx[1])
    image = noise(50, 41)
    result = model.run(image)
    out = heatmap(image, result, 3, tmp_path / "heat.png")
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == (41, 50) and png.mode == "RGB"
        pixels = np.asarray(png)
    assert np.abs(pixels.astype(int) - image).mean() > 10  # the heat is blended in, not a copy of the input
    with pytest.raises(ConversionError, match="already exists"):
        heatmap(image, result, 3, out)
    heatmap(image, result, 4, out, force=True)
    with pytest.raises(ConversionError, match="class 10 does not exist"):
        heatmap(image, result, 10, tmp_path / "no.png")
    with pytest.raises(ConversionError, match="result is for"):
        heatmap(noise(60, 41), result, 3, tmp_path / "no.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heat.png"]


def test_errors(labelled_onnx, tmp_path):
    model = DenseModel(labelled_onnx[1])
    with pytest.raises(ConversionError, match="smaller than the model's 32×32 window"):
        model.run(noise(31, 40))
    with pytest.raises(ConversionError, match="uint8, uint16, bool or float"):
        model.run(np.zeros((40, 40, 3), dtype=np.int32))
    with pytest.raises(ConversionError, match="H×W or H×W×C"):
        model.run(np.zeros((40, 40, 5), dtype=np.uint8))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ConversionError, match="cannot read it as an image"):
        model.run(bad)
    with pytest.raises(ConversionError, match="no such model file"):
        DenseModel(tmp_path / "missing.onnx")
    with pytest.raises(ConversionError, match="onnxruntime cannot load it"):
        DenseModel(bad)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_model_without_metadata(tmp_path):
    path = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 2, 3), (torch.zeros(1, 3, 8, 8),), path, dynamo=False)
    with pytest.raises(ConversionError, match="has no fc2conv metadata"):
        DenseModel(path)


def test_runs_without_torch(labelled_onnx, tmp_path):
    image = tmp_path / "in.png"
    Image.fromarray(noise(50, 41)).save(image)
    done = run_without_torch(f"""
        import json, sys
        from fc2conv.runtime import DenseModel, heatmap
        result = DenseModel({str(labelled_onnx[1])!r}).run({str(image)!r})
        heatmap({str(image)!r}, result, result.top_classes(1)[0].class_index, "heat.png")
        assert not any(m.split(".")[0] == "torch" for m in sys.modules), "torch was imported"
        print(json.dumps(result.to_dict(k=1)))
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["map_size"] == [5, 3] and (tmp_path / "heat.png").is_file()


def _with_metadata(source: Path, target: Path, **changes: str) -> Path:
    model = onnx.load(source)
    props = {p.key: p.value for p in model.metadata_props} | {f"fc2conv.{k}": v for k, v in changes.items()}
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, target)
    return target


@pytest.mark.parametrize(("field", "value", "message"), [
    ("labels", '["a", "b"]', "fc2conv.labels must name each of the model's 10 classes, not 2"),
    ("labels", '[1, 2]', "fc2conv.labels must be a list of strings"),
    ("input_shape", '"3x32x32"', "fc2conv.input_shape must be a list"),
    ("input_shape", '[3, "a", 32]', "fc2conv.input_shape must be a list"),
    ("stride", '[4]', "fc2conv.stride must be 2 positive integer(s)"),
    ("window", '[32, -32]', "fc2conv.window must be 2 positive integer(s)"),
    ("mode", '"sparse"', "fc2conv.mode must be one of"),
    ("mean", '[0.1, 0.2]', "fc2conv.mean must be 1 or 3 numbers"),
    ("std", '[0]', "fc2conv.std must be positive"),
    ("exact", '"yes"', "fc2conv.exact must be true, false or null"),
    ("receptive_field", '[[1, 2]]', "fc2conv.receptive_field must be 2 [before, after] pair(s)"),
    ("mode", "{not json", "fc2conv.mode is not valid JSON"),
])
def test_bad_metadata_is_named_when_the_model_opens(small_and_gray_onnx, tmp_path, field, value, message):
    path = _with_metadata(small_and_gray_onnx[0], tmp_path / "bad.onnx", **{field: value})
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    assert_clean_refusal(invoke("run", path, image), "bad.onnx", message)
