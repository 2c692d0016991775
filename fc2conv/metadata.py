"""The `fc2conv.*` metadata of an exported ONNX model: one JSON value per key, written by `export_onnx`,
read by `fc2conv.runtime` and the scanner, and checked by the same rules on both sides (no torch, no numpy):

- `input_shape`: the reference input without the batch, (C, *spatial) or an MLP's (D,), positive integers;
- `mode`: "dense", "global", "cam" or "pool";
- `stride`, `window`: one positive integer per spatial axis of the converted model's maps (`fc2conv.shapes`: two
  for an MLP, whose vectors become a map of vectors); cell i covers input i·stride … i·stride + window − 1 (null in
  global mode);
- `receptive_field`: one [before, after] pair per spatial axis, how far beyond its window the input still
  changes a cell (null when a cell sees the whole input);
- `sizes` (optional): absent or null when the model runs at every size from its window up; else one entry per
  spatial axis, null (every size) or {"period": P, "residues": [[lo, hi], …]}: the model runs only at sizes n with
  lo ≤ n mod P ≤ hi for one pair (`fc2conv.shapes.Sizes`: a window-partition model, at multiples of its window),
  and the runtime refuses the others, naming them;
- `exact`: whether every cell depends on its window and receptive field only, as the original's output for its
  window in the context of the whole input (false with global context, null when fc2conv cannot tell);
- `context`: why not, or why there is no receptive field, naming the layer ("" when there is nothing to say);
- `labels`: one name per class; `mean`, `std`: input normalisation, one number per channel or one for all;
- optional, written by `fc2conv quantize` (`fc2conv.runtime.quantization`): `precision` ("fp32" or "int8"),
  `calibration` (an object: `method`, `images`, `held_out`, `mosaics`, `sizes`), `drift` (an object:
  `argmax_agreement` and `max_abs_probability` in [0, 1], `max_relative_score` ≥ 0, `cells`, `images`),
  `float_layers` (the node names kept in float).

Every field is bounded before it is trusted: a key given twice is refused (readers would keep different copies),
each JSON text is at most `MAX_TEXT` characters nested at most `MAX_DEPTH` deep before it is parsed, numbers are
finite (no NaN, Infinity or 1e999) and in their ranges (integers up to `MAX_INT`, normalisation within
`NORMALISATION`), and labels are plain text of at most `MAX_LABEL` characters with no control characters
(`check_labels`). Files are read by `fc2conv.runtime.metadata_file`, the one reader for every backend.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import InputError, first_line
from .shapes import axis_names, map_size, sizes_from_json, spatial_axes

__all__ = ["HINTS", "MAX_LABEL", "MODES", "ONE_CELL", "PRECISIONS", "PREFIX", "REDUCES", "axis_names", "check_labels",
           "decode", "decode_hints", "encode", "forged_character", "validate", "validate_hints"]

PREFIX = "fc2conv."
MODES = ("dense", "global", "cam", "pool")
ONE_CELL = ("global", "pool")  # modes whose output is one cell for the whole input, at every size
REDUCES = ("avg", "max", "avgmax")  # how mode "pool" reduces the dense map: mean, maximum, or their mean
REQUIRED = ("input_shape", "mode")
HINTS = ("labels", "mean", "std")  # what a deployer needs beyond the model: also carried by checkpoints
PRECISIONS = ("fp32", "int8")  # of the file's weights and activations: float32, or int8 from `fc2conv quantize`
MAX_LABEL = 1000  # characters in one class name
MAX_TEXT = 4 * 2**20  # characters of one field's JSON (fc2conv.runtime.metadata_file bounds the bytes alike)
MAX_DEPTH = 8  # nesting of arrays and objects in one field (fc2conv writes at most 3: calibration's sizes)
MAX_INT = 2**31 - 1  # sizes, strides, windows and counts
# Ranges of |mean| and std: inputs are scaled to [0, 1] or raw 0…255 values; beyond these, float32 inputs overflow
# or lose every digit after normalisation.
NORMALISATION = {"mean": (0.0, 1e6), "std": (1e-6, 1e6)}
_STRUCTURE = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')
# Characters a label may not hold, because they would forge what a terminal, a CSV file or a viewer shows: control
# characters (a CR/LF starts a fake table row, ESC a terminal escape), line and paragraph separators, and the
# bidirectional overrides and isolates that reorder what is shown ("Trojan Source").
_FORGING_CATEGORIES = ("Cc", "Zl", "Zp")
_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def encode(values: Mapping[str, Any]) -> dict[str, str]:
    """`values` as metadata_props entries: prefixed keys, JSON values (None values are written as null)."""
    return {PREFIX + key: json.dumps(value) for key, value in values.items()}


def decode(found: Mapping[str, str] | Iterable[tuple[str, str]], *, source: str,
           classes: int | None = None) -> dict[str, Any]:
    """The fc2conv values among a model's metadata_props (a mapping, or the (key, value) entries of
    `fc2conv.runtime.metadata_file.read_entries`), parsed (`parse`) and validated (see `validate`). A key given twice
    is refused: readers that keep different copies would disagree."""
    values: dict[str, Any] = {}
    for key, text in found.items() if isinstance(found, Mapping) else found:
        if not key.startswith(PREFIX):
            continue
        name = key.removeprefix(PREFIX)
        if name in values:
            raise InputError(f"{source}: metadata field {key} is given twice; readers would disagree on which "
                             "one holds, so the file is refused")
        values[name] = parse(text, source=source, field=key)
    if not values:
        raise InputError(f"{source} has no fc2conv metadata: write it with fc2conv.export_onnx")
    validate(values, source=source, classes=classes)
    return values


def parse(text: str, *, source: str, field: str) -> Any:
    """The JSON value `text` of metadata `field`, its size and nesting bounded before it is parsed; `InputError`
    naming the field for text that is too large, too deep, not JSON, or holds NaN or Infinity."""
    if len(text) > MAX_TEXT:
        raise InputError(f"{source}: metadata field {field} has {len(text):,} characters, more than {MAX_TEXT:,}")
    if _nesting(text) > MAX_DEPTH:
        raise InputError(f"{source}: metadata field {field} nests arrays or objects more than {MAX_DEPTH} deep")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError as e:  # JSONDecodeError, NaN or Infinity, an integer of more digits than Python parses
        raise InputError(f"{source}: metadata field {field} is not valid JSON ({first_line(e, limit=120)})") \
            from None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _nesting(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON `text`, brackets inside strings ignored (an unterminated
    string runs to the end, so the scan stays linear)."""
    depth = deepest = 0
    for token in _STRUCTURE.finditer(text):
        bracket = token.group()
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif bracket in "]}":
            depth -= 1
    return deepest


