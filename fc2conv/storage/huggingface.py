"""Hugging Face `transformers` image classifiers kept as `save_pretrained` directories.

    is_pretrained_dir("out/my-resnet")            # a directory with config.json
    config = read_config("out/my-resnet")         # the architecture and the class names, as JSON, checked
    model = build(config)                         # transformers' own class for it, random weights, float32
    weights = read_weights("out/my-resnet")       # model.safetensors (or its shards), read without pickle
    load_weights(model, weights, "out/my-resnet", blame, convert)  # they fit, or the field at fault is named
    hints("out/my-resnet", config)                # {"labels": id2label, "mean": ..., "std": ...}
    default_input_shape("out/my-resnet", config)  # (3, 224, 224) from preprocessor_config.json

Everything is read offline (`HF_HUB_OFFLINE`, `local_files_only`): nothing is downloaded, no remote code runs
(`trust_remote_code` is never set, so only classes that ship with transformers are built), and weights come from
safetensors files or a `pytorch_model.bin` read by the weights-only unpickler. transformers is optional
(`pip install 'fc2conv[hf]'`) and imported only here, when a model is built.

The directory is someone else's: every field fc2conv reads from its JSON files is checked (type, range, finite,
bounded) before it is used (`hf_fields.py`), and a refusal that stems from one of them names the file and the field,
never a flag the user did not pass (`Blame`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BackendError, ConversionError, InputError, first_line
from .hf_fields import (
    CONFIG,
    MAX_SIDE,
    PREPROCESSOR,
    check_config,
    labels_of,
    normalisation,
    read_json,
    reference_input,
)

__all__ = ["CONFIG", "MAX_SIDE", "PREPROCESSOR", "Blame", "build", "check_config", "default_input_shape", "hints",
           "input_files", "is_pretrained_dir", "load_weights", "read_config", "read_weights", "shape_origin",
           "source_of"]

WEIGHTS, INDEX, LEGACY_WEIGHTS = "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"
_MESSAGE = 480  # characters: the command line shows at most 500 of a refusal, so a named cause must fit in them


def is_pretrained_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory holding a config.json (what `save_pretrained` writes)."""
    return Path(path).is_dir() and (Path(path) / CONFIG).is_file()


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """config.json as a JSON object with a `model_type`, every field fc2conv reads checked (`check_config`)."""
    path = Path(directory) / CONFIG
    return check_config(read_json(path), source=str(path))


def source_of(config: dict[str, Any]) -> str:
    """How messages name the architecture: `transformers:ResNetForImageClassification`."""
    architectures = config.get("architectures") or [config["model_type"]]
    return f"transformers:{architectures[0]}"


def build(config: dict[str, Any], *, source: str = CONFIG) -> Any:
    """The image classifier transformers builds for `config`, random weights, float32, in eval mode; its outputs are
    dataclasses (`return_dict`), whose `logits` fc2conv takes as the scores. It is first built on the meta device
    (shapes, no memory), so a config whose sizes would not fit in memory is refused naming `source` rather than
    allocated. `source` names where the config came from (config.json, or an artifact's recipe) in refusals."""
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    check_config(config, source=source)
    transformers = _transformers()
    model_type = config["model_type"]
    if model_type not in transformers.CONFIG_MAPPING:
        raise InputError(f"{source}: model_type {model_type!r} is not an architecture transformers "
                         f"{transformers.__version__} ships (fc2conv never runs a model's remote code)")
    try:
        settings = transformers.CONFIG_MAPPING[model_type].from_dict(dict(config))
    except Exception as e:  # transformers validates its fields strictly and names the one at fault
        raise InputError(f"{source}: transformers refuses it as a {model_type!r} config: {_reason(e)}") from None
    if type(settings) not in transformers.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING:
        raise InputError(f"{source}: transformers has no image classifier for model_type {model_type!r}")
    settings.return_dict = True

    def instantiate() -> Any:
        try:
            return transformers.AutoModelForImageClassification.from_config(settings, trust_remote_code=False)
        except Exception as e:  # a model's own __init__ may raise anything for a config it cannot build
            raise InputError(f"{source}: transformers could not build its {model_type!r} model: "
                             f"{_reason(e)}") from None

    try:
        with torch.device("meta"):
            skeleton = instantiate()
    except ConversionError:  # a model whose construction reads a value (`.item()`) builds only for real
        skeleton = None
    if skeleton is not None:
        _refuse_beyond_memory(skeleton, source)
    return instantiate().float().eval()  # a checkpoint's float16 or bfloat16 weights load into float32 parameters


def _refuse_beyond_memory(skeleton: Any, source: str) -> None:
    from ..tracing.trace import available_memory

    count = sum(t.numel() for t in skeleton.state_dict().values())
    needed, available = 4 * count, available_memory()  # float32
    if available is not None and needed > available:
        raise InputError(f"{source}: its size fields ({_size_fields(skeleton)}) make a "
                         f"{type(skeleton).__name__} of {count:,} parameters ({needed / 2**30:,.1f} GiB), more "
                         f"than the {available / 2**30:,.1f} GiB this machine has available")


