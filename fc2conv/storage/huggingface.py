"""Hugging Face `transformers` image classifiers kept as `save_pretrained` directories.

    is_pretrained_dir("out/my-resnet")            # a directory with config.json
    config = read_config("out/my-resnet")         # the architecture and the class names, as JSON
    model = build(config)                         # transformers' own class for it, random weights, float32
    weights = read_weights("out/my-resnet")       # model.safetensors (or its shards), read without pickle
    hints("out/my-resnet", config)                # {"labels": id2label, "mean": ..., "std": ...}
    default_input_shape("out/my-resnet", config)  # (3, 224, 224) from preprocessor_config.json

Everything is read offline (`HF_HUB_OFFLINE`, `local_files_only`): nothing is downloaded, no remote code runs
(`trust_remote_code` is never set, so only classes that ship with transformers are built), and weights come from
safetensors files or a `pytorch_model.bin` read by the weights-only unpickler. transformers is optional
(`pip install 'fc2conv[hf]'`) and imported only here, when a model is built.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConversionError, first_line

__all__ = ["CONFIG", "build", "default_input_shape", "hints", "input_files", "is_pretrained_dir", "read_config",
           "read_weights", "source_of"]

CONFIG, PREPROCESSOR = "config.json", "preprocessor_config.json"
WEIGHTS, INDEX, LEGACY_WEIGHTS = "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"
_DEFAULT_SIDE = 224


def is_pretrained_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory holding a config.json (what `save_pretrained` writes)."""
    return Path(path).is_dir() and (Path(path) / CONFIG).is_file()


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """config.json as a JSON object with a `model_type`."""
    config = _json(Path(directory) / CONFIG)
    if not isinstance(config.get("model_type"), str):
        raise ConversionError(f"{Path(directory) / CONFIG} has no \"model_type\": it is not a transformers config")
    return config


def source_of(config: dict[str, Any]) -> str:
    """How messages name the architecture: `transformers:ResNetForImageClassification`."""
    architectures = config.get("architectures") or [config["model_type"]]
    return f"transformers:{architectures[0]}"


