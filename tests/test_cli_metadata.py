"""What `fc2conv convert` puts into the ONNX metadata besides the geometry: class labels and input normalisation, from
the flags or, when the flags do not give them, from the `fc2conv.*` keys a .safetensors checkpoint carries."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import invoke

from fc2conv.cli import EXIT_OK, EXIT_USAGE
from fc2conv.runtime import DenseModel
from fc2conv.storage.checkpoint import save_state_dict
from models.small_cnn import SmallCNN

SMALL = ["--model-def", "models/small_cnn.py:SmallCNN", "--input-shape", "3,32,32"]
LABELS = [f"class{k}" for k in range(10)]


def _checkpoint(tmp_path, metadata: dict[str, str] | None):
    torch.manual_seed(0)
    path = tmp_path / "small.safetensors"
    save_state_dict(SmallCNN().state_dict(), path, metadata=metadata)
    return path


def _carried(mean="[0.5]", std="[0.25]") -> dict[str, str]:
    return {"fc2conv.labels": json.dumps(LABELS), "fc2conv.mean": mean, "fc2conv.std": std}


def test_convert_takes_labels_and_normalisation_from_the_checkpoint(tmp_path):
    checkpoint = _checkpoint(tmp_path, _carried())
    done = invoke("convert", checkpoint, *SMALL, "--onnx", tmp_path / "small.onnx")
    assert done.exit_code == EXIT_OK, done.output
    metadata = DenseModel(tmp_path / "small.onnx").metadata
    assert metadata["labels"] == LABELS and metadata["mean"] == [0.5] and metadata["std"] == [0.25]


def test_flags_replace_what_the_checkpoint_carries(tmp_path):
    checkpoint = _checkpoint(tmp_path, _carried())
    done = invoke("convert", checkpoint, *SMALL, "--onnx", tmp_path / "small.onnx", "--labels",
                  ",".join("abcdefghij"), "--mean", "0.1,0.2,0.3", "--std", "0.5,0.5,0.5")
    assert done.exit_code == EXIT_OK, done.output
    metadata = DenseModel(tmp_path / "small.onnx").metadata
    assert metadata["labels"] == list("abcdefghij")
    assert metadata["mean"] == pytest.approx([0.1, 0.2, 0.3]) and metadata["std"] == [0.5, 0.5, 0.5]


def test_mean_alone_replaces_the_carried_pair(tmp_path):
    checkpoint = _checkpoint(tmp_path, _carried())
    done = invoke("convert", checkpoint, *SMALL, "--onnx", tmp_path / "small.onnx", "--mean", "0.2")
    assert done.exit_code == EXIT_OK, done.output
    metadata = DenseModel(tmp_path / "small.onnx").metadata
    assert metadata["mean"] == [0.2] and "std" not in metadata


def test_a_checkpoint_without_them_leaves_them_out(tmp_path):
    checkpoint = _checkpoint(tmp_path, None)
    done = invoke("convert", checkpoint, *SMALL, "--onnx", tmp_path / "small.onnx")
    assert done.exit_code == EXIT_OK, done.output
    assert not {"labels", "mean", "std"} & set(DenseModel(tmp_path / "small.onnx").metadata)


@pytest.mark.parametrize(("carried", "field"), [
    (_carried(std="[0.0]"), "fc2conv.std must be positive"),
    (_carried(mean="[1, 2]"), "fc2conv.mean must be 1 or 3 numbers"),
    (_carried(mean="not json"), "fc2conv.mean is not valid JSON"),
    ({"fc2conv.labels": '"a,b"'}, "fc2conv.labels must be a list of strings"),
])
def test_bad_carried_metadata_is_refused_naming_the_file_and_field(tmp_path, carried, field):
    checkpoint = _checkpoint(tmp_path, carried)
    done = invoke("convert", checkpoint, *SMALL, "--onnx", tmp_path / "small.onnx")
    assert done.exit_code == EXIT_USAGE
    assert str(checkpoint) in done.output and field in done.output
    assert not (tmp_path / "small.onnx").exists()


def test_the_bundled_digits_checkpoint_carries_its_labels_and_unit_range():
    from fc2conv.metadata import decode_hints
    from fc2conv.storage.checkpoint import read_metadata
    from models.digits_data import LABELS as DIGIT_LABELS

    carried = decode_hints(read_metadata("models/digits_cnn.safetensors"), source="digits", channels=1)
    assert carried == {"labels": DIGIT_LABELS, "mean": [0.0], "std": [1.0]}


@pytest.mark.parametrize(("num_classes", "labelled"), [(None, True), (10, False)])
def test_a_torchvision_architecture_brings_its_weights_names_and_normalisation(tmp_path, num_classes, labelled):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(**({"num_classes": num_classes} if num_classes else {}))
    checkpoint = tmp_path / "mnv3.pth"
    torch.save(model.state_dict(), checkpoint)
    extra = ["--num-classes", str(num_classes)] if num_classes else []
    done = invoke("convert", checkpoint, "--arch", "mobilenet_v3_small", *extra, "--onnx", tmp_path / "m.onnx")
    assert done.exit_code == EXIT_OK, done.output
    metadata = DenseModel(tmp_path / "m.onnx").metadata
    weights = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    assert metadata["mean"] == pytest.approx([0.485, 0.456, 0.406]) and metadata["std"] == pytest.approx(
        [0.229, 0.224, 0.225])
    source = "torchvision's MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    if labelled:  # only as many names as classes: a resized head keeps class indices
        assert metadata["labels"] == weights.meta["categories"]
        assert f"labels: 1000 from {source}; mean" in done.output
    else:
        assert "labels" not in metadata and "labels: none (class indices)" in done.output
    assert f"std [0.229, 0.224, 0.225] from {source}" in done.output
    flagged = invoke("convert", checkpoint, "--arch", "mobilenet_v3_small", *extra, "--onnx", tmp_path / "f.onnx",
                     "--labels", ",".join(f"k{i}" for i in range(num_classes or 1000)), "--mean", "0.5")
    assert flagged.exit_code == EXIT_OK and DenseModel(tmp_path / "f.onnx").metadata["mean"] == [0.5]
    assert "from --labels" in flagged.output and "from --mean/--std" in flagged.output
