"""fc2conv without PyTorch: run exported models (`DenseModel`, `heatmap`), scan images of any size (`scan`) and
quantize models to int8 (`quantize`), with numpy, onnxruntime, Pillow and, for scanning, Dask, zarr and tifffile;
OpenVINO as another backend.

    from fc2conv.runtime import DenseModel, heatmap, quantize, scan
    result = DenseModel("resnet18.onnx").run("photo.jpg")          # one pass: `fc2conv.runtime.model`
    scan("slide.tif", model="resnet18.onnx", out="slide.zarr")      # tile by tile: `fc2conv.scan`
    quantize("resnet18.onnx", "resnet18_int8.onnx", "images/")      # int8: `fc2conv.runtime.quantization`
    DenseModel("resnet18_int8.onnx", backend="openvino")            # `fc2conv.runtime.backends`

This package is the torch-free wing: its own modules run a model (`model`, `result`, `images`, `arrays`, `backends`,
`cpu`) and quantize one (`quantization` with `calibration`, `float_layers`, `qdq` and `drift`); `files` writes
every output atomically and keeps outputs apart from inputs; `onnx` rewrites ONNX heads (`fc2conv.convert_onnx`);
`scanning` is the scanner and `viewer` the viewer, imported as `fc2conv.scan` and `fc2conv.viewer`. Nothing in it
imports torch, and neither may anything it imports: only the bottom both sides share (`fc2conv.errors`,
`fc2conv.shapes`, `fc2conv.metadata`, `fc2conv.tolerance`); `tests/test_imports.py` imports all of it with torch
blocked. The names below load lazily, so `import fc2conv.runtime` loads neither Pillow nor a backend.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = ["METADATA_PREFIX", "DenseModel", "ImageLike", "Prediction", "Result", "ScanOptions", "ScanResult",
           "colormap", "heatmap", "load_image", "quantize", "scan", "scan_with"]

# Where each public name lives, relative to this package.
_HOMES = {
    "DenseModel": ".model", "Prediction": ".result", "Result": ".result", "colormap": ".model", "heatmap": ".model",
    "ImageLike": ".images", "load_image": ".images", "quantize": ".quantization", "scan": ".scanning",
    "ScanOptions": ".scanning", "ScanResult": ".scanning", "scan_with": ".scanning",
}

if TYPE_CHECKING:
    from ..metadata import PREFIX as METADATA_PREFIX
    from .images import ImageLike, load_image
    from .model import DenseModel, colormap, heatmap
    from .quantization import quantize
    from .result import Prediction, Result
    from .scanning import ScanOptions, ScanResult, scan, scan_with


def __getattr__(name: str) -> Any:
    if name == "METADATA_PREFIX":
        return import_module("..metadata", __name__).PREFIX
    if name in _HOMES:
        return getattr(import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module 'fc2conv.runtime' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
