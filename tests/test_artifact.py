"""fc2conv.storage.artifact and fc2conv.storage.recipe: converted models saved, loaded back (also in a fresh
process), refused; no pickle inside a `.pt2` ever runs unless the file is trusted."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import PickledCode, assert_clean_refusal, assert_close, cli_process, randn, same_threads_env

import fc2conv
from fc2conv.errors import ConversionError
from fc2conv.storage.artifact import ExportedModule, export_program, load, read_recipe, save
from fc2conv.storage.checkpoint import save_state_dict
from fc2conv.storage.recipe import Recipe, default_input_shape, parse_input_shape

ROOT = Path(__file__).resolve().parents[1]
SMALL_CNN = f"{ROOT / 'models' / 'small_cnn.py'}:SmallCNN"
# A global-pool head, for the global and cam modes SmallCNN (flatten head) does not have.
POOLED = """
from torch import nn

def pooled(num_classes=4):
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))
"""


@pytest.fixture(scope="module")
def small_recipe():
    recipe = Recipe(model_def=SMALL_CNN, input_shape=(3, 32, 32))
    torch.manual_seed(0)
    original = recipe.build()
    return recipe, original, recipe.convert(original)


@pytest.fixture(scope="module")
def saved_artifacts(small_recipe, tmp_path_factory):
    recipe, _, converted = small_recipe
    folder = tmp_path_factory.mktemp("artifacts")
    for name in ("small.pt2", "small.safetensors", "small.pt"):
        save(converted, folder / name, recipe=recipe)
    return folder


SIZES = [(1, 32, 32), (2, 32, 32), (3, 40, 36), (1, 64, 96)]


def test_pt2_loads_with_plain_torch_in_a_fresh_process(small_recipe, saved_artifacts, tmp_path):
    """No fc2conv import, no pickle of code: torch.export.load alone runs it at any batch and size ≥ 32."""
    _, _, converted = small_recipe
    script = textwrap.dedent(f"""
        import sys, torch
        program = torch.export.load({str(saved_artifacts / 'small.pt2')!r})
        outputs = [program.module()(torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(h)))
                   for n, h, w in {SIZES!r}]
        torch.save(outputs, {str(tmp_path / 'out.pt')!r})
        assert not any(m.startswith("fc2conv") for m in sys.modules), "fc2conv was imported"
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    outputs = torch.load(tmp_path / "out.pt", weights_only=True)
    for (n, h, w), out in zip(SIZES, outputs, strict=True):
        x = torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.no_grad():
            assert_close(out, converted(x))


