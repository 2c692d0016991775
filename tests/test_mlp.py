"""Vector-input models (MLPs) end to end: convert, export, onnxruntime parity, ONNX-to-ONNX, the torch-free runtime,
and `fc2conv convert` / `fc2conv run` on a `.npy` vector and on a `.npy` map of vectors (the MLP on every pixel).

An MLP's (D,) input is a 1×1 map of D-vectors once converted (`fc2conv.shapes`), so its maps have two spatial
axes, stride 1×1 and window 1×1 at every size.
"""

from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pytest
import torch
from helpers import assert_close, invoke, randn
from onnx_helpers import run_onnx, run_without_torch
from torch import nn

import fc2conv
from fc2conv.cli import EXIT_OK, EXIT_USAGE
from fc2conv.errors import ConversionError
from fc2conv.metadata import validate
from fc2conv.runtime import DenseModel, heatmap
from fc2conv.shapes import map_size

# Layer sizes of each vector-input model: a 3-class classifier, a deeper one, and a one-output regression.
SIZES = {"mlp_20_64_3": (20, 64, 3), "mlp_3_5_4_2": (3, 5, 4, 2), "regression_13_1": (13, 1)}

MLP_DEF = '''
from torch import nn

def mlp(sizes="20,64,3"):
    sizes = [int(s) for s in sizes.split(",")]
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers[:-2])
'''


