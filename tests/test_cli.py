"""The `fc2conv` command: inspect, convert, verify and run; formats in, refusals, exit codes, golden output.

Golden files in tests/golden/ hold the human output with temporary paths and error magnitudes masked;
regenerate them with `FC2CONV_REGEN_GOLDEN=1 pytest tests/test_cli.py`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_clean_refusal, invoke
from PIL import Image
from safetensors.torch import save_file

from fc2conv import ConversionError
from fc2conv.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from models.small_cnn import SmallCNN

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
MODEL_DEF = "models/small_cnn.py:SmallCNN"
SMALL = ["--model-def", MODEL_DEF, "--input-shape", "3,32,32"]
LABELS = "plane,car,bird,cat,deer,dog,frog,horse,ship,truck"
COMMANDS = ["inspect", "convert", "verify", "run"]



def check_golden(name: str, text: str, tmp: Path) -> None:
    masked = re.sub(r"\d\.\d\de[-+]\d\d", "<err>", text.replace(str(tmp), "<tmp>"))
    path = GOLDEN / name
    if os.environ.get("FC2CONV_REGEN_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(masked, encoding="utf-8")
    assert masked == path.read_text(encoding="utf-8"), f"{path} differs; regenerate with FC2CONV_REGEN_GOLDEN=1"


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # --model-def paths are relative to the repository, as in the README


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(SmallCNN().state_dict(), folder / "small.pt")
    torch.manual_seed(1)
    torch.save(SmallCNN().state_dict(), folder / "other.pt")
    return folder


@pytest.fixture(scope="module")
def converted(weights, tmp_path_factory):
    """One full conversion (all outputs), shared by the tests that read its outputs."""
    folder = tmp_path_factory.mktemp("converted")
    os.chdir(ROOT)
    result = invoke("convert", weights / "small.pt", *SMALL, "-o", folder / "small.pt2", "-o",
                    folder / "small.safetensors", "--onnx", folder / "small.onnx", "--labels", LABELS)
    assert result.exit_code == EXIT_OK, result.stderr
    return folder, result


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# --------------------------------------------------------------------------------------------- help & usage


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_shows_examples(command):
    result = invoke(*([command] if command else []), "--help")
    assert result.exit_code == EXIT_OK
    assert "Example" in result.stdout and "fc2conv " in result.stdout


@pytest.mark.parametrize("args", [["convert"], ["inspect", "x.pt", "--bogus"], ["run", "m.onnx"], ["frobnicate"],
                                  ["inspect", "x.pt", "--num-classes", "0", "--arch", "resnet18"]])
def test_usage_errors_exit_2(args):
    assert invoke(*args).exit_code == EXIT_USAGE


# ----------------------------------------------------------------------------------------------- inspect


def test_inspect_prints_the_plan(weights):
    result = invoke("inspect", weights / "small.pt", *SMALL)
    assert result.exit_code == EXIT_OK, result.stderr
    check_golden("inspect_small_cnn.txt", result.stdout, weights)


def test_inspect_json(weights):
    result = invoke("inspect", weights / "small.pt", *SMALL, "--json")
    data = json.loads(result.stdout)
    assert [d["layer"] for d in data["plan"]] == ["fc1", "fc2"]
    assert data["plan"][0]["kernel"] == [8, 8] and data["geometry"]["stride"] == [4, 4]
    assert data["recipe"]["model_def"] == MODEL_DEF
    assert data["densities"] == [2, 4]  # the stride-4 grid of SmallCNN, as `--density` accepts it


def test_inspect_torchvision_arch_with_num_classes(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=7).state_dict(), tmp_path / "r18.pth")
    result = invoke("inspect", tmp_path / "r18.pth", "--arch", "resnet18", "--num-classes", "7")
    assert result.exit_code == EXIT_OK, result.stderr
    assert "Linear(512, 7)" in result.stdout and "every 32×32 pixels" in result.stdout
    assert "--density allows 2, 4, 8, 16, 32" in result.stdout


def formats(folder: Path) -> dict[str, Path]:
    """The same SmallCNN weights in every supported checkpoint layout."""
    state = SmallCNN().state_dict()
    made = {}
    for name, obj in {
        "bare.pt": state, "bare.pth": state, "bare.bin": state,
        "nested.pt": {"model_state_dict": state, "epoch": 7, "optimizer": {"lr": 0.1}},
        "ema.pth": {"ema": {f"module.{k}": v for k, v in state.items()}, "step": 10},
        "compiled.pt": {"state_dict": {f"_orig_mod.{k}": v for k, v in state.items()}},
    }.items():
        torch.save(obj, folder / name)
        made[name] = folder / name
    save_file({f"module.{k}": v for k, v in state.items()}, folder / "ddp.safetensors")
    made["ddp.safetensors"] = folder / "ddp.safetensors"
    return made


@pytest.mark.parametrize("name", ["bare.pt", "bare.pth", "bare.bin", "nested.pt", "ema.pth", "compiled.pt",
                                  "ddp.safetensors"])
def test_every_checkpoint_format(tmp_path, name):
    path = formats(tmp_path)[name]
    result = invoke("inspect", path, *SMALL, "--quiet")
    assert (result.exit_code, result.stdout, result.stderr) == (EXIT_OK, "", "")


# ----------------------------------------------------------------------------------------------- convert


def test_convert_writes_every_output(converted, weights):
    folder, result = converted
    check_golden("convert_small_cnn.txt", result.stdout.replace(str(folder), "<out>"), weights)
    assert sorted(p.name for p in folder.iterdir()) == ["small.onnx", "small.pt2", "small.safetensors"]


def test_convert_json_and_quiet(weights, tmp_path):
    result = invoke("convert", weights / "small.pt", *SMALL, "-o", tmp_path / "a.safetensors", "--json")
    data = json.loads(result.stdout)
    assert result.exit_code == EXIT_OK and data["ok"] is True
    assert [c["name"] for c in data["verification"]["checks"]] == ["reference", "dense larger"]
    assert data["outputs"] == [str(tmp_path / "a.safetensors")]
    quiet = invoke("convert", weights / "small.pt", *SMALL, "-o", tmp_path / "b.pt", "-q")
    assert (quiet.exit_code, quiet.stdout, quiet.stderr) == (EXIT_OK, "", "")
    assert (tmp_path / "b.pt").is_file()


def test_failed_verification_exits_1_and_writes_nothing(weights, tmp_path, monkeypatch):
    from fc2conv.conversion import verification

    monkeypatch.setitem(verification.TOLERANCE, "float32", -1.0)  # every check fails
    result = invoke("convert", weights / "small.pt", *SMALL, "-o", tmp_path / "a.safetensors")
    assert result.exit_code == EXIT_FAILED
    assert "FAILED" in result.stdout and "nothing was written" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_outputs_are_written_all_or_none(weights, tmp_path, monkeypatch):
    """The ONNX export, written last, fails: the .safetensors written before it must not appear either,
    and with --force the files already there stay as they were."""
    from fc2conv.onnx import export

    def failing_export(*args, **kwargs):
        raise ConversionError("the torchscript ONNX exporter failed (simulated)")

    monkeypatch.setattr(export, "export_onnx", failing_export)
    targets = ["-o", tmp_path / "a.safetensors", "-o", tmp_path / "a.pt", "--onnx", tmp_path / "a.onnx"]
    result = invoke("convert", weights / "small.pt", *SMALL, *targets)
    assert result.exit_code == EXIT_USAGE and "simulated" in result.stderr
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a.safetensors").write_text("old")
    result = invoke("convert", weights / "small.pt", *SMALL, *targets, "--force")
    assert result.exit_code == EXIT_USAGE
    assert [f.name for f in tmp_path.iterdir()] == ["a.safetensors"]
    assert (tmp_path / "a.safetensors").read_text() == "old"


def test_force_replaces_an_existing_output(weights, tmp_path):
    target = tmp_path / "a.safetensors"
    target.write_text("old")
    refused = invoke("convert", weights / "small.pt", *SMALL, "-o", target)
    assert refused.exit_code == EXIT_USAGE and "already exists; pass --force" in refused.stderr
    assert target.read_text() == "old"
    assert invoke("convert", weights / "small.pt", *SMALL, "-o", target, "--force", "-q").exit_code == EXIT_OK
    assert target.read_bytes() != b"old"


def test_trust_pickle_loads_a_whole_module(tmp_path):
    torch.save(SmallCNN(), tmp_path / "whole.pt")
    refused = invoke("inspect", tmp_path / "whole.pt", *SMALL)
    assert refused.exit_code == EXIT_USAGE
    assert "SmallCNN" in refused.stderr and "--trust-pickle (trust_pickle=True) only if you trust" in refused.stderr
    assert invoke("inspect", tmp_path / "whole.pt", *SMALL, "--trust-pickle", "-q").exit_code == EXIT_OK


def unwritable_dir() -> str:
    return "/proc" if os.geteuid() == 0 else "/"


REFUSALS = [
    (["convert", "{ck}", "-o", "{tmp}/a.pt2"], "--arch NAME (a torchvision model, or timm:NAME) or --model-def"),
    (["convert", "{ck}", "-o", "{tmp}/a.pt2"], "a Hugging Face save_pretrained directory given as the checkpoint"),
    (["inspect", "{ck}"], "--arch NAME"),
    (["convert", "{ck}", "--model-def", MODEL_DEF, "--input-shape", "3,32,32,32,32", "-o", "{tmp}/a.pt2"],
     "--input-shape must"),
    (["convert", "{ck}", "--model-def", MODEL_DEF, "--input-shape", "3,32", "-o", "{tmp}/a.pt2"],
     "it seems to expect --input-shape 3,32,32"),
    (["inspect", "{ck}", "--model-def", MODEL_DEF, "--input-shape", "three"], "--input-shape must be C,H,W"),
    (["inspect", "{ck}", "--model-def", MODEL_DEF, "--input-shape", "3,0,32"], "--input-shape must be C,H,W"),
    (["inspect", "{ck}", "--model-def", MODEL_DEF, "--input-shape", "3,16,16"], "does not run on input_shape"),
    (["inspect", "{ck}", "--arch", "resnet18"], "does not fit this ResNet"),
    (["inspect", "{ck}", "--arch", "resnet18"], "missing from the file (102)"),
    (["inspect", "{ck}", "--arch", "resnet18"], "unexpected in the file (8)"),
    (["inspect", "{ck}", *SMALL, "--num-classes", "7"], "fc2.weight: model (7, 128), file (10, 128)"),
    (["inspect", "{ck}", *SMALL, "--num-classes", "7"], "the file's head has 10 outputs; pass --num-classes 10"),
    (["inspect", "{ck}", "--arch", "resnet_18"], "not a torchvision classification model"),
    (["inspect", "{ck}", *SMALL, "--mode", "sparse"], "--mode must be one of dense, global, cam"),
    (["inspect", "{ck}", *SMALL, "--mode", "cam"], "cam"),
    (["inspect", "{ck}", "--model-def", "models/small_cnn.py"], "must be FILE.py:FACTORY"),
    (["inspect", "{ck}", "--model-def", "models/small_cnn.py:Nope"], "defines no callable 'Nope'"),
    (["inspect", "{ck}", "--model-def", "models/nothere.py:F"], "is not a file"),
    (["inspect", "{tmp}/missing.pt", *SMALL], "no such file"),
    (["inspect", "{tmp}/empty.pt", *SMALL], "is empty"),
    (["inspect", "{tmp}/scripted.pt", *SMALL], "TorchScript archive"),
    (["inspect", "{tmp}", *SMALL], "is a directory"),
    (["convert", "{ck}", *SMALL], "give at least one output"),
    (["convert", "{ck}", *SMALL, "-o", "{tmp}/a.h5"], "unknown output format"),
    (["convert", "{ck}", *SMALL, "--onnx", "{tmp}/a.pt2"], "name the file .onnx"),
    (["convert", "{ck}", *SMALL, "-o", "{tmp}/a.pt2", "-o", "{tmp}/a.pt2"], "a.pt2 and -o #2 "),
    (["convert", "{ck}", *SMALL, "-o", "{tmp}/existing.pt2"], "already exists; pass --force"),
    (["convert", "{ck}", *SMALL, "-o", "{tmp}/folder.pt2"], "is a directory"),
    (["convert", "{ck}", *SMALL, "-o", "{tmp}/no/such/dir/a.pt2"], "does not exist"),
    (["convert", "{ck}", *SMALL, "-o", "{unwritable}/a.pt2"], "cannot write"),
    (["convert", "{ck}", *SMALL, "-o", "{tmp}/a.pt2", "--mean", "0.5,x"], "--mean must be comma-separated"),
    (["verify", "{ck}", "{ck}"], "holds no fc2conv recipe"),
]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated; TorchScript files still exist
@pytest.mark.parametrize(("args", "message"), REFUSALS, ids=[f"{i}-{r[1][:30]}" for i, r in enumerate(REFUSALS)])
def test_refusals_exit_2_with_a_message_and_write_nothing(weights, tmp_path, args, message):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "existing.pt2").write_text("keep me")
    (tmp_path / "folder.pt2").mkdir()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.pt")
    before = sorted(tmp_path.iterdir())
    fields = {"ck": weights / "small.pt", "tmp": tmp_path, "unwritable": unwritable_dir()}
    result = invoke(*(a.format(**fields) for a in args))
    assert result.exit_code == EXIT_USAGE, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr and "Traceback" not in result.stderr
    assert sorted(tmp_path.iterdir()) == before and (tmp_path / "existing.pt2").read_text() == "keep me"


# ------------------------------------------------------------------------------------------------ verify


@pytest.mark.parametrize("artifact", ["small.pt2", "small.safetensors"])
def test_verify_an_artifact(converted, weights, artifact):
    folder, _ = converted
    result = invoke("verify", weights / "small.pt", folder / artifact, "--model-def", MODEL_DEF, "--json")
    data = json.loads(result.stdout)
    assert result.exit_code == EXIT_OK and data["ok"] is True
    assert all(c["passed"] for c in data["verification"]["checks"])


def test_verify_needs_the_model_def_explicitly(converted, weights):
    folder, _ = converted
    result = invoke("verify", weights / "small.pt", folder / "small.safetensors")
    assert result.exit_code == EXIT_USAGE and f"--model-def {MODEL_DEF}" in result.stderr


def test_verify_exits_1_for_othersaved_weights(converted, weights):
    folder, _ = converted
    result = invoke("verify", weights / "other.pt", folder / "small.pt2", "--model-def", MODEL_DEF)
    assert result.exit_code == EXIT_FAILED
    assert "FAILED" in result.stdout and "does not match" in result.stderr


# --------------------------------------------------------------------------------------------------- run


def test_run_lists_classes_and_writes_a_heatmap(converted, image, tmp_path):
    folder, _ = converted
    result = invoke("run", folder / "small.onnx", image, "--topk", "3", "--class", "cat", "--heatmap",
                    tmp_path / "heat.png")
    assert result.exit_code == EXIT_OK, result.stderr
    assert "10 classes, a 5×9 map of windows" in result.stdout
    assert len([line for line in result.stdout.splitlines() if re.match(r"[123] ", line)]) == 3
    assert Image.open(tmp_path / "heat.png").size == (64, 48)
    again = invoke("run", folder / "small.onnx", image, "--heatmap", tmp_path / "heat.png")
    assert again.exit_code == EXIT_USAGE and "already exists" in again.stderr


def test_run_json(converted, image):
    folder, _ = converted
    data = json.loads(invoke("run", folder / "small.onnx", image, "--topk", "10", "--json").stdout)
    assert sorted(p["label"] for p in data["top_classes"]) == sorted(LABELS.split(","))
    assert data["result"]["map_size"] == [5, 9] and data["heatmap"] is None
    best = data["top_classes"][0]
    assert best["box"] == [4 * best["cell"][0], 4 * best["cell"][1], 4 * best["cell"][0] + 32, 4 * best["cell"][1] + 32]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--class", "unicorn", "--heatmap", "{tmp}/h.png"], "not a class of this model"),
        (["--class", "10", "--heatmap", "{tmp}/h.png"], "out of range"),
        (["--image", "{tmp}/small.png"], "smaller than the model's 32×32 window"),
        (["--image", "{tmp}/notes.txt"], "cannot read it as an image"),
        (["--model", "{tmp}/notes.txt"], "cannot load it as an ONNX model"),
    ],
)
def test_run_refusals(converted, image, tmp_path, args, message):
    folder, _ = converted
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "notes.txt").write_text("hello")
    model, picture, extra = folder / "small.onnx", image, []
    for flag, value in zip(args[::2], args[1::2], strict=True):
        value = value.format(tmp=tmp_path)
        if flag == "--image":
            picture = value
        elif flag == "--model":
            model = value
        else:
            extra += [flag, value]
    result = invoke("run", model, picture, *extra)
    assert result.exit_code == EXIT_USAGE and message in result.stderr


def test_run_works_without_torch(converted, image):
    """`fc2conv run` imports nothing from torch: it runs with torch made unimportable."""
    folder, _ = converted
    code = ("import sys; sys.modules['torch'] = None; sys.argv = ['fc2conv'] + sys.argv[1:]; "
            "from fc2conv.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code, "run", str(folder / "small.onnx"), str(image), "--json"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == EXIT_OK, done.stderr
    assert len(json.loads(done.stdout)["top_classes"]) == 5


def test_a_forgotten_input_shape_is_a_short_message(tmp_path):
    result = invoke("convert", "models/digits_cnn.safetensors", "--model-def", "models/digits_cnn.py:DigitsCNN",
                    "-o", tmp_path / "never.pt2")
    assert_clean_refusal(result, "--input-shape", "input_shape=(3, 224, 224)")
    assert list(tmp_path.iterdir()) == []
