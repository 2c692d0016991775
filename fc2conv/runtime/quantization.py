"""`fc2conv quantize`: an exported float32 model as static int8 (QDQ, per-channel weights), calibrated on images
prepared as `fc2conv run` prepares them, with the drift from float32 measured on held-out images and stored in the
file. onnxruntime's quantization tools, onnx and numpy; no torch.

    from fc2conv.runtime.quantization import quantize
    done = quantize("digits.onnx", "digits_int8.onnx", "calibration/")   # a directory, an image, or a .npy batch
    print(done.drift)              # argmax agreement with float32 per cell, max |Δprobability|, on held-out images

How: the source's Identity nodes on constants (the exporter's way of sharing equal initializers, such as the zero
biases of folded batch norms) are folded first, since a weight or bias reached through an Identity keeps onnxruntime
from fusing its convolution into an int8 one (measured: ResNet18 at 896² ran its int8 file in 2.5 s with them, 0.5 s
without). The calibration images (`fc2conv.runtime.calibration`: at most `MAX_INPUTS` of a set of any size, evenly
spaced, every fourth held out) run once through onnxruntime's calibrator (`minmax`, `entropy` or `percentile`), one
image at a time, so their sizes may differ and memory holds one of them; the ranges quantize every Conv (and the
other ops onnxruntime quantizes) to QDQ with uint8 activations and int8 weights per output channel (u8×s8:
onnxruntime's fast path on x86, measured 2.3× faster than s8×s8 here; OpenVINO runs both). How many bits of the
weights are used depends on the CPU (`fc2conv.runtime.cpu`): with VNNI or AMX, int8 products are summed exactly and
all 8 bits are used; without them, onnxruntime sums u8×s8 pairs in 16 bits, which 8-bit weights can saturate (seen
on an emulated AVX2 CPU: the digits CNN's largest probability change went from 0.08 to 0.28, and two layers had to
stay in float), so the weights use 7 bits (onnxruntime's `reduce_range`: 2·255·64 < 2¹⁵), which cost accuracy
elsewhere (a random ResNet50's largest score change doubled, 2.0% to 4.4%). The file records which
(`calibration.weights`), and `DenseModel.caution` warns when an 8-bit file runs in onnxruntime on a CPU without
exact sums (OpenVINO's kernels do not saturate there: measured on the same emulated CPU).

`float_layers` keeps layers in float: "none", "first" (the first
convolution), "last" (the last one, whose output is the scores), "first+last", or "auto": all int8 unless the
held-out drift exceeds `AUTO_AGREEMENT` / `AUTO_PROBABILITY`, then "last", then "first+last", keeping the first that
meets them (else the least drift); the file and the report say which layers stayed in float. The drift is measured
on each held-out image and, for images of up to `MOSAIC_PIXELS`, on its 2×2 mosaic too: a dense map runs at sizes
larger than calibration, where scores can leave the calibrated range of an int8 output (a random-weight ResNet18
calibrated at 224² kept 100% of its argmax at 224² and 0.2% at 896², until its last convolution stayed in float).

The output keeps dynamic batch and spatial axes and the source's `fc2conv.*` metadata, adds `precision: "int8"`,
`calibration` (method, inputs found, picked and held out, sizes, the weights' range, the CPU class it was measured
on), `drift` (`fc2conv.runtime.drift`, measured in onnxruntime) and `float_layers`, and is written atomically; the
source file is never modified. Refused (`ConversionError`): a model already quantized, an empty or unreadable
calibration set, inputs the model cannot take (their file named: wrong channels, smaller than the window, NaN or
infinite samples, a `.npy` header that does not match its file).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConversionError, first_line
from ..storage.atomic import atomic_output, refuse_existing
from .calibration import PICKED, CalibrationSet, Sample, read_calibration
from .cpu import detect
from .drift import Drift, measure
from .images import MAX_PIXELS
from .metadata import PREFIX
from .model import DenseModel

__all__ = ["AUTO_AGREEMENT", "AUTO_PROBABILITY", "FLOAT_LAYERS", "METHODS", "QUANTIZED_OPS", "Quantized",
           "quantize"]

METHODS = ("minmax", "entropy", "percentile")
FLOAT_LAYERS = ("auto", "none", "first", "last", "first+last")
# "auto" keeps layers in float while the held-out drift is worse than this.
AUTO_AGREEMENT = 0.99
AUTO_PROBABILITY = 0.1
# `calibration.weights` of the two kinds of file (the first is what files before 7-bit weights said too).
WEIGHTS_8, WEIGHTS_7 = "int8 per channel", "int8 per channel, 7-bit range (no 16-bit saturation without VNNI)"
MOSAIC_PIXELS = 2**20  # held-out images up to this size are also measured as a 2×2 mosaic of themselves
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                 "ConvInteger", "MatMulInteger", "QLinearAdd", "QGemm"}
_COMPUTE = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@dataclass(frozen=True)
class Quantized:
    """A quantized model written at `path`: its calibration summary, the held-out `drift`, the layers kept in float
    (node names), and every choice tried (float layers and drift) when `float_layers` was "auto"."""

    path: Path
    calibration: dict[str, Any]
    drift: Drift
    float_layers: list[str]
    tried: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "precision": "int8", "exact": False, "calibration": self.calibration,
                "drift": self.drift.to_dict(), "float_layers": self.float_layers, "tried": self.tried}


def quantize(model: str | os.PathLike, out: str | os.PathLike, calibration: str | os.PathLike, *,
             method: str = "minmax", float_layers: str = "auto", force: bool = False,
             max_pixels: int | None = MAX_PIXELS) -> Quantized:
    """Write `model` (a float32 file of `fc2conv.export_onnx` or `convert_onnx`) quantized to int8 at `out`,
    calibrated on `calibration` (see the module docstring). `ConversionError` for bad arguments, a quantized
    model, a bad calibration set; nothing is written then."""
    model, out = Path(model), Path(out)
    if method not in METHODS:
        raise ConversionError(f"--method must be one of {', '.join(METHODS)}; got {method!r}")
    if float_layers not in FLOAT_LAYERS:
        raise ConversionError(f"--float-layers must be one of {', '.join(FLOAT_LAYERS)}; got {float_layers!r}")
    if (out.exists() and model.exists() and os.path.samefile(out, model)) or out.resolve() == model.resolve():
        raise ConversionError(f"{out} is the input model; fc2conv never modifies its input: name another output")
    refuse_existing(out, force=force)
    source = DenseModel(model)
    graph = _load(model)
    found = sorted({node.op_type for node in graph.graph.node} & QUANTIZED_OPS)
    if found or source.model_precision != "fp32":
        why = f"it has {', '.join(found)} nodes" if found else f"its metadata says precision {source.model_precision}"
        raise ConversionError(f"{model} is already quantized ({why}); quantize its float32 source instead")
    inputs = read_calibration(calibration, source, max_pixels=max_pixels)
    candidates = _candidates(graph, float_layers)
    full_range = detect().exact_int8_sums  # 8-bit weights where int8 products are summed exactly (module docstring)
    tried = []
    with tempfile.TemporaryDirectory(prefix="fc2conv-quantize-") as tmp, _quiet():
        prepared = _fold_identities(graph, model, Path(tmp))
        ranges = _calibrate(prepared, source.input_name, inputs, method, Path(tmp))
        best = None
        for index, (name, nodes) in enumerate(candidates):
            path = Path(tmp) / f"candidate{index}.onnx"
            _quantize_static(prepared, path, ranges, method, nodes, _Reader(source.input_name, inputs.samples()),
                             full_range)
            drift = _drift(path, source, inputs)
            tried.append({"float_layers": name, "nodes": nodes, "drift": drift.to_dict()})
            if best is None or (drift.argmax_agreement, -drift.max_abs_probability) > \
                    (best[2].argmax_agreement, -best[2].max_abs_probability):
                best = (path, nodes, drift)
            if float_layers != "auto" or drift.within(AUTO_AGREEMENT, AUTO_PROBABILITY):
                best = (path, nodes, drift)
                break
        path, nodes, drift = best
        summary = {"method": method, "found": inputs.found, "images": len(inputs.calibrating),
                   "held_out": len(inputs.held_out) if inputs.held_separately else 0,
                   "mosaics": drift.images - len(inputs.held_out), "picked": PICKED,
                   "sizes": [list(size) for size in sorted(inputs.sizes)],
                   "activations": "uint8", "weights": WEIGHTS_8 if full_range else WEIGHTS_7, "cpu": detect().kind}
        result = _load(path)
        _check_dynamic(graph, result, model)
        _set_metadata(result, {"precision": "int8", "calibration": summary, "drift": drift.to_dict(),
                               "float_layers": nodes})
        import onnx

        with atomic_output(out, force=force) as written:
            onnx.save(result, str(written))
    return Quantized(out, summary, drift, nodes, tried if float_layers == "auto" else [])


def _load(path: Path):
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf's DecodeError and friends
        raise ConversionError(f"{path}: onnx cannot read it ({first_line(e)})") from None


def _candidates(graph, float_layers: str) -> list[tuple[str, list[str]]]:
    """(choice, node names kept in float) to try, in order."""
    compute = [node.name for node in graph.graph.node if node.op_type in _COMPUTE]
    first, last = compute[:1], compute[-1:]
    choices = {"none": [], "first": first, "last": last, "first+last": sorted(set(first + last), key=compute.index)}
    order = ["none", "last", "first+last"] if float_layers == "auto" else [float_layers]
    if any(not name for name in first + last) and float_layers != "none":
        raise ConversionError("the model's first or last convolution has no node name, so it cannot be kept in "
                              "float; use --float-layers none")
    seen, candidates = set(), []
    for name in order:
        key = tuple(choices[name])
        if key not in seen:
            seen.add(key)
            candidates.append((name, choices[name]))
    return candidates


class _Reader:
    """onnxruntime's calibration data reader over prepared samples, read as it asks for them."""

    def __init__(self, name: str, samples: Iterable[Sample]) -> None:
        self.inputs = ({name: s.x} for s in samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.inputs, None)