def test_state_dict_artifacts_load_in_a_fresh_process(small_recipe, saved_artifacts, tmp_path):
    _, _, converted = small_recipe
    script = textwrap.dedent(f"""
        import torch, fc2conv.storage.artifact
        assert torch.get_num_threads() == {torch.get_num_threads()}, "not the test process's thread count"
        x = torch.randn(2, 3, 44, 52, generator=torch.Generator().manual_seed(1))
        outputs = []
        for name in ("small.safetensors", "small.pt"):
            model = fc2conv.storage.artifact.load({str(saved_artifacts)!r} + "/" + name, model_def={SMALL_CNN!r})
            assert model.fc2conv.input_shape == (3, 32, 32) and model.fc2conv.mode == "dense"
            with torch.no_grad():
                outputs.append(model(x))
        torch.save(outputs, {str(tmp_path / 'out.pt')!r})
    """)
    # As many torch threads as this process (xdist workers run one): the same reduction order, so the same bits.
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=same_threads_env())
    x = torch.randn(2, 3, 44, 52, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = converted(x)
    for out in torch.load(tmp_path / "out.pt", weights_only=True):
        assert torch.equal(out, expected)  # the same weights, the same graph and the same threads: bit for bit


@pytest.mark.parametrize("name", ["small.pt2", "small.safetensors", "small.pt"])
def test_recipe_is_saved_with_every_artifact(small_recipe, saved_artifacts, name):
    assert read_recipe(saved_artifacts / name) == small_recipe[0]


def test_loaded_pt2_verifies_against_the_original(small_recipe, saved_artifacts):
    _, original, converted = small_recipe
    loaded = load(saved_artifacts / "small.pt2")
    assert isinstance(loaded, ExportedModule)
    loaded.fc2conv = converted.fc2conv
    report = fc2conv.verify(original, loaded, sizes=[(40, 48)])
    assert report.ok, str(report)


def test_pt2_refuses_inputs_smaller_than_the_reference(saved_artifacts):
    program = load(saved_artifacts / "small.pt2")
    with pytest.raises(Exception, match=">= 32"):
        program(randn(1, 3, 28, 32))


def test_model_def_artifacts_never_run_code_unless_asked(tmp_path):
    marker = tmp_path / "ran"
    definition = tmp_path / "net.py"
    definition.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n{POOLED}")
    recipe = Recipe(model_def=f"{definition}:pooled", input_shape=(3, 16, 16))
    converted = recipe.convert(recipe.build())
    save(converted, tmp_path / "net.safetensors", recipe=recipe)
    marker.unlink()
    with pytest.raises(ConversionError, match=r"pass it explicitly: --model-def / model_def="):
        load(tmp_path / "net.safetensors")
    assert not marker.exists()
    again = load(tmp_path / "net.safetensors", model_def=f"{definition}:pooled")
    x = randn(2, 3, 24, 20)
    with torch.no_grad():
        assert torch.equal(again(x), converted(x))


@pytest.mark.parametrize("mode", ["dense", "global", "cam"])
def test_every_mode_exports_and_round_trips(tmp_path, mode):
    definition = tmp_path / "pooled.py"
    definition.write_text(POOLED)
    recipe = Recipe(model_def=f"{definition}:pooled", input_shape=(3, 16, 16), mode=mode)
    torch.manual_seed(0)
    original = recipe.build()
    converted = recipe.convert(original)
    save(converted, tmp_path / "m.pt2", recipe=recipe)
    save(converted, tmp_path / "m.safetensors", recipe=recipe)
    from_program = load(tmp_path / "m.pt2")
    from_weights = load(tmp_path / "m.safetensors", model_def=f"{definition}:pooled")
    for shape in [(1, 3, 16, 16), (2, 3, 33, 21)]:
        x = randn(*shape)
        with torch.no_grad():
            expected = converted(x)
            assert_close(from_program(x), expected)
            assert torch.equal(from_weights(x), expected)


def test_existing_files_are_kept_without_force(small_recipe, saved_artifacts):
    recipe, _, converted = small_recipe
    for name in ("small.pt2", "small.safetensors"):
        before = (saved_artifacts / name).read_bytes()
        with pytest.raises(ConversionError, match="already exists; pass --force"):
            save(converted, saved_artifacts / name, recipe=recipe)
        assert (saved_artifacts / name).read_bytes() == before


def test_force_replaces(small_recipe, tmp_path):
    recipe, _, converted = small_recipe
    path = tmp_path / "m.safetensors"
    path.write_text("old")
    save(converted, path, recipe=recipe, force=True)
    assert read_recipe(path) == recipe


def test_save_refusals(small_recipe, tmp_path):
    recipe, original, converted = small_recipe
    with pytest.raises(ConversionError, match="unknown output format"):
        save(converted, tmp_path / "m.onnx", recipe=recipe)
    with pytest.raises(ConversionError, match="does not describe this model"):
        save(converted, tmp_path / "m.pt2", recipe=Recipe(model_def=SMALL_CNN, input_shape=(3, 64, 64)))
    with pytest.raises(ConversionError, match=r"needs a model returned by fc2conv\.convert"):
        save(original, tmp_path / "m.pt2", recipe=recipe)
    assert list(tmp_path.iterdir()) == []


def test_export_program_checks_against_the_model(small_recipe):
    program = export_program(small_recipe[2])
    assert {str(d) for d in program.range_constraints.values()} >= {"VR[32, int_oo]"}


def test_plain_checkpoints_and_broken_programs_have_no_recipe(small_recipe, tmp_path):
    save_state_dict(small_recipe[1].state_dict(), tmp_path / "plain.safetensors")
    with pytest.raises(ConversionError, match="holds no fc2conv recipe"):
        read_recipe(tmp_path / "plain.safetensors")
    (tmp_path / "broken.pt2").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ConversionError, match=r"not a readable torch\.export program"):
        load(tmp_path / "broken.pt2")
    with pytest.raises(ConversionError, match="no such file"):
        load(tmp_path / "missing.pt2")


# ------------------------------------------------------------------------------------------------ recipe


def test_recipe_json_round_trip():
    recipe = Recipe(arch="resnet18", num_classes=10, input_shape=(3, 160, 128), mode="cam")
    assert Recipe.from_json(recipe.to_json()) == recipe


@pytest.mark.parametrize(
    ("text", "shape"), [("3,224,224", (3, 224, 224)), ("1x32x32", (1, 32, 32)), (" 20 ", (20,)), ([3, 8, 8], (3, 8, 8)),
                        ("1,8000", (1, 8000)), ("3,16,112,112", (3, 16, 112, 112))]
)
def test_parse_input_shape(text, shape):
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize("text", ["3,0,224", "-3,32,32", "a,b,c", "", "3,16,32,32,1", "3.5,32,32", [True, 2, 2]])
def test_bad_input_shapes_are_refused(text):
    with pytest.raises(ConversionError, match=r"input_shape= must be C,H,W .* C,L .* C,D,H,W"):
        parse_input_shape(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, r"exactly one of arch= \(a torchvision name, or timm:NAME\), model_def= .* or hf_config="),
        ({"arch": "resnet18", "model_def": SMALL_CNN}, "exactly one of"),
        ({"arch": "resnet18", "mode": "sparse"}, "^mode= must be one of dense, global, cam"),
        ({"arch": "resnet18", "num_classes": 0}, "^num_classes= must be a positive integer"),
        ({"arch": "resnet18", "density": 2, "mode": "global"},
         "^density= must be a positive integer, with mode='dense'; got 2 with mode='global'"),
        ({"arch": "resnet18", "model_args": [1]}, "^model_args= and model_kwargs= pass arguments to a model_def="),
    ],
)
def test_bad_recipes(kwargs, message):
    with pytest.raises(ConversionError, match=message):
        Recipe(**kwargs)