def _mlp(sizes: tuple[int, ...], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    model = nn.Sequential(*layers[:-2])
    for module in model.modules():  # real statistics, so batch norm is not the identity
        if isinstance(module, nn.BatchNorm1d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return model.eval()


def _per_pixel(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The original MLP on every pixel of an N×D×H×W map: N×K×H×W."""
    n, d, h, w = x.shape
    with torch.no_grad():
        scores = model(x.permute(0, 2, 3, 1).reshape(-1, d))
    return scores.reshape(n, h, w, -1).permute(0, 3, 1, 2)


@pytest.fixture(scope="module", params=list(SIZES))
def mlp_onnx(request, tmp_path_factory):
    """(sizes, original, converted, exported ONNX path) of each vector-input model."""
    sizes = SIZES[request.param]
    original = _mlp(sizes)
    converted = fc2conv.convert(original, input_shape=(sizes[0],))
    path = tmp_path_factory.mktemp("mlp") / f"{request.param}.onnx"
    fc2conv.export_onnx(converted, path, labels=[f"c{k}" for k in range(sizes[-1])])
    return sizes, original, converted, path


def test_export_keeps_two_spatial_axes_in_the_metadata(mlp_onnx):
    sizes, _, _, path = mlp_onnx
    metadata = DenseModel(path).metadata
    assert metadata["input_shape"] == [sizes[0]]
    assert metadata["stride"] == [1, 1] and metadata["window"] == [1, 1] and metadata["exact"] is True


def test_onnxruntime_equals_the_original_on_vectors_and_on_every_pixel(mlp_onnx):
    sizes, original, _, path = mlp_onnx
    vectors = randn(4, sizes[0])
    with torch.no_grad():
        expected = original(vectors)
    assert_close(run_onnx(path, vectors[:, :, None, None])[:, :, 0, 0], expected, across_runtimes=True)
    image = randn(2, sizes[0], 5, 7, seed=1)
    assert_close(run_onnx(path, image), _per_pixel(original, image), across_runtimes=True)


def test_convert_onnx_of_a_static_mlp_export(mlp_onnx, tmp_path):
    sizes, original, _, _ = mlp_onnx
    static = tmp_path / "static.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice: a user's choice, here ours
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(original, (randn(1, sizes[0]),), str(static), dynamo=False)
    dense = tmp_path / "dense.onnx"
    fc2conv.convert_onnx(static, dense)
    image = randn(2, sizes[0], 3, 4, seed=2)
    assert_close(run_onnx(dense, image), _per_pixel(original, image), across_runtimes=True)


def test_runtime_scores_a_vector_and_a_map_of_vectors(mlp_onnx, tmp_path):
    sizes, original, _, path = mlp_onnx
    model = DenseModel(path)
    vector = np.random.default_rng(0).standard_normal(sizes[0]).astype(np.float32)
    result = model.run(vector)
    with torch.no_grad():
        expected = original(torch.from_numpy(vector)[None])[0]
    assert result.scores.shape == (sizes[-1], 1, 1) and result.input_size == (1, 1)
    assert_close(torch.from_numpy(result.scores[:, 0, 0]), expected, across_runtimes=True)
    image = np.random.default_rng(1).standard_normal((sizes[0], 6, 5)).astype(np.float32)
    np.save(tmp_path / "image.npy", image)
    result = model.run(tmp_path / "image.npy")
    assert result.scores.shape == (sizes[-1], 6, 5)
    assert_close(torch.from_numpy(result.scores)[None], _per_pixel(original, torch.from_numpy(image)[None]),
                 across_runtimes=True)
    assert result.box(2, 3) == (2, 3, 3, 4)  # a cell is its pixel
    heat = heatmap(tmp_path / "image.npy", result, 0, tmp_path / "heat.png")  # the heat alone: no picture to blend
    assert heat.stat().st_size > 0


def test_runtime_refuses_rows_of_vectors_and_says_how(mlp_onnx):
    sizes, _, _, path = mlp_onnx
    rows = np.zeros((4, sizes[0]), np.float32)
    with pytest.raises(ConversionError, match=rf"{sizes[0]}×N×1 map x\.T\[:, :, None\]"):
        DenseModel(path).run(rows)


def test_runtime_runs_an_mlp_without_torch(mlp_onnx, tmp_path):
    sizes, original, _, path = mlp_onnx
    vector = np.linspace(-1, 1, sizes[0], dtype=np.float32)
    np.save(tmp_path / "vector.npy", vector)
    done = run_without_torch(f"""
        import json
        from fc2conv.runtime import DenseModel
        result = DenseModel({str(path)!r}).run("vector.npy")
        print(json.dumps(result.scores[:, 0, 0].tolist()))
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    with torch.no_grad():
        expected = original(torch.from_numpy(vector)[None])[0]
    assert_close(torch.tensor(json.loads(done.stdout)), expected, across_runtimes=True)


def test_metadata_counts_an_mlps_two_spatial_axes():
    validate({"input_shape": [20], "mode": "dense", "stride": [1, 1], "window": [1, 1]}, source="test")
    with pytest.raises(ConversionError, match=r"fc2conv\.stride must be 2 positive integer"):
        validate({"input_shape": [20], "mode": "dense", "stride": [1], "window": [1]}, source="test")


@pytest.mark.parametrize("name", ["mlp_20_64_3", "regression_13_1"])
def test_cli_converts_an_mlp_checkpoint_and_runs_it_on_npy_files(name, tmp_path):
    sizes = SIZES[name]
    definition = tmp_path / "mlp_def.py"
    definition.write_text(MLP_DEF)
    original = _mlp(sizes)
    torch.save(original.state_dict(), tmp_path / "weights.pt")
    spec = ",".join(map(str, sizes))
    done = invoke("convert", tmp_path / "weights.pt", "--model-def", f"{definition}:mlp", "--model-arg",
                  f"sizes={spec}", "--input-shape", sizes[0], "-o", tmp_path / "mlp.pt2", "--onnx",
                  tmp_path / "mlp.onnx")
    assert done.exit_code == EXIT_OK, done.output
    assert (tmp_path / "mlp.pt2").is_file() and (tmp_path / "mlp.onnx").is_file()

    vector = np.random.default_rng(3).standard_normal(sizes[0]).astype(np.float32)
    np.save(tmp_path / "vector.npy", vector)
    done = invoke("run", tmp_path / "mlp.onnx", tmp_path / "vector.npy", "--json", "--topk", 1)
    assert done.exit_code == EXIT_OK, done.output
    result = json.loads(done.stdout)["result"]
    assert result["map_size"] == [1, 1]
    with torch.no_grad():
        expected = original(torch.from_numpy(vector)[None])[0]
    assert result["top_classes"][0]["class_index"] == int(expected.argmax())

    image = np.random.default_rng(4).standard_normal((sizes[0], 3, 9)).astype(np.float32)
    np.save(tmp_path / "image.npy", image)
    done = invoke("run", tmp_path / "mlp.onnx", tmp_path / "image.npy")
    assert done.exit_code == EXIT_OK, done.output
    assert "a 3×9 map of vectors" in done.stdout and "warning" not in done.output

    np.save(tmp_path / "rows.npy", np.zeros((5, sizes[0]), np.float32))
    done = invoke("run", tmp_path / "mlp.onnx", tmp_path / "rows.npy")
    assert done.exit_code == EXIT_USAGE and "x.T[:, :, None]" in done.output


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_pool_mode_reduces_every_spatial_axis(channels):
    """mode='pool' of a signal, image and volume model: one cell at every size (the 1-D case once failed)."""
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[channels - 1]
    size = (10, 8, 6)[channels - 1]
    model = nn.Sequential(conv(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * (size - 2) ** channels, 4)).eval()
    pooled = fc2conv.convert(model, (2, *(size,) * channels), mode="pool")
    with torch.no_grad():
        out = pooled(randn(1, 2, *(size + 5,) * channels))
    assert out.shape == (1, 4, *(1,) * channels)
    assert fc2conv.verify(model, pooled)


@pytest.mark.parametrize("input_shape", [(13,), (3, 8, 8)])
def test_one_score_heads_save_as_torch_export_programs(input_shape, tmp_path):
    """A one-output head (a regression, a one-logit binary classifier) once failed torch.export's guard at 1×1."""
    if len(input_shape) == 1:
        model = nn.Sequential(nn.Linear(13, 5), nn.ReLU(), nn.Linear(5, 1)).eval()
    else:
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 1)).eval()
    converted = fc2conv.convert(model, input_shape)
    recipe = fc2conv.Recipe(input_shape=input_shape, model_def="unused.py:factory")
    path = fc2conv.save(converted, tmp_path / "one.pt2", recipe=recipe)
    loaded = fc2conv.load(path)
    for extra in (0, 3):
        x = randn(2, input_shape[0], *(s + extra for s in map_size(input_shape)))
        with torch.no_grad():
            assert_close(loaded(x), converted(x))