def _calibrate(model: Path, name: str, inputs: CalibrationSet, method: str, tmp: Path) -> Path | None:
    """The activation ranges of `samples` in onnxruntime's calibration cache file; one image at a time, so images of
    any size calibrate together and a histogram method holds one image's activations at once. None with an
    onnxruntime too old to take a cache (`quantize_static` then calibrates on its own)."""
    import inspect

    from onnxruntime.quantization import create_calibrator, quantize_static

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        return None
    from onnxruntime.quantization import save_tensors_data
    calibrator = create_calibrator(model, augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=_method(method))
    try:
        for sample in inputs.samples():
            calibrator.collect_data(_Reader(name, [sample]))
        ranges = calibrator.compute_data()
    except ConversionError:  # an input that cannot be read, named by its file
        raise
    except Exception as e:  # onnxruntime and numpy errors from deep inside the calibrator
        raise ConversionError(f"{model}: calibration failed ({first_line(e, named=True)})") from None
    cache = tmp / "ranges.json"
    save_tensors_data(ranges, cache)
    return cache


def _method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


def _quantize_static(model: Path, out: Path, ranges: Path | None, method: str, exclude: list[str],
                     reader: _Reader, full_range: bool) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    cached = {"calibration_cache_path": str(ranges)} if ranges is not None else {}
    try:
        quantize_static(str(model), str(out), None if cached else reader, quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=not full_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        calibrate_method=_method(method), nodes_to_exclude=list(exclude), **cached)
    except Exception as e:
        raise ConversionError(f"{model}: onnxruntime could not quantize it ({first_line(e, named=True)})") from None


