"""A geometry is true or refused, never a stride of 0 (issue 31): a model whose cells are no grid of windows (it
resizes its map) has no geometry, and export, the runtime and the metadata refuse one; a window-partition model,
which runs only where its map divides into windows, gets a real stride and the sizes it takes, in `geometry`,
`inspect` and the ONNX metadata, and other sizes are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_clean_refusal, invoke, saved_weights

import fc2conv
from fc2conv.cli import EXIT_OK
from fc2conv.errors import ConversionError
from fc2conv.metadata import validate
from fc2conv.onnx import export_onnx
from fc2conv.runtime import DenseModel
from fc2conv.scan import seams
from fc2conv.shapes import Sizes, sizes_from_json

MODELS = '''
import torch
import torch.nn.functional as F
from torch import nn


class Partition(nn.Module):
    """Each position of each k×k window of the map scaled by its own weight, as window attention partitions its
    map: it runs only where the map divides into windows."""

    def __init__(self, channels, k):
        super().__init__()
        self.k = k
        self.weight = nn.Parameter(torch.randn(channels, k, k))

    def forward(self, x):
        b, c, h, w = x.shape
        k = self.k
        windows = x.view(b, c, h // k, k, w // k, k).permute(0, 2, 4, 1, 3, 5) * self.weight
        return windows.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


class Resize(nn.Module):
    """The map interpolated up to an even size, as MobileViT's blocks do to fit their patches."""

    def forward(self, x):
        h, w = x.shape[-2:]
        return F.interpolate(x, size=(-(-h // 2) * 2, -(-w // 2) * 2), mode="bilinear", align_corners=True)


def partitioned():
    """Stride 2 (padded: ⌈H/2⌉), windows of 4, so it runs at heights 8·k − 1 and 8·k; then stride 4 in all."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), Partition(4, 4), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).eval()


def resized():
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1), nn.ReLU(), Resize(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5)).eval()
'''

WINDOWS = Sizes(8, ((0, 0), (7, 7)))  # ⌈n/2⌉ a multiple of 4: n = 8·k − 1 or 8·k


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "models.py"
    path.write_text(MODELS)
    return path


def _model(models: Path, name: str) -> torch.nn.Module:
    import runpy

    torch.manual_seed(0)
    return runpy.run_path(str(models))[name]()


def test_a_map_that_is_resized_has_no_geometry_and_is_not_exported(models, tmp_path):
    model = _model(models, "resized")
    dense = fc2conv.convert(model, (3, 16, 16))  # converted, and exact as a function: only its cells have no place
    assert fc2conv.verify(model, dense).ok
    with pytest.raises(ConversionError, match="grows from 1 to 3 cells between input sizes 16 and 17") as refused:
        fc2conv.geometry(dense)
    assert "not windows on a grid" in str(refused.value) and "stride" in str(refused.value)
    with pytest.raises(ConversionError, match="grows from 1 to 3 cells"):
        export_onnx(dense, tmp_path / "resized.onnx")
    assert not (tmp_path / "resized.onnx").exists()


def test_inspect_and_convert_say_a_map_has_no_geometry(models, tmp_path):
    weights = saved_weights(models, "resized", tmp_path / "resized.pt")
    common = ["--model-def", f"{models}:resized", "--input-shape", "3,16,16"]
    inspected = invoke("inspect", weights, *common, "--json")
    assert inspected.exit_code == EXIT_OK, inspected.stderr
    assert json.loads(inspected.stdout)["geometry"] is None
    said = invoke("inspect", weights, *common).stdout
    assert "no geometry, so ONNX export, run and scan refuse it" in said and "grows from 1 to 3 cells" in said
    refused = invoke("convert", weights, *common, "--onnx", tmp_path / "resized.onnx")
    assert_clean_refusal(refused, "grows from 1 to 3 cells")
    assert not (tmp_path / "resized.onnx").exists()


def test_a_window_partition_model_has_a_real_stride_and_the_sizes_it_takes(models):
    model = _model(models, "partitioned")
    dense = fc2conv.convert(model, (3, 16, 16))
    geo = fc2conv.geometry(dense)
    assert geo.stride == (4, 4) and geo.window == (16, 16) and geo.sizes == (WINDOWS, WINDOWS)
    assert geo.to_dict()["sizes"] == ({"period": 8, "residues": ((0, 0), (7, 7))},) * 2
    assert geo.refusal((24, 23)) is None and geo.taken((20, 17)) == (23, 23)
    why = geo.refusal((20, 16))
    assert "height 16, 23–24, 31–32, … (8·k − 1 … 8·k)" in why and "16×16 and 23×16" in why
    for size in [(16, 16), (23, 24), (32, 31)]:  # every size it takes gives the map its geometry says
        with torch.no_grad():
            cells = dense(torch.zeros(1, 3, *size)).shape[2:]
        assert tuple(cells) == tuple(-(-n // 8) * 2 - 3 for n in size)
    report = fc2conv.verify(model, dense)  # checked at a larger size it takes, not at the reference again
    assert report.ok and report.checks[1].input_size == (24, 23) and report.checks[1].passed


def test_sizes_reach_the_metadata_and_the_runtime_refuses_other_sizes_by_name(models, tmp_path):
    dense = fc2conv.convert(_model(models, "partitioned"), (3, 16, 16))
    path = export_onnx(dense, tmp_path / "windows.onnx")
    runtime = DenseModel(path)
    assert runtime.metadata["sizes"] == [WINDOWS.to_json()] * 2 and runtime.sizes == (WINDOWS, WINDOWS)
    image = np.random.default_rng(0).random((24, 31, 3)).astype(np.float32)
    result = runtime.run(image)
    with torch.no_grad():
        expected = dense(torch.from_numpy(image.transpose(2, 0, 1)[None].copy())).numpy()[0]
    np.testing.assert_allclose(result.scores, expected, rtol=1e-4, atol=1e-5)
    assert result.box(1, 2) == (4, 8, 20, 24)
    with pytest.raises(ConversionError, match=r"the input is 20×31, and the model runs only at height 16, 23–24"):
        runtime.run(image[:20])
    np.save(tmp_path / "image.npy", image[:20].transpose(2, 0, 1))
    assert_clean_refusal(invoke("run", path, tmp_path / "image.npy"), "runs only at height", "16×31 and 23×31")
    with pytest.raises(ConversionError, match=r"runs only at height 16, 23–24.*cannot be scanned"):
        seams.halo(runtime.metadata, str(path), approximate=True)
    with pytest.raises(ConversionError, match=r"input_shape=\(3, 20, 16\): the model runs only at height"):
        export_onnx(dense, tmp_path / "other.onnx", input_shape=(3, 20, 16))


def test_inspect_names_the_sizes_a_model_takes(models, tmp_path):
    weights = saved_weights(models, "partitioned", tmp_path / "partitioned.pt")
    result = invoke("inspect", weights, "--model-def", f"{models}:partitioned", "--input-shape", "3,16,16")
    assert result.exit_code == EXIT_OK, result.stderr
    assert ("one per 16×16 window every 4×4 pixels, at the input sizes it takes only: height 16, 23–24, 31–32, … "
            "(8·k − 1 … 8·k) and width") in result.stdout


def _metadata(**fields) -> dict:
    return {"input_shape": [3, 16, 16], "mode": "dense", "stride": [4, 4], "window": [16, 16], **fields}


@pytest.mark.parametrize(("fields", "why"), [
    ({"stride": None}, "stride is missing: a dense map needs a stride and a window"),
    ({"mode": "cam", "window": None}, "window is missing: a cam map needs"),
    ({"stride": [0, 0]}, "stride must be 2 positive integer"),
    ({"sizes": [{"period": 8}, None]}, "sizes must be null or 2 entries"),
    ({"sizes": [{"period": 8, "residues": [[3, 1]]}, None]}, "sizes must be null"),
    ({"sizes": [None]}, "sizes must have 2 entries"),
    ({"sizes": [{"period": 8, "residues": [[1, 1]]}, None]}, "sizes must allow the reference size [16, 16]"),
])
def test_metadata_without_a_geometry_or_with_bad_sizes_is_refused(fields, why):
    with pytest.raises(ConversionError, match=why.replace("[", r"\[").replace("]", r"\]")):
        validate(_metadata(**fields), source="model.onnx")
    validate(_metadata(sizes=[WINDOWS.to_json(), None]), source="model.onnx")


def test_sizes_are_written_as_their_rule():
    assert str(Sizes(256, ((0, 0),))) == "multiples of 256" and Sizes(256, ((0, 0),)).examples(256) == \
        "256, 512, 768, …"
    assert str(Sizes(256, ((0, 0), (241, 255)))) == "256·k − 15 … 256·k"
    assert str(Sizes(64, ((3, 3), (10, 12)))) == "64·k + 3 or 64·k + 10 … 64·k + 12"
    assert sizes_from_json([WINDOWS.to_json(), None]) == (WINDOWS, None) and sizes_from_json(None) is None


# -- attention sized for one map, and attention before a head that is refused: the attention is the reason given


class _SEThenAttention(torch.nn.Module):
    """Squeeze-excitation, then self-attention over the map's positions, with a position bias sized for one map when
    `bias` (CoAtNet's and GC ViT's blocks: it then runs only at its reference size), then a pool and a Linear."""

    def __init__(self, bias: bool, c: int = 8):
        super().__init__()
        self.stem, self.gate, self.qkv = (torch.nn.Conv2d(3, c, 3, stride=4, padding=1), torch.nn.Conv2d(c, c, 1),
                                          torch.nn.Conv2d(c, 3 * c, 1))
        self.bias = torch.nn.Parameter(torch.randn(16, 16)) if bias else None  # 4×4 positions at 16×16
        self.fc = torch.nn.Linear(c, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x * torch.sigmoid(self.gate(x.mean((2, 3), keepdim=True)))
        q, k, v = self.qkv(x).flatten(2).chunk(3, dim=1)
        scores = q.transpose(1, 2) @ k
        attention = (scores if self.bias is None else scores + self.bias).softmax(-1)
        return self.fc((x + (v @ attention.transpose(1, 2)).view_as(x)).mean((2, 3)))


class _MixerThenStageHeads(torch.nn.Module):
    """A state-space token mixer (the map's positions mixed into a few states by input-dependent weights, and read
    back), then one classifier per stage, summed: EfficientViM's HSMSSD and head."""

    def __init__(self, mixer: bool, c: int = 8):
        super().__init__()
        self.mixer = mixer
        self.stem, self.states = torch.nn.Conv2d(3, c, 3, stride=2, padding=1), torch.nn.Conv2d(c, 4, 1)
        self.down = torch.nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.heads = torch.nn.ModuleList([torch.nn.Linear(c, 5), torch.nn.Linear(c, 5)])

    def forward(self, x):
        x = torch.relu(self.stem(x))
        if self.mixer:
            weights = self.states(x).flatten(2).softmax(-1)  # N×4×HW: each state's distribution over positions
            x = x + ((x.flatten(2) @ weights.transpose(1, 2)) @ weights).view_as(x)
        y = torch.relu(self.down(x))
        return torch.stack([self.heads[0](x.mean((2, 3))), self.heads[1](y.mean((2, 3)))]).sum(0)


def test_attention_sized_for_one_map_after_global_context_is_refused_for_the_attention(tmp_path):
    torch.manual_seed(0)
    dense = fc2conv.convert(_SEThenAttention(bias=True).eval(), (3, 16, 16))  # exact at its size, as a function
    with pytest.raises(ConversionError) as refused:
        fc2conv.geometry(dense)
    why = str(refused.value)
    assert why.startswith("'matmul' sees the whole input (attention: it multiplies two input-dependent tensors"), why
    assert "converts heads on convolutional feature maps (mode='global' keeps the model's own function): along the " \
           "height the converted model runs only at sizes 16 of 16…528, with no period" in why, why
    with pytest.raises(ConversionError, match=r"^'matmul' sees the whole input"):
        export_onnx(dense, tmp_path / "attention.onnx")
    assert not (tmp_path / "attention.onnx").exists()
    # Without the bias it runs at every size: converted, and its context names the attention, not the gate.
    geo = fc2conv.geometry(fc2conv.convert(_SEThenAttention(bias=False).eval(), (3, 16, 16)))
    assert geo.stride == (4, 4) and geo.exact is False and geo.context.startswith("'matmul' makes every cell"), geo


def test_a_head_refused_after_a_token_mixer_is_refused_for_the_mixer_first():
    torch.manual_seed(0)
    with pytest.raises(ConversionError) as refused:
        fc2conv.convert(_MixerThenStageHeads(mixer=True).eval(), (3, 16, 16))
    why = str(refused.value)
    assert why.startswith("'matmul' sees the whole input (attention: it multiplies two input-dependent tensors"), why
    assert "fc2conv converts heads on convolutional feature maps. Besides, cannot convert 'stack'" in why, why
    assert "separate branches" in why
    with pytest.raises(ConversionError, match=r"^'matmul' sees the whole input"):
        fc2conv.plan(_MixerThenStageHeads(mixer=True).eval(), (3, 16, 16))
    with pytest.raises(ConversionError, match=r"^cannot convert 'stack' .*separate branches"):  # no mixer: the head
        fc2conv.convert(_MixerThenStageHeads(mixer=False).eval(), (3, 16, 16))