def read_weights(directory: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, Any]:
    """The model's state dict: model.safetensors, the shards model.safetensors.index.json lists, or else
    pytorch_model.bin (weights-only unless `trust_pickle`)."""
    from .checkpoint import load_state_dict

    directory = Path(directory)
    if (directory / WEIGHTS).is_file():
        return load_state_dict(directory / WEIGHTS)
    if (directory / INDEX).is_file():
        weight_map = read_json(directory / INDEX).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise InputError(f"{directory / INDEX} has no \"weight_map\" of tensor names to shard files")
        found: dict[str, Any] = {}
        for shard in sorted(set(weight_map.values())):
            path = directory / shard
            if Path(shard).name != shard or not path.is_file():
                raise InputError(f"{directory / INDEX} lists the shard {shard[:100]!r}, which is not a file in "
                                 f"{directory}")
            found.update({k: v for k, v in load_state_dict(path).items() if weight_map.get(k) == shard})
        return found
    if (directory / LEGACY_WEIGHTS).is_file():
        return load_state_dict(directory / LEGACY_WEIGHTS, trust_pickle=trust_pickle)
    raise InputError(f"{directory} holds {CONFIG} but no weights: expected {WEIGHTS}, {INDEX} or "
                     f"{LEGACY_WEIGHTS} (what save_pretrained writes)")


def input_files(directory: str | os.PathLike) -> list[Path]:
    """The files fc2conv reads from the directory, which an output must never replace."""
    directory = Path(directory)
    return [directory / name for name in (CONFIG, PREPROCESSOR, WEIGHTS, INDEX, LEGACY_WEIGHTS)
            if (directory / name).is_file()]


def hints(directory: str | os.PathLike, config: dict[str, Any]) -> dict[str, Any]:
    """Class names (`id2label`, in class order) and the input normalisation of preprocessor_config.json, as mean
    and std of inputs scaled to [0, 1] (how fc2conv's runtime reads images); see `hf_fields.normalisation`."""
    found: dict[str, Any] = {"labels": _labels(config)}
    found.update(normalisation(directory, config.get("num_channels", 3)))
    return found


def default_input_shape(directory: str | os.PathLike, config: dict[str, Any]) -> tuple[int, ...]:
    """(channels, height, width) the model sees: the processor's center crop when it crops, else its resize
    (`{"height", "width"}`, or a square of `shortest_edge`), else the config's `image_size`, else 224×224."""
    return reference_input(directory, config)[0]


def shape_origin(directory: str | os.PathLike, config: dict[str, Any]) -> str:
    """The file and field `default_input_shape` read: "DIR/preprocessor_config.json: field crop_size"."""
    return reference_input(directory, config)[1]


def _labels(config: dict[str, Any]) -> list[str] | None:
    id2label = config.get("id2label")  # checked by check_config: class numbers 0…n−1, plain text
    return labels_of(id2label) if id2label else None


# -- refusals named by the directory's files


@dataclass(frozen=True)
class Blame:
    """What a refusal about a model built from a config names instead of a flag the user did not pass: where the
    config came from (`config`: "DIR/config.json", or an artifact's recipe), and where the input shape came from
    (`shape`: "DIR/preprocessor_config.json: field crop_size", None when --input-shape gave it); `options` are the
    conversion flags that were not the defaults (" with --mode cam"), which a refusal may be about instead."""

    config: str
    model_type: str
    shape: str | None = None
    options: str = ""

    @classmethod
    def of(cls, recipe: Any, directory: str | os.PathLike, *, shape_given: bool, artifact: Any = None) -> Blame:
        """For `recipe`'s model built from `directory`'s config.json (or from `artifact`'s recipe, a copy of it) with
        the input shape given by --input-shape (`shape_given`), by the directory's files, or by the artifact."""
        flags = [f"--mode {recipe.mode}" if recipe.mode != "dense" else "",
                 f"--density {recipe.density}" if recipe.density != 1 else "",
                 "--channels-last-linears" if recipe.channels_last_linears else "",
                 f"--reduce {recipe.reduce}" if recipe.reduce != "avg" else ""]
        options = " ".join(flag for flag in flags if flag)
        if artifact is not None:
            config, shape = f"{artifact}'s recipe (hf_config)", f"{artifact}'s recipe: field input_shape"
        else:
            config = str(Path(directory) / CONFIG)
            shape = None if shape_given else shape_origin(directory, recipe.hf_config)
        return cls(config=config, model_type=recipe.hf_config["model_type"], shape=shape,
                   options=f" (with {options})" if options else "")

    def refusal(self, error: ConversionError, model: Any) -> ConversionError:
        """`error`, raised converting `model`, as the field it stems from: the input shape's file and field when the
        error is about the shape and a file gave it, else config.json's model_type (the class it builds is what
        fc2conv could not convert). An error that names the flag the user passed is left as it is."""
        text = str(error)
        if "--input-shape" in text or "input_shape" in text:
            if self.shape is None:
                return error
            cause = re.sub(r" ?\(--input-shape[^)]*\)", "", text).replace("input_shape=", "input shape ")
            cause = cause.replace("input_shape", "the input shape")
            head = f"{self.shape} gives the input shape, which fails: "
            hint = "\nHint: fix that field, or pass --input-shape C,H,W with the size the model was trained on"
            return InputError(head + first_line(cause, limit=max(_MESSAGE - len(head) - len(hint), 160)) + hint)
        head = f"{self.config}: model_type {self.model_type!r} builds {type(model).__name__}{self.options}: "
        return ConversionError(head + first_line(text, limit=max(_MESSAGE - len(head), 160)))


