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
from fc2conv.storage.huggingface import check_config, default_input_shape, hints, read_config

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


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_a_directory_of_an_attention_model_is_refused_naming_its_model_type(family, tmp_path):
    """A model that is not a CNN is config.json's model_type, not a trace to fix: no Python-API hint."""
    hf.build_hf_model(family, attention=True).save_pretrained(tmp_path / family)
    (tmp_path / "out").mkdir()
    message = hf.assert_refused_untouched(tmp_path / family, tmp_path / "out", f"{tmp_path / family}/config.json",
                                          f"model_type '{family}'")
    assert "leaf_modules" not in message and "--input-shape" not in message
    assert family != "vit" or re.search(ATTENTION, message), message


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


# -- hostile save_pretrained directories: a refusal names the file and the field (never a flag nobody passed, never a
# Python-API hint), writes nothing and leaves the directory as it was


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Save_pretrained directories that tests copy and edit: a ResNet with its processor, a ConvNeXt without."""
    root = tmp_path_factory.mktemp("hf")
    return {family: hf.saved_hf_model(family, root / family, processor=family == "resnet")[1]
            for family in ("resnet", "convnext")}


@pytest.fixture
def out(tmp_path):
    (tmp_path / "out").mkdir()
    return tmp_path / "out"


def _labelled(bad, index: int = 2) -> dict:
    """id2label of CLASSES with class `index` named `bad`."""
    return {str(k): bad if k == index else label for k, label in enumerate(hf.CLASSES)}


CONFIG_FIELDS = [  # every field fc2conv reads from config.json, each wrong in its type, range, size or text
    ("image_size", 1_000_000), ("image_size", 0), ("image_size", [32, 5000]), ("image_size", "32"),
    ("image_size", True), ("image_size", [32, 32, 3]),
    ("num_channels", 0), ("num_channels", 10**6), ("num_channels", 3.0),
    ("num_labels", 0), ("num_labels", 7), ("num_labels", "5"),
    ("id2label", _labelled("cat\r\nforged,row")), ("id2label", _labelled("\x1b[31mred")),
    ("id2label", _labelled("b\u202eackwards")), ("id2label", _labelled("x" * 1001)), ("id2label", _labelled(3)),
    ("id2label", {"1": "a", "2": "b"}), ("id2label", {"0": "a", "00": "b"}), ("id2label", ["cat"]), ("id2label", {}),
    ("label2id", {"cat": "zero"}), ("label2id", ["cat"]),
    ("architectures", "ResNetForImageClassification"), ("architectures", ["Res\x1b[2JNet"]), ("architectures", [3]),
    ("model_type", "res\nnet"), ("model_type", "x" * 100),
]


@pytest.mark.parametrize(("field", "value"), CONFIG_FIELDS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(CONFIG_FIELDS)])
def test_a_config_field_out_of_range_is_refused_naming_it(saved, tmp_path, out, field, value):
    directory = hf.edited(saved["resnet"], tmp_path / "m", changes={field: value})
    message = hf.assert_refused_untouched(directory, out, f"{directory}/config.json: field {field}")
    assert "--input-shape" not in message


PROCESSOR_FIELDS = [  # every field fc2conv reads from preprocessor_config.json, likewise
    ({"crop_size": 1_000_000}, "field crop_size"), ({"crop_size": {"height": 32}}, "field crop_size"),
    ({"crop_size": {"height": -1, "width": 32}}, "field crop_size"), ({"crop_size": "32"}, "field crop_size"),
    ({"size": {"shortest_edge": 10**9}}, "field size"), ({"size": [0, 0]}, "field size"),
    ({"image_mean": [0.5, 0.5]}, "field image_mean"), ({"image_mean": ["a"]}, "field image_mean"),
    ({"image_std": [0, 1, 1]}, "field image_std"), ({"image_std": []}, "field image_std"),
    ({"rescale_factor": 0}, "field rescale_factor"), ({"rescale_factor": "1/255"}, "field rescale_factor"),
    ({"image_mean": [1e300], "rescale_factor": 1e-300}, "image_mean, image_std and rescale_factor"),
    ({"do_normalize": "false"}, "field do_normalize"), ({"do_center_crop": 1}, "field do_center_crop"),
    ({"do_rescale": None}, "field do_rescale"),
]


@pytest.mark.parametrize(("changes", "fragment"), PROCESSOR_FIELDS)
def test_a_processor_field_out_of_range_is_refused_naming_it(saved, tmp_path, out, changes, fragment):
    directory = hf.edited(saved["resnet"], tmp_path / "m", "preprocessor_config.json", changes)
    hf.assert_refused_untouched(directory, out, f"{directory}/preprocessor_config.json: ", fragment)


UNREADABLE = [  # files that are not the JSON objects they should be, or too large to be one
    ("config.json", "[1, 2]", "is not a JSON object"),
    ("config.json", '{"model_type": "resnet", "image_size": NaN}', "NaN is not a JSON number"),
    ("config.json", '{"model_type": "resnet", "image_size": 1e400}', "too large for a number"),
    ("config.json", '{"model_type": "resnet", "image_size": ' + "9" * 5000 + "}", "not readable JSON"),
    ("config.json", "[" * 100_000, "not readable JSON"),
    ("config.json", b'{"model_type": "\xff"}', "not readable JSON"),
    ("config.json", '{"model_type": "resnet", "x": "' + "x" * 17 * 2**20 + '"}', "MiB"),
    ("preprocessor_config.json", '{"image_std": [Infinity, 1, 1]}', "Infinity is not a JSON number"),
]


@pytest.mark.parametrize(("file", "text", "fragment"), UNREADABLE, ids=[f"{f}-{i}" for i, (f, _, _) in
                                                                     enumerate(UNREADABLE)])
def test_a_file_that_is_no_json_object_is_refused_naming_it(saved, tmp_path, out, file, text, fragment):
    directory = hf.edited(saved["resnet"], tmp_path / "m", file, text=text)
    hf.assert_refused_untouched(directory, out, f"{directory}/{file}", fragment)


def _config_of(family: str, attention: bool = False) -> dict:
    return json.loads(hf.config(family, attention).to_json_string())


MISFITS = [  # config.json describes another model than the weights hold: (its fields, what the refusal names)
    ("resnet", {"model_type": "vit"}, ["model_type 'vit'", "another model's weights"]),  # the example
    ("resnet", _config_of("convnext"), ["model_type 'convnext'", "another model's weights"]),
    ("resnet", _config_of("mobilenet_v2"), ["model_type 'mobilenet_v2'", "another model's weights"]),
    ("resnet", _config_of("swin", attention=True), ["model_type 'swin'", "another model's weights"]),
    ("resnet", {"hidden_sizes": [8, 16, 24, 48]}, ["does not fit", "hidden_sizes"]),
    ("resnet", {"depths": [1, 1, 1, 2]}, ["does not fit", "depths"]),
    ("resnet", {"id2label": {"0": "a", "1": "b", "2": "c"}, "label2id": {}},
     ["field id2label (or num_labels) gives 3 classes", "has 5 outputs"]),
    ("convnext", {"num_channels": 1}, ["field num_channels is 1", "takes 3 channels"]),
    ("resnet", {"hidden_sizes": "abc"}, ["field 'hidden_sizes'"]),
    ("resnet", {"hidden_sizes": [8, 16, 24, 10**6]}, ["hidden_sizes", "GiB"]),  # refused before allocating
    ("resnet", {"model_type": "bert"}, ["no image classifier for model_type 'bert'"]),
]


@pytest.mark.parametrize(("family", "changes", "fragments", "command"),
                         [(*misfit, "convert") for misfit in MISFITS] + [(*MISFITS[0], "inspect")],
                         ids=[f"misfit{i}" for i in range(len(MISFITS))] + ["inspect"])
def test_a_config_that_does_not_describe_the_weights_is_refused_naming_its_field(saved, tmp_path, out, family,
                                                                                 changes, fragments, command):
    directory = hf.edited(saved[family], tmp_path / "m", changes=changes)
    message = hf.assert_refused_untouched(directory, out, f"{directory}/config.json", *fragments, command=command)
    assert "leaf_modules" not in message and "--input-shape" not in message


SHAPES = [  # an input shape read from the directory's files on which the model does not run
    ("config.json", {"image_size": 2}, "config.json: field image_size"),
    ("preprocessor_config.json", {"crop_size": {"height": 2, "width": 2}}, "preprocessor_config.json: field crop_size"),
    ("preprocessor_config.json", {"do_center_crop": False, "size": {"shortest_edge": 3}},
     "preprocessor_config.json: field size"),
]


@pytest.mark.parametrize(("file", "changes", "fragment"), SHAPES)
def test_an_input_shape_from_the_files_is_blamed_on_its_field_not_on_the_flag(saved, tmp_path, out, file, changes,
                                                                              fragment):
    directory = hf.edited(saved["convnext"], tmp_path / "m", file, changes)
    message = hf.assert_refused_untouched(directory, out, f"{directory}/{fragment} gives the input shape")
    assert "(--input-shape" not in message  # the flag is offered as the way out, not blamed
    # Given, the flag is what the refusal names.
    hf.assert_refused_untouched(directory, out, "--input-shape 3,2,2", args=("--input-shape", "3,2,2"))


def test_a_config_from_to_dict_is_checked_as_its_json(tmp_path):
    """`config.to_dict()` keys id2label by integers, its JSON by strings: both are the same config to fc2conv."""
    config = hf.config("resnet").to_dict()
    assert hints(tmp_path, check_config(config, source="x"))["labels"] == list(hf.CLASSES)
    with pytest.raises(ConversionError, match=r"x: field id2label must number"):
        check_config({**config, "id2label": {0: "a", "0": "b"}}, source="x")
