"""The fields fc2conv reads from a `save_pretrained` directory's JSON files, each checked before it is trusted.

    config = check_config(read_json(path), source=str(path))  # model_type, architectures, num_channels, image_size,
                                                              # num_labels, id2label, label2id
    normalisation("my-resnet", channels=3)                    # {"mean": ..., "std": ...} from preprocessor_config.json
    reference_input("my-resnet", config)                      # ((3, 224, 224), "…/preprocessor_config.json: field …")

The directory is someone else's, so each field is checked for its type, its range (finite, positive, bounded: a
size beyond `MAX_SIDE` would allocate before anything else could object) and, for labels, plain text
(`fc2conv.metadata.check_labels`), and a refusal names the file and the field ("DIR/config.json: field
image_size must be …; got 1000000"). Fields fc2conv does not read are left to transformers, which validates its own.
No torch: this is JSON.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from ..errors import InputError, first_line
from ..metadata import check_labels

__all__ = ["CONFIG", "MAX_CHANNELS", "MAX_CLASSES", "MAX_JSON_BYTES", "MAX_SIDE", "PREPROCESSOR", "check_config",
           "labels_of", "normalisation", "read_json", "reference_input"]

CONFIG, PREPROCESSOR = "config.json", "preprocessor_config.json"
MAX_JSON_BYTES = 16 * 2**20  # a config is a few KiB; ImageNet-21k's 21,843 labels are half a MiB
# Pixels along one side of a reference input: classifiers are trained on a few hundred, and a converted model takes any
# larger input; beyond this the reference batch and its activations would not fit in a machine's memory.
MAX_SIDE = 4096
MAX_CHANNELS = 1024  # input channels (hyperspectral images have a few hundred)
MAX_CLASSES = 1_000_000
_DEFAULT_SIDE = 224
_MODEL_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # "resnet", "mobilenet_v2", "data2vec-vision"
_CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")  # a Python class: architectures are printed in messages


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`: at most `MAX_JSON_BYTES`, without NaN or Infinity (not JSON, though Python reads
    them) or numbers too large for a float."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InputError(f"{path} is not readable ({first_line(e)})") from None
    if size > MAX_JSON_BYTES:
        raise InputError(f"{path} is {size / 2**20:,.0f} MiB, more than the {MAX_JSON_BYTES // 2**20} MiB a "
                         "config may have")
    try:
        found = json.loads(path.read_text(encoding="utf-8"), parse_constant=_not_json, parse_float=_finite)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: json's, and int's 4300 digits
        raise InputError(f"{path} is not readable JSON ({first_line(e, limit=200)})") from None
    if not isinstance(found, dict):
        raise InputError(f"{path} is not a JSON object")
    return found


def _not_json(constant: str) -> float:
    raise ValueError(f"{constant} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is too large for a number")
    return value


def check_config(config: Any, *, source: str) -> dict[str, Any]:
    """`config` (config.json, or an artifact's copy of it) when every field fc2conv reads is sound; else a
    `InputError` naming `source` and the field."""
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise InputError(f"{source} has no \"model_type\": it is not a transformers config")

    def fail(field: str, why: str) -> InputError:
        return InputError(f"{source}: field {field} {why}; got {_shown(config[field])}")

    if not _MODEL_TYPE.fullmatch(config["model_type"]):
        raise fail("model_type", "must name a transformers architecture (letters, digits, _ and -)")
    architectures = config.get("architectures")
    if architectures is not None and (not isinstance(architectures, list) or len(architectures) > 16
                                      or not all(isinstance(a, str) and _CLASS_NAME.fullmatch(a)
                                                 for a in architectures)):
        raise fail("architectures", "must be a list of transformers class names")
    if "num_channels" in config and not _count(config["num_channels"], MAX_CHANNELS):
        raise fail("num_channels", f"must be an integer from 1 to {MAX_CHANNELS}")
    if "image_size" in config and config["image_size"] is not None and _sides(config["image_size"]) is None:
        raise fail("image_size", f"must be a size in pixels from 1 to {MAX_SIDE}, or [height, width]")
    if "num_labels" in config and not _count(config["num_labels"], MAX_CLASSES):
        raise fail("num_labels", f"must be an integer from 1 to {MAX_CLASSES:,}")
    id2label = config.get("id2label")
    if id2label is not None:
        _check_id2label(id2label, fail, source)
        if "num_labels" in config and config["num_labels"] != len(id2label):
            raise fail("num_labels", f"must be the {len(id2label)} classes id2label names")
    label2id = config.get("label2id")
    if label2id is not None and (not isinstance(label2id, dict)
                                 or not all(_integer(v) and 0 <= v < MAX_CLASSES for v in label2id.values())):
        raise fail("label2id", "must map class names to class numbers")
    return config


def _check_id2label(id2label: Any, fail, source: str) -> None:
    if not isinstance(id2label, dict) or not 1 <= len(id2label) <= MAX_CLASSES:
        raise fail("id2label", f"must map class numbers to names, for 1 to {MAX_CLASSES:,} classes")
    numbered = {str(k): v for k, v in id2label.items() if isinstance(k, str) or _integer(k)}  # JSON's, or to_dict()'s
    if len(numbered) != len(id2label) or set(numbered) != {str(k) for k in range(len(id2label))}:
        raise fail("id2label", f"must number the classes 0 to {len(id2label) - 1}, as \"0\", \"1\", …")
    check_labels(labels_of(id2label), source=f"{source}: field id2label")


def labels_of(id2label: dict[Any, Any]) -> list[Any]:
    """id2label's names in class order (its keys are class numbers: strings in JSON, integers in `to_dict()`)."""
    numbered = {str(k): v for k, v in id2label.items()}
    return [numbered[str(k)] for k in range(len(numbered))]


def normalisation(directory: str | os.PathLike, channels: int) -> dict[str, list[float]]:
    """The input normalisation of preprocessor_config.json as `mean` and `std` of inputs scaled to [0, 1] (how
    fc2conv's runtime reads images), or {} without that file: the processor computes ((pixel · rescale_factor −
    offset) − image_mean) / image_std from 0–255 pixels, which is (x − (image_mean + offset) / (255 · rescale_factor))
    / (image_std / (255 · rescale_factor)) for x = pixel / 255."""
    path = Path(directory) / PREPROCESSOR
    if not path.is_file():
        return {}
    processor = _processor(path)
    rescale = processor.get("do_rescale", True)
    scale = 255 * (_positive(processor, "rescale_factor", 1 / 255, path) if rescale else 1)
    offset = 1.0 if rescale and processor.get("rescale_offset", False) else 0.0
    if processor.get("do_normalize", True):
        mean, std = (_numbers(processor, key, channels, path) for key in ("image_mean", "image_std"))
    else:
        mean, std = [0.0], [1.0]
    if mean is None or std is None:
        return {}
    mean, std = [(m + offset) / scale for m in mean], [s / scale for s in std]
    if any(s <= 0 or not math.isfinite(s) for s in std) or not all(map(math.isfinite, mean)):
        raise InputError(f"{path}: fields image_mean, image_std and rescale_factor give a normalisation that is "
                         f"not a finite positive scale; got mean {_shown(mean)}, std {_shown(std)}")
    return {"mean": mean, "std": std}


def reference_input(directory: str | os.PathLike, config: dict[str, Any]) -> tuple[tuple[int, ...], str]:
    """(channels, height, width) the model sees, and the file and field it was read from: the processor's center
    crop when it crops, else its resize (`{"height", "width"}`, or a square of `shortest_edge`), else the config's
    `image_size`, else 224×224."""
    channels = config.get("num_channels", 3)
    path = Path(directory) / PREPROCESSOR
    processor = _processor(path) if path.is_file() else {}
    crops = processor.get("do_center_crop", "crop_size" in processor)
    for field, file, found in (("crop_size", path, processor if crops else {}), ("size", path, processor),
                               ("image_size", Path(directory) / CONFIG, config)):
        if found.get(field) is not None and _sides(found[field]) is not None:
            return (channels, *_sides(found[field])), f"{file}: field {field}"
    return (channels, _DEFAULT_SIDE, _DEFAULT_SIDE), (f"{Path(directory) / CONFIG}: field image_size (absent, so "
                                                      f"fc2conv's default {_DEFAULT_SIDE}×{_DEFAULT_SIDE})")


def _processor(path: Path) -> dict[str, Any]:
    """preprocessor_config.json with the fields fc2conv reads checked: flags, sizes (the numbers are checked where
    they are used)."""
    processor = read_json(path)
    for key in ("do_rescale", "do_normalize", "rescale_offset", "do_center_crop"):
        if key in processor and not isinstance(processor[key], bool):
            raise InputError(f"{path}: field {key} must be true or false; got {_shown(processor[key])}")
    for key in ("crop_size", "size"):
        value = processor.get(key)
        if value is not None and _sides(value) is None and not _other_resize(value):
            raise InputError(f"{path}: field {key} must be a size in pixels from 1 to {MAX_SIDE}: a number, "
                             f"[height, width], {{\"height\", \"width\"}} or {{\"shortest_edge\"}}; got "
                             f"{_shown(value)}")
    return processor


def _sides(size: Any) -> tuple[int, int] | None:
    """(height, width) of a size as processors and configs write it, each from 1 to MAX_SIDE; None if it is none."""
    if isinstance(size, dict):
        size = ([size.get("height"), size.get("width")] if "height" in size or "width" in size
                else size.get("shortest_edge"))
    if _count(size, MAX_SIDE):
        return size, size
    if isinstance(size, list) and len(size) == 2 and all(_count(s, MAX_SIDE) for s in size):
        return size[0], size[1]
    return None


def _other_resize(value: Any) -> bool:
    """A resize fc2conv does not read a size from (`{"longest_edge": 1333}`, say), its numbers still sound."""
    return (isinstance(value, dict) and not {"height", "width", "shortest_edge"} & set(value)
            and all(_count(v, 1_000_000) for v in value.values()))


def _positive(found: dict[str, Any], key: str, default: float, path: Path) -> float:
    value = found.get(key, default)
    if not _number(value) or value <= 0:
        raise InputError(f"{path}: field {key} must be a positive number; got {_shown(value)}")
    return float(value)


def _numbers(found: dict[str, Any], key: str, channels: int, path: Path) -> list[float] | None:
    value = found.get(key)
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if not values or not all(_number(v) for v in values) or len(values) not in (1, channels):
        raise InputError(f"{path}: field {key} must be 1 or {channels} numbers (one per channel: config.json's "
                         f"num_channels is {channels}); got {_shown(value)}")
    if key == "image_std" and any(v <= 0 for v in values):
        raise InputError(f"{path}: field image_std must be positive; got {_shown(value)}")
    return [float(v) for v in values]


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value: Any, most: int) -> bool:
    return _integer(value) and 1 <= value <= most


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: Any) -> str:
    """A value as a refusal quotes it: repr (control characters escaped), at most 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"