def test_recipe_from_bad_json():
    with pytest.raises(ConversionError, match="unreadable fc2conv recipe"):
        Recipe.from_json('{"arch": "resnet18", "weights": "evil"}')
    with pytest.raises(ConversionError, match="unreadable fc2conv recipe"):
        Recipe.from_json("not json")


def test_default_input_shape_follows_the_weights_metadata():
    assert default_input_shape("inception_v3") == (3, 299, 299)
    assert default_input_shape("resnet18") == (3, 224, 224)
    assert default_input_shape(None) == (3, 224, 224)


def test_unknown_arch_suggests_names():
    with pytest.raises(ConversionError, match=r"'resnet1' is not a torchvision classification model; .*resnet18"):
        Recipe(arch="resnet1").build()


def test_arch_with_num_classes_builds():
    model = Recipe(arch="resnet18", num_classes=7).build()
    assert model.fc.out_features == 7 and not model.training


@pytest.mark.parametrize(
    ("body", "spec", "message"),
    [
        (None, "nofile.py:f", "nofile.py is not a file"),
        (POOLED, "{file}", "must be FILE.py:FACTORY"),
        (POOLED, "{file}:", "must be FILE.py:FACTORY"),
        (POOLED, "{file}:not-a-name", "must be FILE.py:FACTORY"),
        (POOLED, "{file}:missing", r"defines no callable 'missing'; it has .*pooled"),
        ("raise RuntimeError('boom')", "{file}:f", "importing .* failed: RuntimeError: boom"),
        ("def f():\n    raise ValueError('no')", "{file}:f", r"calling f\(\) failed: ValueError: no"),
        ("def f():\n    return 3", "{file}:f", "f\\(\\) returned a int, not a torch.nn.Module"),
    ],
)
def test_model_def_errors(tmp_path, body, spec, message):
    file = tmp_path / "net.py"
    if body is not None:
        file.write_text(body)
    with pytest.raises(ConversionError, match=message):
        Recipe(model_def=spec.format(file=file) if "{file}" in spec else str(tmp_path / spec)).build()


# ------------------------------------------------------------------------------ pickles inside a .pt2


def _rewrite_archive(source: Path, target: Path, edit) -> None:
    """Copy the zip `source` to `target`, replacing entries as `edit(name, data) -> data` says."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            new.writestr(info, edit(info.filename, old.read(info)))


def _pickled_sample_inputs(source: Path, target: Path, marker: Path) -> None:
    """The attack of the issue: `data/sample_inputs/model.pt` holds a torch.save pickle that runs code."""
    buffer = io.BytesIO()
    torch.save({"payload": PickledCode(marker)}, buffer)
    _rewrite_archive(source, target, lambda name, data: buffer.getvalue()
                     if name.endswith("data/sample_inputs/model.pt") else data)


def _pickled_weight(source: Path, target: Path, marker: Path) -> None:
    """A weight flagged `use_pickle` whose bytes are a raw pickle (not a torch.save archive): only the forced
    weights-only loading catches it, as the archive scan does not recognise it as a pickle."""
    with zipfile.ZipFile(source) as archive:
        config_name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(archive.read(config_name))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True

    def edit(name: str, data: bytes) -> bytes:
        if name == config_name:
            return json.dumps(config).encode()
        if name.endswith(f"data/weights/{first['path_name']}"):
            return pickle.dumps(PickledCode(marker), protocol=2)
        return data

    _rewrite_archive(source, target, edit)


@pytest.mark.parametrize("attack", [_pickled_sample_inputs, _pickled_weight])
def test_a_pt2_never_unpickles_code_unless_trusted(small_files, tmp_path, attack):
    evil, marker = tmp_path / "evil.pt2", tmp_path / "code-ran"
    attack(small_files / "small.pt2", evil, marker)
    with pytest.raises(ConversionError, match=r"evil\.pt2 \(entry .*data/.*\) holds a pickle .*--trust-pickle"):
        fc2conv.load(evil)
    assert not marker.exists()
    result = cli_process("verify", small_files / "small.pt", evil, "--model-def", "models/small_cnn.py:SmallCNN")
    assert_clean_refusal(result, "evil.pt2 (entry", "--trust-pickle")
    assert not marker.exists()
    # The payload is live: trusting the file runs it (whether the tampered program then loads or not).
    with contextlib.suppress(ConversionError):
        fc2conv.load(evil, trust_pickle=True)
    assert marker.exists()


def test_an_untampered_pt2_loads_and_its_recipe_reads_without_loading(small_files):
    assert fc2conv.load(small_files / "small.pt2")(torch.zeros(1, 3, 40, 40)).shape == (1, 10, 3, 3)
    assert read_recipe(small_files / "small.pt2").model_def == "models/small_cnn.py:SmallCNN"
