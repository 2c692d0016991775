"""fc2conv without PyTorch: run exported models (`DenseModel`, `heatmap`), scan images of any size (`scan`) and
quantize models to int8 (`quantize`), with numpy, onnxruntime, Pillow and, for scanning, Dask, zarr and tifffile;
OpenVINO as another backend.

    from fc2conv.runtime import DenseModel, heatmap, quantize, scan
    result = DenseModel("resnet18.onnx").run("photo.jpg")          # one pass: `fc2conv.runtime.model`
    scan("slide.tif", model="resnet18.onnx", out="slide.zarr")      # tile by tile: `fc2conv.scan`
    quantize("resnet18.onnx", "resnet18_int8.onnx", "images/")      # int8: `fc2conv.runtime.quantization`
    DenseModel("resnet18_int8.onnx", backend="openvino")            # `fc2conv.runtime.backends`

The package's modules: `model` (DenseModel, Result, heatmaps), `images` (images read as their owner sees them),
`metadata` (the `fc2conv.*` ONNX metadata, validated), `backends` (onnxruntime or OpenVINO sessions), `quantization`
with `calibration` and `drift` (static int8 and how far it moves the scores), and `tolerance` (the one error
measure, shared with the PyTorch side). None imports torch, and neither may anything they import
(`tests/test_imports.py` imports them, the scanner and the ONNX-to-ONNX converter with torch blocked). The names
below load lazily, so reading `fc2conv.runtime.metadata` from the PyTorch side loads neither Pillow nor a backend.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = ["METADATA_PREFIX", "DenseModel", "ImageLike", "Prediction", "Result", "ScanOptions", "colormap", "heatmap",
           "load_image", "quantize", "scan", "scan_with"]

# Where each public name lives, relative to this package.
_HOMES = {
    "DenseModel": ".model", "Prediction": ".result", "Result": ".result", "colormap": ".model", "heatmap": ".model",
    "ImageLike": ".images", "load_image": ".images", "quantize": ".quantization", "scan": "..scan",
    "ScanOptions": "..scan", "scan_with": "..scan",
}

if TYPE_CHECKING:
    from ..scan import ScanOptions, scan, scan_with
    from .images import ImageLike, load_image
    from .metadata import PREFIX as METADATA_PREFIX
    from .model import DenseModel, colormap, heatmap
    from .quantization import quantize
    from .result import Prediction, Result


def __getattr__(name: str) -> Any:
    if name == "METADATA_PREFIX":
        return import_module(".metadata", __name__).PREFIX
    if name in _HOMES:
        return getattr(import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module 'fc2conv.runtime' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
