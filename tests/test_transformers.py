"""Hugging Face `transformers` image classifiers: every CNN family converts exactly, in Python and from a
`save_pretrained` directory on the command line; its attention models are refused saying why.

Models are built from small configs with random weights (nothing is downloaded; tests/hf_helpers.py). CI runs three
families that between them meet every mechanism (the channel check of the embeddings, output dataclasses, TF-style
SAME padding read as Python numbers, a `Sequential(Flatten, Linear)` classifier on pooled features) and the CLI;
`-m slow` runs all eight families in every mode, in float64, through ONNX and `.pt2`, and five attention models.
"""

from __future__ import annotations

import json
import re

import onnx
import pytest
import torch
from helpers import assert_close, invoke, randn
from onnx_helpers import run_onnx

import fc2conv
from fc2conv import ConversionError
from fc2conv.cli import EXIT_OK, EXIT_USAGE
from fc2conv.storage.huggingface import default_input_shape, hints, read_config

hf = pytest.importorskip("hf_helpers")  # skips this module when transformers is missing

CI_FAMILIES = ["resnet", "mobilenet_v2", "convnext"]
ALL_FAMILIES = sorted(hf.CNN_CONFIGS)
# Larger inputs, with odd sizes: TF-style padding differs by parity, and must follow the size everywhere.
LARGER = [(64, 48), (49, 41)]
# ConvNeXt's head LayerNorm leaves the map channels-last in memory, and torch.export's fake convolution then
# guards its output to more than one cell: refused at the reference size, as for torchvision's ConvNeXt.
NO_PT2 = {"convnext", "convnextv2"}
ATTENTION = r"(?s)(tokens|attention).*(convolutional feature maps|could slide)"


def _check_dense(family: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    model = hf.build_hf_model(family).to(dtype)
    dense = fc2conv.convert(model, hf.REFERENCE)
    report = fc2conv.verify(model, dense, sizes=LARGER)
    assert report.ok, report
    assert len(report.checks) == 3 and all(c.passed for c in report.checks), report
    x = randn(2, *hf.REFERENCE, dtype=dtype)
    with torch.no_grad():
        assert_close(dense(x).flatten(1), hf.logits(model, x))
    for decision in dense.fc2conv.plan:  # the head's Linears are convolutions; ConvNeXt's blocks' already act so
        if decision.op.startswith("Linear"):
            assert "conv" in decision.rule or "already convolutional" in decision.reason, decision
    return dense


@pytest.mark.parametrize("family", CI_FAMILIES)
def test_a_hugging_face_cnn_converts_exactly_with_onnx_parity(family, tmp_path):
    dense = _check_dense(family)
    path = fc2conv.export_onnx(dense, tmp_path / f"{family}.onnx")
    for size in [hf.REFERENCE[1:], *LARGER]:
        x = randn(2, 3, *size, seed=1)
        with torch.no_grad():
            assert_close(run_onnx(path, x), dense(x), across_runtimes=True)


@pytest.mark.slow
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_every_hugging_face_cnn_family_converts_exactly(family, tmp_path):
    dense = _check_dense(family)
    _check_dense(family, torch.float64)
    model = hf.build_hf_model(family)
    report = fc2conv.verify(model, fc2conv.convert(model, hf.REFERENCE, mode="global"), sizes=LARGER)
    assert report.ok, report
    path = fc2conv.export_onnx(dense, tmp_path / f"{family}.onnx")
    for size in LARGER:
        x = randn(2, 3, *size, seed=2)
        with torch.no_grad():
            assert_close(run_onnx(path, x), dense(x), across_runtimes=True)
    if family not in NO_PT2:
        recipe = fc2conv.Recipe(hf_config=hf.config(family).to_dict(), input_shape=hf.REFERENCE)
        program = fc2conv.load(fc2conv.save(dense, tmp_path / f"{family}.pt2", recipe=recipe))
        x = randn(2, 3, *LARGER[1], seed=3)
        with torch.no_grad():
            assert_close(program(x), dense(x))


@pytest.mark.slow
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_cam_mode_converts_or_says_why(family):
    model = hf.build_hf_model(family)
    try:
        cam = fc2conv.convert(model, hf.REFERENCE, mode="cam")
    except ConversionError as e:  # a LayerNorm or a reshape between the pool and the logits
        assert "cam mode" in str(e)
        return
    assert fc2conv.verify(model, cam, sizes=LARGER).ok


def test_tf_padding_is_kept_as_the_size_dependent_padding_it_is():
    """MobileNet's `apply_tf_padding` reads the size as a Python number and branches on its parity: fc2conv keeps it
    as one node, replaced by its own SamePad, which computes the same widths at every size."""
    from fc2conv.layers import SamePad

    model = hf.build_hf_model("mobilenet_v2")
    dense = fc2conv.convert(model, hf.REFERENCE)
    assert any(isinstance(m, SamePad) for m in dense.modules())
    notes = " ".join(dense.fc2conv.plan.notes)
    assert "apply_tf_padding() kept as one node" in notes and "modeling_mobilenet_v2.py:" in notes


@pytest.mark.parametrize("inplace", [False, True])
def test_the_callers_model_is_left_as_it_was(inplace):
    model = hf.build_hf_model("bit").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [(name, type(m)) for name, m in model.named_modules()]
    with pytest.warns(UserWarning, match="training mode"):
        fc2conv.convert(model, hf.REFERENCE, inplace=inplace)
    assert [(name, type(m)) for name, m in model.named_modules()] == modules
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training is not inplace  # inplace leaves it in eval mode, as documented


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_attention_models_are_refused_saying_why(family):
    model = hf.build_hf_model(family, attention=True)
    with pytest.raises(ConversionError, match=ATTENTION):
        fc2conv.convert(model, hf.REFERENCE)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(hf.ATTENTION_CONFIGS))
