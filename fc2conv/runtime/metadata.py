"""The `fc2conv.*` metadata of an exported ONNX model: one JSON value per key, written by `export_onnx`,
read by `fc2conv.runtime` and the scanner, and checked by the same rules on both sides (no torch, no numpy):

- `input_shape`: the reference input without the batch, (C, *spatial) or an MLP's (D,), positive integers;
- `mode`: "dense", "global", "cam" or "pool";
- `stride`, `window`: one positive integer per spatial axis of the converted model's maps (`fc2conv.shapes`: two
  for an MLP, whose vectors become a map of vectors); cell i covers input i·stride … i·stride + window − 1 (null in
  global mode);
- `receptive_field`: one [before, after] pair per spatial axis, how far beyond its window the input still
  changes a cell (null when a cell sees the whole input);
- `exact`: whether every cell is the classifier on its window alone (false with global context, null when
  fc2conv cannot tell);
- `context`: why not, or why there is no receptive field, naming the layer ("" when there is nothing to say);
- `labels`: one name per class; `mean`, `std`: input normalisation, one number per channel or one for all;
- optional, written by `fc2conv quantize` (`fc2conv.runtime.quantization`): `precision` ("fp32" or "int8"),
  `calibration` (an object: `method`, `images`, `held_out`, `mosaics`, `sizes`), `drift` (an object:
  `argmax_agreement` and `max_abs_probability` in [0, 1], `max_relative_score` ≥ 0, `cells`, `images`),
  `float_layers` (the node names kept in float).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import ConversionError
from ..shapes import spatial_axes

__all__ = ["HINTS", "MODES", "ONE_CELL", "PRECISIONS", "PREFIX", "REDUCES", "axis_names", "decode", "decode_hints",
           "encode", "validate", "validate_hints"]

PREFIX = "fc2conv."
MODES = ("dense", "global", "cam", "pool")
ONE_CELL = ("global", "pool")  # modes whose output is one cell for the whole input, at every size
REDUCES = ("avg", "max", "avgmax")  # how mode "pool" reduces the dense map: mean, maximum, or their mean
REQUIRED = ("input_shape", "mode")
HINTS = ("labels", "mean", "std")  # what a deployer needs beyond the model: also carried by checkpoints
PRECISIONS = ("fp32", "int8")  # of the file's weights and activations: float32, or int8 from `fc2conv quantize`


def axis_names(spatial: int) -> tuple[str, ...]:
    """The names of the spatial axes, for dynamic dimensions: length; height, width; depth, height, width."""
    return {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}[spatial]


def encode(values: Mapping[str, Any]) -> dict[str, str]:
    """`values` as metadata_props entries: prefixed keys, JSON values (None values are written as null)."""
    return {PREFIX + key: json.dumps(value) for key, value in values.items()}


def decode(found: Mapping[str, str], *, source: str, classes: int | None = None) -> dict[str, Any]:
    """The fc2conv values among a model's metadata_props, parsed and validated (see `validate`)."""
    values = {}
    for key, text in found.items():
        if not key.startswith(PREFIX):
            continue
        try:
            values[key.removeprefix(PREFIX)] = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConversionError(f"{source}: metadata field {key} is not valid JSON ({e})") from None
    if not values:
        raise ConversionError(f"{source} has no fc2conv metadata: write it with fc2conv.export_onnx")
    validate(values, source=source, classes=classes)
    return values


