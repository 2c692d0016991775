"""The command line on users' own code: constructor arguments, signals and volumes, timm by name, the shape a
model expects when --input-shape is missing or wrong, and `run`'s warning when nothing says how to normalise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import invoke, saved_weights

from fc2conv.cli import EXIT_OK, EXIT_USAGE

MODELS = '''
import torch
import torch.nn.functional as F
from torch import nn


class VGG(nn.Module):
    """The CIFAR-collection spelling: VGG('VGG11'), a config name passed to the constructor."""

    cfg = {"VGG11": [8, "M", 16, "M"], "VGG13": [8, 8, "M", 16, "M"]}

    def __init__(self, vgg_name, num_classes=10, width=1):
        super().__init__()
        layers, channels = [], 3
        for v in self.cfg[vgg_name]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, v * width, 3, padding=1), nn.ReLU(inplace=True)]
                channels = v * width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        out = self.features(x)
        out = F.avg_pool2d(out, 4)
        return self.classifier(out.view(out.size(0), -1))


class Signal(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv1d(1, 4, 9, stride=4), nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.conv(x))
        return self.fc(F.avg_pool1d(x, x.shape[-1]).flatten(1))
'''



@pytest.fixture
def user_models(tmp_path) -> Path:
    path = tmp_path / "models.py"
    path.write_text(MODELS)
    return path



@pytest.mark.parametrize("args", [["VGG13"], ["vgg_name=VGG13"], ['{"vgg_name": "VGG13", "width": 1}']])
def test_model_args_reach_the_constructor_and_the_artifact(user_models, tmp_path, args):
    weights = saved_weights(user_models, "VGG", tmp_path / "vgg.pt", "VGG13")
    model_args = [a for arg in args for a in ("--model-arg", arg)]
    result = invoke("convert", weights, "--model-def", f"{user_models}:VGG", *model_args, "--input-shape", "3,16,16",
                    "-o", tmp_path / "vgg.safetensors", "--json")
    assert result.exit_code == EXIT_OK, result.stderr
    recipe = json.loads(result.stdout)["recipe"]
    assert recipe["model_args"] == ["VGG13"] or recipe["model_kwargs"]["vgg_name"] == "VGG13"
    verified = invoke("verify", weights, tmp_path / "vgg.safetensors", "--model-def", f"{user_models}:VGG")
    assert verified.exit_code == EXIT_OK, verified.stderr


def test_missing_constructor_arguments_say_how_to_pass_them(user_models, tmp_path):
    weights = saved_weights(user_models, "VGG", tmp_path / "vgg.pt", "VGG11")
    result = invoke("convert", weights, "--model-def", f"{user_models}:VGG", "--input-shape", "3,16,16", "-o",
                    tmp_path / "out.pt2")
    assert result.exit_code == EXIT_USAGE and "--model-arg" in result.stderr and "vgg_name" in result.stderr


@pytest.mark.parametrize("shape", [None, "3,64,64", "1,16,16"])
def test_a_missing_or_wrong_input_shape_names_the_expected_one(user_models, tmp_path, shape):
    weights = saved_weights(user_models, "VGG", tmp_path / "vgg.pt", "VGG11")
    given = ["--input-shape", shape] if shape else []
    result = invoke("inspect", weights, "--model-def", f"{user_models}:VGG", "--model-arg", "VGG11", *given)
    assert result.exit_code == EXIT_USAGE, result.stdout
    assert "--input-shape 3,16,16" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3


def test_a_signal_model_end_to_end(user_models, tmp_path):
    weights = saved_weights(user_models, "Signal", tmp_path / "signal.pt")
    result = invoke("convert", weights, "--model-def", f"{user_models}:Signal", "--input-shape", "1,64", "-o",
                    tmp_path / "signal.pt2", "--onnx", tmp_path / "signal.onnx", "--labels", "a,b,c",
                    "--mean", "0", "--std", "1")
    assert result.exit_code == EXIT_OK, result.stderr
    assert "one per 64 window every 4 pixels" in result.stdout
    np.save(tmp_path / "clip.npy", np.random.default_rng(0).standard_normal((1, 200)).astype(np.float32))
    ran = invoke("run", tmp_path / "signal.onnx", tmp_path / "clip.npy", "--json")
    assert ran.exit_code == EXIT_OK, ran.stderr
    data = json.loads(ran.stdout)
    assert data["result"]["map_size"] == [35] and len(data["top_classes"][0]["box"]) == 2


def test_run_warns_when_nothing_gives_a_normalisation(user_models, tmp_path):
    from PIL import Image

    weights = saved_weights(user_models, "VGG", tmp_path / "vgg.pt", "VGG11")
    invoke("convert", weights, "--model-def", f"{user_models}:VGG", "--model-arg", "VGG11", "--input-shape", "3,16,16",
           "--onnx", tmp_path / "bare.onnx")
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(tmp_path / "image.png")
    bare = invoke("run", tmp_path / "bare.onnx", tmp_path / "image.png")
    assert bare.exit_code == EXIT_OK and "warning: neither" in bare.stderr
    given = invoke("run", tmp_path / "bare.onnx", tmp_path / "image.png", "--mean", "0.5", "--std", "0.25")
    assert given.exit_code == EXIT_OK and given.stderr == ""


def test_run_takes_npy_arrays_as_they_are_without_a_warning(user_models, tmp_path):
    # An array is not scaled to [0, 1] as an image file is, so the warning about [0, 1] inputs does not apply.
    weights = saved_weights(user_models, "Signal", tmp_path / "signal.pt")
    invoke("convert", weights, "--model-def", f"{user_models}:Signal", "--input-shape", "1,64", "--onnx",
           tmp_path / "bare.onnx")
    np.save(tmp_path / "clip.npy", np.zeros((1, 64), np.float32))
    bare = invoke("run", tmp_path / "bare.onnx", tmp_path / "clip.npy")
    assert bare.exit_code == EXIT_OK and bare.stderr == ""


def test_timm_models_by_name(tmp_path):
    pytest.importorskip("timm")
    import timm

    torch.manual_seed(0)
    torch.save(timm.create_model("resnet10t", num_classes=4).state_dict(), tmp_path / "r.pt")
    result = invoke("inspect", tmp_path / "r.pt", "--arch", "timm:resnet10t", "--num-classes", "4",
                    "--input-shape", "3,64,64")
    assert result.exit_code == EXIT_OK, result.stderr
    assert "fc" in result.stdout and "1×1 conv" in result.stdout
    unknown = invoke("inspect", tmp_path / "r.pt", "--arch", "timm:resnet10x")
    assert unknown.exit_code == EXIT_USAGE and "not a timm model" in unknown.stderr