def test_every_attention_model_is_refused_saying_why(family):
    model = hf.build_hf_model(family, attention=True)
    with pytest.raises(ConversionError, match=ATTENTION):
        fc2conv.convert(model, hf.REFERENCE)


# -- the command line on save_pretrained directories


def test_a_directory_of_an_attention_model_is_refused_saying_why(tmp_path):
    hf.build_hf_model("vit", attention=True).save_pretrained(tmp_path / "vit")
    result = invoke("convert", tmp_path / "vit", "--onnx", tmp_path / "vit.onnx")
    assert result.exit_code == EXIT_USAGE and re.search(ATTENTION, result.stderr), result.stderr
    assert not (tmp_path / "vit.onnx").exists()


def _convert_directory(family, tmp_path, *extra):
    model, directory = hf.saved_hf_model(family, tmp_path / family)
    outputs = [tmp_path / f"{family}.safetensors", *([] if family in NO_PT2 else [tmp_path / f"{family}.pt2"])]
    result = invoke("convert", directory, *[a for o in outputs for a in ("-o", o)], "--onnx",
                    tmp_path / f"{family}.onnx", "--json", *extra)
    assert result.exit_code == EXIT_OK, result.output
    return model, directory, outputs, json.loads(result.stdout)


@pytest.mark.parametrize("family", ["resnet"])
def test_convert_reads_a_save_pretrained_directory(family, tmp_path):
    model, directory, outputs, found = _convert_directory(family, tmp_path)
    assert found["ok"] and found["recipe"]["hf_config"]["model_type"] == family
    assert found["recipe"]["input_shape"] == [3, 32, 32]  # the processor's crop
    metadata = {p.key: json.loads(p.value) for p in onnx.load(tmp_path / f"{family}.onnx").metadata_props}
    assert metadata["fc2conv.labels"] == list(hf.CLASSES)
    assert metadata["fc2conv.mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert metadata["fc2conv.std"] == pytest.approx([0.229, 0.224, 0.225])
    x = randn(2, 3, 64, 48, seed=4)
    for artifact in outputs:  # rebuilt from the recipe's config.json, or the exported program
        loaded = fc2conv.load(artifact)
        with torch.no_grad():
            assert_close(loaded(x[:, :, :32, :32]).flatten(1), hf.logits(model, x[:, :, :32, :32]))
        assert invoke("verify", directory, artifact).exit_code == EXIT_OK


@pytest.mark.slow
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_convert_reads_every_family_from_a_directory(family, tmp_path):
    _, directory, outputs, found = _convert_directory(family, tmp_path)
    assert found["ok"]
    for artifact in outputs:
        assert invoke("verify", directory, artifact).exit_code == EXIT_OK


def test_a_directory_needs_no_arch_and_refuses_one(tmp_path):
    _, directory = hf.saved_hf_model("resnet", tmp_path / "resnet")
    result = invoke("convert", directory, "--arch", "resnet18", "-o", tmp_path / "x.safetensors")
    assert result.exit_code == EXIT_USAGE and "config.json gives the architecture" in result.stderr
    result = invoke("convert", directory, "--num-classes", "3", "-o", tmp_path / "x.safetensors")
    assert result.exit_code == EXIT_USAGE and "id2label" in result.stderr
    result = invoke("convert", directory, "-o", directory / "model.safetensors", "--force")
    assert result.exit_code == EXIT_USAGE and "destroy that input" in result.stderr


def test_a_directory_without_weights_or_with_a_foreign_config_is_named(tmp_path):
    _, directory = hf.saved_hf_model("resnet", tmp_path / "resnet")
    (directory / "config.json").write_text(json.dumps({"model_type": "not-a-model", "auto_map": {"x": "y.Z"}}))
    result = invoke("inspect", directory)
    assert result.exit_code == EXIT_USAGE and "'not-a-model'" in result.stderr and "remote code" in result.stderr
    _, directory = hf.saved_hf_model("resnet", tmp_path / "bare", processor=False)
    (directory / "model.safetensors").unlink()
    result = invoke("inspect", directory)
    assert result.exit_code == EXIT_USAGE and "no weights" in result.stderr and "model.safetensors" in result.stderr


@pytest.mark.parametrize(("processor", "mean", "std"), [
    ({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}, [0.5] * 3, [0.5] * 3),
    # pixels scaled by 1/127.5 then shifted by −1 (EfficientNet's rescale_offset): ((x·2 − 1) − 0) / 1 on [0, 1]
    ({"rescale_factor": 1 / 127.5, "rescale_offset": True, "image_mean": [0.0], "image_std": [1.0]}, [0.5], [0.5]),
    ({"do_rescale": False, "image_mean": [127.5], "image_std": [63.75]}, [0.5], [0.25]),
    ({"do_normalize": False}, [0.0], [1.0]),
])
def test_the_processor_normalisation_is_written_for_inputs_in_zero_to_one(tmp_path, processor, mean, std):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    found = hints(tmp_path, {"model_type": "resnet", "id2label": {"1": "b", "0": "a"}})
    assert found["labels"] == ["a", "b"]
    assert found["mean"] == pytest.approx(mean) and found["std"] == pytest.approx(std)


@pytest.mark.parametrize(("processor", "config", "shape"), [
    ({"crop_size": {"height": 200, "width": 180}, "size": {"shortest_edge": 256}}, {}, (3, 200, 180)),
    ({"do_center_crop": False, "crop_size": 99, "size": {"height": 300, "width": 320}}, {}, (3, 300, 320)),
    ({"size": {"shortest_edge": 384}}, {"num_channels": 1}, (1, 384, 384)),
    (None, {"image_size": 64}, (3, 64, 64)),
    (None, {}, (3, 224, 224)),
])
def test_the_reference_size_comes_from_the_processor(tmp_path, processor, config, shape):
    if processor is not None:
        (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet", **config}))
    assert default_input_shape(tmp_path, read_config(tmp_path)) == shape