def load_weights(model: Any, weights: dict[str, Any], directory: str | os.PathLike, blame: Blame,
                 convert: Callable[[Any], Any]) -> None:
    """Copy the directory's `weights` into `model`, built from the config `blame.config` names. When they do not fit,
    the refusal names the field that does not describe them: model_type when the file holds another model's tensors,
    id2label or num_labels when only the classifier's outputs differ, num_channels when only the first convolution's
    inputs do. Otherwise the model is converted (`convert`): transformers renames an attention model's saved weights
    on load, so a directory of one is refused for what it is, not for names; a model that converts has sizes that
    differ from the file's, and the refusal names the first tensors that differ."""
    from .checkpoint import load_into

    file = next((p for p in input_files(directory) if p.name in (WEIGHTS, INDEX, LEGACY_WEIGHTS)), Path(directory))
    try:
        load_into(model, weights, source=str(file))
        return
    except ConversionError:
        pass
    expected = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and any(k.startswith(f"{prefix}.") for k in expected) and not any(k.startswith(f"{prefix}.")
                                                                                for k in weights):
        ours = {k.split(".")[0] + "." for k in expected}
        found = sorted({k.split(".")[0] + "." for k in weights} - ours)[:3]
        raise InputError(f"{blame.config}: model_type {blame.model_type!r} builds {type(model).__name__}, but "
                         f"{file} holds another model's weights (under {', '.join(map(repr, found))}, not "
                         f"'{prefix}.'): model_type does not describe these weights")
    differ = [k for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    named = _field_at_fault(expected, weights, differ, model.config, file)
    if named is not None:
        raise InputError(f"{blame.config}: {named}")
    try:
        convert(model)
    except ConversionError as e:
        raise blame.refusal(e, model) from None
    missing = [k for k in expected if k not in weights and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in weights if k not in expected]
    first = (f"{differ[0]} is {tuple(expected[differ[0]].shape)} by the config, {tuple(weights[differ[0]].shape)} in "
             "the file" if differ else f"{(missing or unexpected)[0]} is {'missing' if missing else 'unexpected'}")
    raise InputError(
        f"{file} does not fit the {type(model).__name__} that {blame.config} describes: {len(differ)} shapes differ, "
        f"{len(missing)} tensors are missing and {len(unexpected)} unexpected; first, {first}\n"
        f"Hint: its size fields ({_size_fields(model)}) must be those the weights were trained with")


def _field_at_fault(expected: dict[str, Any], weights: dict[str, Any], differ: list[str], settings: Any,
                    file: Path) -> str | None:
    """The one config field a misfit points to when the file holds the model's tensors and all but one layer's fit:
    the classes (the last layer's outputs) or the input channels (the first convolution's inputs); else None."""
    counters = {k for k in [*expected, *weights] if k.endswith("num_batches_tracked")}
    if not differ or set(expected) - counters != set(weights) - counters:
        return None
    layers = [k for k, v in expected.items() if v.dim() >= 2]
    if not layers:
        return None
    last, first = layers[-1].rpartition(".")[0], next((k for k, v in expected.items() if v.dim() >= 3), None)
    key = f"{last}.weight"
    if (all(k.rpartition(".")[0] == last for k in differ) and key in weights
            and weights[key].shape[1:] == expected[key].shape[1:]):
        return (f"field id2label (or num_labels) gives {settings.num_labels} classes, but the classifier of {file} "
                f"({key}) has {weights[key].shape[0]} outputs")
    if differ == [first] and [weights[first].shape[i] for i in (0, *range(2, weights[first].dim()))] == [
            expected[first].shape[i] for i in (0, *range(2, expected[first].dim()))]:
        return (f"field num_channels is {settings.num_channels}, but the first convolution of {file} ({first}) "
                f"takes {weights[first].shape[1]} channels")
    return None


def _size_fields(model: Any) -> str:
    """The fields of the model's config that hold sizes (integers, or lists of them), those every config has aside."""
    shared = {*_transformers().PretrainedConfig().to_dict(), "num_labels", "out_indices"}
    sizes = [k for k, v in model.config.to_dict().items() if k not in shared and _is_size(v)]
    return ", ".join(sorted(sizes)[:8])


def _is_size(value: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    return bool(values) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _reason(error: BaseException) -> str:
    """The first two lines of a library's message, joined: transformers puts the field on the first, why on the next."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()][:2]
    return first_line(" ".join(lines) or type(error).__name__, limit=300)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise BackendError("transformers is not installed: pip install transformers (or 'fc2conv[hf]') to "
                           "convert its models") from None
    return transformers
