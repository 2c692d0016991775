"""The original model a command on checkpoints builds from its flags: the recipe (an architecture by name, a
`--model-def` factory with its arguments, or a Hugging Face directory's config), the checkpoint's weights loaded into
it, and, for a Hugging Face directory, what its refusals name instead of flags nobody passed (`blame_for`)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConversionError, InputError
from .keywords import RECIPE, flags_named

__all__ = ["blame_for", "named_by", "original", "parse_model_args", "recipe_of"]


def recipe_of(checkpoint, arch, model_def, model_arg, num_classes, input_shape, mode, channels_last_linears, density,
            reduce):
    # A `Recipe`'s refusals name its keywords (the Python API); the command names the flags that set them.
    with flags_named(RECIPE):
        return _recipe_of(checkpoint, arch, model_def, model_arg, num_classes, input_shape, mode,
                          channels_last_linears, density, reduce)


def _recipe_of(checkpoint, arch, model_def, model_arg, num_classes, input_shape, mode, channels_last_linears,
               density, reduce):
    from ..storage import huggingface
    from ..storage.recipe import Recipe, default_input_shape, parse_input_shape

    shape = parse_input_shape(input_shape) if input_shape is not None else None
    options = {"mode": mode, "channels_last_linears": channels_last_linears, "density": density, "reduce": reduce}
    if huggingface.is_pretrained_dir(checkpoint):
        if arch is not None or model_def is not None or model_arg:
            raise InputError(f"{checkpoint} is a Hugging Face save_pretrained directory: its config.json gives "
                             "the architecture, so drop --arch, --model-def and --model-arg")
        config = huggingface.read_config(checkpoint)
        huggingface.hints(checkpoint, config)  # preprocessor_config.json's fields too: all checked before any work
        return Recipe(hf_config=config, num_classes=num_classes,
                      input_shape=shape or huggingface.default_input_shape(checkpoint, config), **options)
    if arch is not None and model_def is not None:
        raise InputError("give the architecture with exactly one of --arch NAME, --model-def FILE.py:FACTORY, or a "
                         "Hugging Face save_pretrained directory as the checkpoint")
    if arch is None and model_def is None:
        raise InputError("say which architecture the checkpoint is for: --arch NAME (a torchvision model, or "
                         "timm:NAME) or --model-def FILE.py:FACTORY; a Hugging Face save_pretrained directory "
                         "given as the checkpoint needs neither")
    args, kwargs = parse_model_args(model_arg)
    return Recipe(arch=arch, model_def=model_def, num_classes=num_classes,
                  input_shape=shape or default_input_shape(arch), model_args=args, model_kwargs=kwargs, **options)


def parse_model_args(values: list[str]) -> tuple[list, dict]:
    """--model-arg values: a JSON object of keyword arguments, NAME=VALUE, or a positional VALUE."""
    args, kwargs = [], {}
    for value in values:
        if value.lstrip().startswith("{"):
            try:
                found = json.loads(value)
            except json.JSONDecodeError as e:
                raise InputError(f"--model-arg {value!r} is not a JSON object ({e})") from None
            kwargs.update(found)
        elif "=" in value and value.split("=", 1)[0].isidentifier():
            name, text = value.split("=", 1)
            kwargs[name] = _json_or_text(text)
        else:
            args.append(_json_or_text(value))
    return args, kwargs


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def original(recipe, checkpoint: Path, trust_pickle: bool, step, blame=None):
    """The recipe's architecture holding the checkpoint's weights (a file, or a save_pretrained directory's, whose
    misfits name the config's field: `blame`)."""
    from ..storage import huggingface
    from ..storage.checkpoint import load_into, load_state_dict

    step(f"loading {checkpoint.name}")
    if huggingface.is_pretrained_dir(checkpoint):
        state_dict = huggingface.read_weights(checkpoint, trust_pickle=trust_pickle)
        if blame is not None:
            step(f"building {recipe.source}")
            model = huggingface.build(recipe.hf_config, source=blame.config)
            huggingface.load_weights(model, state_dict, checkpoint, blame, recipe.convert)
            return model
    else:
        state_dict = load_state_dict(checkpoint, trust_pickle=trust_pickle)
    step(f"building {recipe.source}")
    model = recipe.build()
    try:
        load_into(model, state_dict, source=str(checkpoint))
    except ConversionError as e:
        if recipe.hf_config is not None:
            raise
        classes = _head_size(model, state_dict)
        if classes is None:
            raise
        raise InputError(f"{e}\nHint: the file's head has {classes} outputs; "
                         f"pass --num-classes {classes}") from None
    return model


def blame_for(recipe, checkpoint: Path, input_shape: str | None, artifact: Path | None = None):
    """What refusals about a model built from a save_pretrained directory's config name instead of flags the user
    did not pass (`huggingface.Blame`); None for other checkpoints."""
    from ..storage import huggingface

    if recipe.hf_config is None or not huggingface.is_pretrained_dir(checkpoint):
        return None
    return huggingface.Blame.of(recipe, checkpoint, shape_given=input_shape is not None, artifact=artifact)


@contextmanager
def named_by(blame, model):
    """A refusal converting a model built from a config names the config's field (`Blame.refusal`)."""
    try:
        yield
    except ConversionError as e:
        if blame is None:
            raise
        raise blame.refusal(e, model) from None


def _head_size(model, state_dict) -> int | None:
    """The file's output count when it differs from the model's only in the last layer's weight."""
    expected = model.state_dict()
    last = [k for k, v in expected.items() if k.endswith("weight") and v.dim() >= 2][-1:]
    if not last or last[0] not in state_dict or set(expected) != set(state_dict):
        return None
    found, wanted = state_dict[last[0]].shape, expected[last[0]].shape
    return int(found[0]) if found[0] != wanted[0] and found[1:] == wanted[1:] else None