def validate(values: Mapping[str, Any], *, source: str, classes: int | None = None) -> None:
    """`ConversionError` naming `source` and the field for a value that breaks the table above; `classes`,
    when known, is the number of scores per cell that `labels` must match."""

    def fail(key: str, why: str) -> ConversionError:
        return ConversionError(f"{source}: metadata field {PREFIX}{key} {why}; got {values.get(key)!r}")

    for key in REQUIRED:
        if key not in values:
            raise ConversionError(f"{source}: metadata field {PREFIX}{key} is missing")
    shape = values["input_shape"]
    if not _ints(shape, minimum=1) or not 1 <= len(shape) <= 4:
        raise fail("input_shape", "must be a list of 1 to 4 positive integers (C, *spatial)")
    if values["mode"] not in MODES:
        raise fail("mode", f"must be one of {', '.join(MODES)}")
    axes = spatial_axes(shape)
    for key in ("stride", "window"):
        value = values.get(key)
        if value is None and values["mode"] != "dense":
            continue
        if not _ints(value, minimum=1) or len(value) != axes:
            raise fail(key, f"must be {axes} positive integer(s), one per spatial axis of input_shape {shape}")
    field = values.get("receptive_field")
    if field is not None and (not isinstance(field, list) or len(field) != axes
                              or not all(_ints(pair, minimum=0) and len(pair) == 2 for pair in field)):
        raise fail("receptive_field", f"must be {axes} [before, after] pair(s) of integers ≥ 0, or null")
    if "exact" in values and not isinstance(values["exact"], bool | None):
        raise fail("exact", "must be true, false or null")
    if "context" in values and not isinstance(values["context"], str):
        raise fail("context", "must be a string")
    _validate_precision(values, fail)
    validate_hints(values, source=source, channels=shape[0], classes=classes)


def _validate_precision(values: Mapping[str, Any], fail) -> None:
    """The optional keys of a quantized model (see the module docstring)."""
    if "precision" in values and values["precision"] not in PRECISIONS:
        raise fail("precision", f"must be one of {', '.join(PRECISIONS)}")
    calibration = values.get("calibration")
    if calibration is not None:
        if not isinstance(calibration, dict) or not isinstance(calibration.get("method"), str):
            raise fail("calibration", "must be an object with a method")
        for key in ("images", "held_out", "mosaics"):
            if key in calibration and not _ints([calibration[key]], minimum=0):
                raise fail("calibration", f"must give {key} as an integer ≥ 0")
        sizes = calibration.get("sizes", [])
        if not isinstance(sizes, list) or not all(_ints(size, minimum=1) for size in sizes):
            raise fail("calibration", "must give sizes as lists of positive integers")
    drift = values.get("drift")
    if drift is not None:
        if not isinstance(drift, dict):
            raise fail("drift", "must be an object")
        for key, top in (("argmax_agreement", 1), ("max_abs_probability", 1), ("max_relative_score", None)):
            value = drift.get(key)
            if value is not None and (not _number(value) or value < 0 or (top is not None and value > top)):
                raise fail("drift", f"must give {key} as a number in [0, {top}]" if top else f"must give {key} ≥ 0")
        for key in ("cells", "images"):
            if key in drift and not _ints([drift[key]], minimum=0):
                raise fail("drift", f"must give {key} as an integer ≥ 0")
    layers = values.get("float_layers")
    if layers is not None and (not isinstance(layers, list) or not all(isinstance(n, str) for n in layers)):
        raise fail("float_layers", "must be a list of node names")


def validate_hints(values: Mapping[str, Any], *, source: str, channels: int, classes: int | None = None) -> None:
    """`validate` for the `HINTS` alone: `labels` one string per class (when `classes` is known), `mean` and `std`
    one number per input channel or one for all, `std` positive."""

    def fail(key: str, why: str) -> ConversionError:
        return ConversionError(f"{source}: metadata field {PREFIX}{key} {why}; got {values.get(key)!r}")

    labels = values.get("labels")
    if labels is not None:
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise fail("labels", "must be a list of strings")
        if classes is not None and len(labels) != classes:
            raise fail("labels", f"must name each of the model's {classes} classes, not {len(labels)}")
    for key in ("mean", "std"):
        value = values.get(key)
        if value is None:
            continue
        numbers = isinstance(value, list) and all(_number(v) for v in value)
        if not numbers or len(value) not in (1, channels):
            raise fail(key, f"must be 1 or {channels} numbers (one per input channel)")
        if key == "std" and any(v <= 0 for v in value):
            raise fail(key, "must be positive")


def decode_hints(found: Mapping[str, str], *, source: str, channels: int) -> dict[str, Any]:
    """The `HINTS` among `found` metadata (a checkpoint's, say), parsed and validated; other keys are ignored."""
    values = {}
    for key in HINTS:
        text = found.get(PREFIX + key)
        if text is None:
            continue
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConversionError(f"{source}: metadata field {PREFIX}{key} is not valid JSON ({e})") from None
    validate_hints(values, source=source, channels=channels)
    return values


def _ints(value: Any, *, minimum: int) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum
                                           for v in value)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value  # not NaN