def build(config: dict[str, Any]) -> Any:
    """The image classifier transformers builds for `config`, random weights, float32, in eval mode; its outputs are
    dataclasses (`return_dict`), whose `logits` fc2conv takes as the scores."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = _transformers()
    model_type = config.get("model_type")
    if model_type not in transformers.CONFIG_MAPPING:
        raise ConversionError(f"{CONFIG}: model_type {model_type!r} is not an architecture transformers "
                              f"{transformers.__version__} ships (fc2conv never runs a model's remote code)")
    try:
        settings = transformers.CONFIG_MAPPING[model_type].from_dict(dict(config))
        settings.return_dict = True
        model = transformers.AutoModelForImageClassification.from_config(settings, trust_remote_code=False)
    except ValueError as e:
        raise ConversionError(f"{CONFIG}: transformers has no image classifier for model_type {model_type!r} "
                              f"({first_line(e)})") from None
    except Exception as e:
        raise ConversionError(f"{CONFIG}: transformers could not build {source_of(config)}: "
                              f"{first_line(e, named=True)}") from e
    return model.float().eval()  # a checkpoint's float16 or bfloat16 weights load into float32 parameters


def read_weights(directory: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, Any]:
    """The model's state dict: model.safetensors, the shards model.safetensors.index.json lists, or else
    pytorch_model.bin (weights-only unless `trust_pickle`)."""
    from .checkpoint import load_state_dict

    directory = Path(directory)
    if (directory / WEIGHTS).is_file():
        return load_state_dict(directory / WEIGHTS)
    if (directory / INDEX).is_file():
        weight_map = _json(directory / INDEX).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ConversionError(f"{directory / INDEX} has no \"weight_map\" of tensor names to shard files")
        found: dict[str, Any] = {}
        for shard in sorted(set(weight_map.values())):
            path = directory / shard
            if Path(shard).name != shard or not path.is_file():
                raise ConversionError(f"{directory / INDEX} lists the shard {shard!r}, which is not a file in "
                                      f"{directory}")
            found.update({k: v for k, v in load_state_dict(path).items() if weight_map.get(k) == shard})
        return found
    if (directory / LEGACY_WEIGHTS).is_file():
        return load_state_dict(directory / LEGACY_WEIGHTS, trust_pickle=trust_pickle)
    raise ConversionError(f"{directory} holds {CONFIG} but no weights: expected {WEIGHTS}, {INDEX} or "
                          f"{LEGACY_WEIGHTS} (what save_pretrained writes)")


def input_files(directory: str | os.PathLike) -> list[Path]:
    """The files fc2conv reads from the directory, which an output must never replace."""
    directory = Path(directory)
    return [directory / name for name in (CONFIG, PREPROCESSOR, WEIGHTS, INDEX, LEGACY_WEIGHTS)
            if (directory / name).is_file()]


def hints(directory: str | os.PathLike, config: dict[str, Any]) -> dict[str, Any]:
    """Class names (`id2label`, in class order) and the input normalisation of preprocessor_config.json, as mean
    and std of inputs scaled to [0, 1] (how fc2conv's runtime reads images): the processor computes
    ((pixel · rescale_factor − offset) − image_mean) / image_std from 0–255 pixels, which is
    (x − (image_mean + offset) / (255 · rescale_factor)) / (image_std / (255 · rescale_factor)) for x = pixel / 255."""
    found: dict[str, Any] = {"labels": _labels(directory, config)}
    path = Path(directory) / PREPROCESSOR
    if not path.is_file():
        return found
    processor = _json(path)
    scale = 255 * (_number(processor, "rescale_factor", 1 / 255, path) if processor.get("do_rescale", True) else 1)
    offset = 1.0 if processor.get("do_rescale", True) and processor.get("rescale_offset", False) else 0.0
    if processor.get("do_normalize", True):
        mean, std = _numbers(processor, "image_mean", path), _numbers(processor, "image_std", path)
    else:
        mean, std = [0.0], [1.0]
    channels = config.get("num_channels", 3)
    for key, values in (("image_mean", mean), ("image_std", std)):
        if values is not None and len(values) not in (1, channels):
            raise ConversionError(f"{path}: \"{key}\" has {len(values)} numbers; the model takes {channels} "
                                  "channels")
    if std is not None and any(v <= 0 for v in std):
        raise ConversionError(f"{path}: \"image_std\" must be positive, not {std}")
    if mean is not None and std is not None:
        found["mean"] = [(m + offset) / scale for m in mean]
        found["std"] = [s / scale for s in std]
    return found


def default_input_shape(directory: str | os.PathLike, config: dict[str, Any]) -> tuple[int, ...]:
    """(channels, height, width) the model sees: the processor's center crop when it crops, else its resize
    (`{"height", "width"}`, or a square of `shortest_edge`), else the config's `image_size`, else 224×224."""
    channels = config.get("num_channels", 3)
    path = Path(directory) / PREPROCESSOR
    processor = _json(path) if path.is_file() else {}
    crop = processor.get("crop_size") if processor.get("do_center_crop", "crop_size" in processor) else None
    for size in (crop, processor.get("size"), config.get("image_size")):
        side = _sides(size)
        if side is not None:
            return (channels, *side)
    return (channels, _DEFAULT_SIDE, _DEFAULT_SIDE)


def _sides(size: Any) -> tuple[int, int] | None:
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size, size
    if isinstance(size, list | tuple) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size):
        return tuple(size)
    if isinstance(size, dict):
        if isinstance(size.get("height"), int) and isinstance(size.get("width"), int):
            return size["height"], size["width"]
        if isinstance(size.get("shortest_edge"), int):
            return size["shortest_edge"], size["shortest_edge"]
    return None


def _labels(directory: str | os.PathLike, config: dict[str, Any]) -> list[str] | None:
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        return None
    try:
        ordered = sorted((int(k), str(v)) for k, v in id2label.items())
    except ValueError:
        raise ConversionError(f"{Path(directory) / CONFIG}: \"id2label\" keys must be class numbers") from None
    if [k for k, _ in ordered] != list(range(len(ordered))):
        raise ConversionError(f"{Path(directory) / CONFIG}: \"id2label\" must number the classes 0 to "
                              f"{len(ordered) - 1}")
    return [label for _, label in ordered]


def _number(found: dict[str, Any], key: str, default: float, path: Path) -> float:
    value = found.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConversionError(f"{path}: \"{key}\" must be a positive number, not {value!r}")
    return float(value)


def _numbers(found: dict[str, Any], key: str, path: Path) -> list[float] | None:
    value = found.get(key)
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise ConversionError(f"{path}: \"{key}\" must be a number or a list of numbers, not {value!r}")
    return [float(v) for v in values]


def _json(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path} is not readable JSON ({first_line(e)})") from None
    if not isinstance(found, dict):
        raise ConversionError(f"{path} is not a JSON object")
    return found


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConversionError("transformers is not installed: pip install transformers (or 'fc2conv[hf]') to "
                              "convert its models") from None
    return transformers
