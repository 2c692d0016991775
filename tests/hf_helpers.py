"""Small Hugging Face `transformers` image classifiers of every CNN family, built from configs with random weights
(nothing is downloaded), `save_pretrained` directories of them, edited copies of those, and the check that the command
refuses one cleanly (tests/test_transformers.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import assert_clean_refusal, invoke
from torch import nn

transformers = pytest.importorskip("transformers")

# The CNN families transformers ships as image classifiers, each as small as its code allows, at a 32×32 reference
# (every family downsamples by 32). BiT uses TensorFlow's SAME padding (DynamicPad2d), as google/bit-50 does;
# the MobileNets their default tf_padding.
CNN_CONFIGS = {
    "resnet": lambda: transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1]),
    "regnet": lambda: transformers.RegNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                                groups_width=8),
    "convnext": lambda: transformers.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1]),
    "convnextv2": lambda: transformers.ConvNextV2Config(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1]),
    "mobilenet_v1": lambda: transformers.MobileNetV1Config(depth_multiplier=0.25, min_depth=4),
    "mobilenet_v2": lambda: transformers.MobileNetV2Config(depth_multiplier=0.25, min_depth=4),
    "efficientnet": lambda: transformers.EfficientNetConfig(width_coefficient=0.1, depth_coefficient=0.1,
                                                            hidden_dim=128, image_size=32),
    "bit": lambda: transformers.BitConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                          num_groups=4, global_padding="SAME", embedding_dynamic_padding=True),
}
REFERENCE = (3, 32, 32)
CLASSES = ("cat", "dog", "fish", "bird", "frog")
_TOKENS = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32,
               patch_size=8)
# Transformers whose head reads tokens mixed by attention: refused.
ATTENTION_CONFIGS = {
    "vit": lambda: transformers.ViTConfig(**_TOKENS),
    "deit": lambda: transformers.DeiTConfig(**_TOKENS),
    "beit": lambda: transformers.BeitConfig(**_TOKENS),
    "dinov2": lambda: transformers.Dinov2Config(**{k: v for k, v in _TOKENS.items() if k != "intermediate_size"}),
    "swin": lambda: transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[2, 2],
                                            window_size=4),
}


def config(family: str, attention: bool = False):
    """The family's config with `CLASSES` as its labels."""
    found = (ATTENTION_CONFIGS if attention else CNN_CONFIGS)[family]()
    found.num_labels = len(CLASSES)
    found.id2label = dict(enumerate(CLASSES))
    found.label2id = {label: k for k, label in enumerate(CLASSES)}
    return found


def build_hf_model(family: str, seed: int = 0, attention: bool = False) -> nn.Module:
    """A model of `family` in eval mode, its weights random and not degenerate: transformers initialises some
    classifiers and norms to zero or one (EfficientNet's logits are then all zero), so every parameter and batch-norm
    statistic is drawn again."""
    torch.manual_seed(seed)
    settings = config(family, attention)
    if family == "deit":  # its auto class is the distilled one
        return randomized(transformers.DeiTForImageClassification(settings).eval(), seed)
    return randomized(transformers.AutoModelForImageClassification.from_config(settings).eval(), seed)


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            fan_in = parameter[0].numel() if parameter.dim() > 1 else 1
            parameter.copy_(torch.randn(parameter.shape, generator=generator) / fan_in**0.5)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))
    return model


def saved_hf_model(family: str, directory: Path, *, processor: bool = True) -> tuple[nn.Module, Path]:
    """A model of `family` and the save_pretrained directory holding it (with a preprocessor_config.json of 32×32
    crops and ImageNet's normalisation when `processor`)."""
    model = build_hf_model(family)
    model.save_pretrained(directory)
    if processor:
        transformers.BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                                       image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
                                       ).save_pretrained(directory)
    return model, directory


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


def edited(directory: Path, target: Path, file: str = "config.json", changes: dict | None = None, *,
           text: str | bytes | None = None) -> Path:
    """A copy at `target` of the save_pretrained `directory` whose `file` has `changes` merged into its JSON object,
    or is `text` instead."""
    shutil.copytree(directory, target)
    path = target / file
    if text is not None:
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    else:
        found = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**found, **(changes or {})}))
    return target


def assert_refused_untouched(directory: Path, out: Path, *fragments: str, args: tuple = (),
                             command: str = "convert") -> str:
    """`fc2conv COMMAND DIRECTORY` refuses cleanly (exit 2, a few lines, no traceback) naming every fragment, writes
    nothing into the empty folder `out`, and leaves every file of `directory` as it was; gives the message."""
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    outputs = ["-o", out / "model.safetensors", "--onnx", out / "model.onnx"] if command == "convert" else []
    result = invoke(command, directory, *outputs, *args)
    assert_clean_refusal(result, *fragments)
    assert not any(out.iterdir()), list(out.iterdir())
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    return result.stderr