def validate(values: Mapping[str, Any], *, source: str, classes: int | None = None) -> None:
    """`InputError` naming `source` and the field for a value that breaks the table above; `classes`,
    when known, is the number of scores per cell that `labels` must match."""

    def fail(key: str, why: str) -> InputError:
        return InputError(f"{source}: metadata field {PREFIX}{key} {why}; got {_shown(values.get(key))}")

    for key in REQUIRED:
        if key not in values:
            raise InputError(f"{source}: metadata field {PREFIX}{key} is missing")
    shape = values["input_shape"]
    if not _ints(shape, minimum=1) or not 1 <= len(shape) <= 4:
        raise fail("input_shape", "must be a list of 1 to 4 positive integers (C, *spatial)")
    if values["mode"] not in MODES:
        raise fail("mode", f"must be one of {', '.join(MODES)}")
    axes = spatial_axes(shape)
    for key in ("stride", "window"):
        value = values.get(key)
        if value is None and values["mode"] in ONE_CELL:
            continue
        if value is None:  # a map whose cells cannot be placed: fc2conv never writes one
            raise fail(key, f"is missing: a {values['mode']} map needs a stride and a window to place its cells "
                            "(export_onnx writes them, or refuses a model without them)")
        if not _ints(value, minimum=1) or len(value) != axes:
            raise fail(key, f"must be {axes} positive integer(s), one per spatial axis of input_shape {shape}")
    _validate_sizes(values, fail, axes)
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