def _drift(path: Path, source: DenseModel, inputs: CalibrationSet) -> Drift:
    """The drift of the quantized `path` from `source` on the held-out inputs and the mosaics of the small ones,
    read one at a time (the float32 scores are recomputed rather than kept: memory holds one input's)."""
    model = DenseModel(path)

    def measured() -> Iterator[np.ndarray]:
        for sample in inputs.held_out_samples():
            yield sample.x
            if sample.x[0, 0].size <= MOSAIC_PIXELS:
                yield _mosaic(sample.x)

    return measure((source.infer(x), model.infer(x)) for x in measured())


def _mosaic(x: np.ndarray) -> np.ndarray:
    """The 1×C×(spatial) input `x` repeated twice along every spatial axis: a larger input of the same content."""
    return np.tile(x, (1, 1, *(2,) * (x.ndim - 2)))


def _fold_identities(graph, model: Path, tmp: Path) -> Path:
    """`model`, or a copy in `tmp` whose Identity nodes on initializers are folded into initializers of their own
    (see the module docstring); node names are kept, so `float_layers` names the source's nodes."""
    import onnx

    constants = {tensor.name: tensor for tensor in graph.graph.initializer}
    folded = [node for node in graph.graph.node if node.op_type == "Identity" and node.input[0] in constants]
    if not folded:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(graph)
    for node in folded:
        tensor = copy.graph.initializer.add()
        tensor.CopyFrom(constants[node.input[0]])
        tensor.name = node.output[0]
    kept = [node for node in copy.graph.node if not (node.op_type == "Identity" and node.input[0] in constants)]
    del copy.graph.node[:]
    copy.graph.node.extend(kept)
    path = tmp / "source.onnx"
    onnx.save(copy, str(path))
    return path


def _check_dynamic(source, result, path: Path) -> None:
    """The quantized graph keeps the source's input dims (symbolic batch and spatial axes) and symbolic output
    spatial axes."""

    def dims(value) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    if dims(result.graph.input[0]) != dims(source.graph.input[0]) or \
            any(isinstance(d, int) and d > 0 for d in dims(result.graph.output[0])[2:]):
        raise ConversionError(f"{path}: quantization fixed the model's sizes (input {dims(source.graph.input[0])} "
                              f"became {dims(result.graph.input[0])}, output {dims(result.graph.output[0])})")


def _set_metadata(proto, values: dict[str, Any]) -> None:
    """The fc2conv metadata of `proto` extended by `values` (replacing entries of the same keys)."""
    import json

    entries = {PREFIX + key: json.dumps(value) for key, value in values.items()}
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    for key, value in [*kept, *entries.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantizer logs advice on the root logger ("consider pre-processing") and its histogram
    calibrators print their progress on stdout (where `--json` output goes); fc2conv reports itself."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
