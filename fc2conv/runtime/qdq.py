"""onnxruntime's static quantizer as `fc2conv quantize` drives it (`fc2conv.runtime.quantization`): the source's
constant Identity nodes folded, activation ranges calibrated one input at a time into onnxruntime's cache, QDQ models
written with some layers kept in float, and the result checked and given fc2conv's metadata. onnx and onnxruntime;
no torch."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, ConversionError, InputError, translated
from ..metadata import PREFIX
from .calibration import CalibrationSet, Sample

__all__ = [
    "Reader",
    "calibrate",
    "check_dynamic",
    "fold_identities",
    "load",
    "quiet",
    "set_metadata",
    "write_qdq",
]


def load(path: Path):
    import onnx

    with translated(InputError, f"{path}: onnx cannot read it (", end=")"):  # protobuf's DecodeError and friends
        return onnx.load(str(path))


class Reader:
    """onnxruntime's calibration data reader over prepared samples, read as it asks for them."""

    def __init__(self, name: str, samples: Iterable[Sample]) -> None:
        self.inputs = ({name: s.x} for s in samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.inputs, None)


def calibrate(model: Path, name: str, inputs: CalibrationSet, method: str, tmp: Path) -> Path | None:
    """The activation ranges of `samples` in onnxruntime's calibration cache file; one image at a time, so images of
    any size calibrate together and a histogram method holds one image's activations at once. None with an
    onnxruntime too old to take a cache (`quantize_static` then calibrates on its own)."""

    from onnxruntime.quantization import create_calibrator, quantize_static

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        return None
    from onnxruntime.quantization import save_tensors_data
    calibrator = create_calibrator(model, augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=calibration_method(method))
    # onnxruntime and numpy errors from deep inside the calibrator; an input that cannot be read passes, named by
    # its file
    with translated(BackendError, f"{model}: calibration failed (", end=")", named=True):
        for sample in inputs.samples():
            calibrator.collect_data(Reader(name, [sample]))
        ranges = calibrator.compute_data()
    cache = tmp / "ranges.json"
    save_tensors_data(ranges, cache)
    return cache


def calibration_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


def write_qdq(model: Path, out: Path, ranges: Path | None, method: str, exclude: list[str],
                     reader: Reader, full_range: bool) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    cached = {"calibration_cache_path": str(ranges)} if ranges is not None else {}
    with translated(BackendError, f"{model}: onnxruntime could not quantize it (", end=")", named=True):
        quantize_static(str(model), str(out), None if cached else reader, quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=not full_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        calibrate_method=calibration_method(method), nodes_to_exclude=list(exclude), **cached)


def fold_identities(graph, model: Path, tmp: Path) -> Path:
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


def check_dynamic(source, result, path: Path) -> None:
    """The quantized graph keeps the source's input dims (symbolic batch and spatial axes) and symbolic output
    spatial axes."""

    def dims(value) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    if dims(result.graph.input[0]) != dims(source.graph.input[0]) or \
            any(isinstance(d, int) and d > 0 for d in dims(result.graph.output[0])[2:]):
        raise ConversionError(f"{path}: quantization fixed the model's sizes (input {dims(source.graph.input[0])} "
                              f"became {dims(result.graph.input[0])}, output {dims(result.graph.output[0])})")


def set_metadata(proto, values: dict[str, Any]) -> None:
    """The fc2conv metadata of `proto` extended by `values` (replacing entries of the same keys)."""

    entries = {PREFIX + key: json.dumps(value) for key, value in values.items()}
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    for key, value in [*kept, *entries.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


@contextlib.contextmanager
def quiet() -> Iterator[None]:
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