def _validate_sizes(values: Mapping[str, Any], fail, axes: int) -> None:
    """`sizes`: null, or one entry per axis (see the module docstring), taking the reference size."""
    try:
        sizes = sizes_from_json(values.get("sizes"))
    except ValueError as e:
        raise fail("sizes", f"must be null or {axes} entries, null or {{period, residues}} ({e})") from None
    if sizes is None:
        return
    if len(sizes) != axes:
        raise fail("sizes", f"must have {axes} entries, one per spatial axis")
    reference = map_size(values["input_shape"])
    if not all(s is None or s.allows(n) for s, n in zip(sizes, reference, strict=True)):
        raise fail("sizes", f"must allow the reference size {list(reference)}")


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

    def fail(key: str, why: str) -> InputError:
        return InputError(f"{source}: metadata field {PREFIX}{key} {why}; got {_shown(values.get(key))}")

    labels = values.get("labels")
    if labels is not None:
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise fail("labels", "must be a list of strings")
        check_labels(labels, source=f"{source}: metadata field {PREFIX}labels")
        if classes is not None and len(labels) != classes:
            raise fail("labels", f"must name each of the model's {classes} classes, not {len(labels)}")
    for key in ("mean", "std"):
        value = values.get(key)
        if value is None:
            continue
        numbers = isinstance(value, list) and all(_number(v) for v in value)
        if not numbers or len(value) not in (1, channels):
            raise fail(key, f"must be 1 or {channels} numbers (one per input channel), each finite")
        low, high = NORMALISATION[key]
        if not all(low <= abs(v) <= high and (key == "mean" or v > 0) for v in value):
            raise fail(key, f"must be in [-{high:g}, {high:g}]" if key == "mean" else
                       f"must be positive, in [{low:g}, {high:g}]")


def forged_character(text: str) -> str | None:
    """The first character of `text` that would change how the text around it is shown (see `_FORGING_CATEGORIES`),
    as "U+000D", or None when there is none."""
    for character in text:
        if unicodedata.category(character) in _FORGING_CATEGORIES or character in _BIDI_CONTROLS:
            return f"U+{ord(character):04X}"
    return None


def check_labels(labels: Sequence[str], *, source: str) -> None:
    """`InputError` naming `source` and the class for a label that is not a string, is longer than `MAX_LABEL`
    characters, or holds a character that forges output (`forged_character`): labels are printed in tables and
    written to CSV, GeoJSON and viewers, so they are refused where they are read rather than escaped in each."""
    for index, label in enumerate(labels):
        if not isinstance(label, str):
            raise InputError(f"{source}: label {index} is not a string; got {type(label).__name__}")
        if len(label) > MAX_LABEL:
            raise InputError(f"{source}: label {index} has {len(label)} characters, more than {MAX_LABEL}")
        character = forged_character(label)
        if character is not None:
            raise InputError(f"{source}: label {index} ({label[:40]!r}) holds the control character {character}, "
                             "which would forge lines in tables, CSV files and viewers; labels must be plain text")


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
            raise InputError(f"{source}: metadata field {PREFIX}{key} is not valid JSON ({e})") from None
    validate_hints(values, source=source, channels=channels)
    return values


def _ints(value: Any, *, minimum: int) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and minimum <= v <= MAX_INT
                                           for v in value)


def _number(value: Any) -> bool:
    """A finite number: JSON's 1e999 parses as infinity, and NaN or Infinity would turn every score into NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return abs(value) < 1e300 if isinstance(value, int) else math.isfinite(value)  # no float() of a huge int


def _shown(value: Any) -> str:
    """`value` for an error message: its repr, cut short (a field may be megabytes)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"
