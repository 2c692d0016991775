"""fc2conv without PyTorch: run exported models (`DenseModel`, `heatmap`), scan images of any size (`scan`) and
quantize models to int8 (`quantize`), with numpy, onnxruntime, Pillow and, for scanning, Dask, zarr and tifffile;
OpenVINO as another backend. Never imports torch (tested with torch blocked); `scan` and `quantize` load their
libraries on first use.

    from fc2conv.runtime import DenseModel, heatmap, quantize, scan
    result = DenseModel("resnet18.onnx").run("photo.jpg")          # one pass: `fc2conv.inference`
    scan("slide.tif", model="resnet18.onnx", out="slide.zarr")      # tile by tile: `fc2conv.scan`
    quantize("resnet18.onnx", "resnet18_int8.onnx", "images/")      # int8, drift measured: `fc2conv.quantize`
    DenseModel("resnet18_int8.onnx", backend="openvino")            # `fc2conv.backends`
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .images import ImageLike, load_image
from .inference import DenseModel, Prediction, Result, colormap, heatmap
from .metadata import PREFIX as METADATA_PREFIX

if TYPE_CHECKING:
    from .quantize import quantize
    from .scan import scan

__all__ = ["METADATA_PREFIX", "DenseModel", "ImageLike", "Prediction", "Result", "colormap", "heatmap", "load_image",
           "quantize", "scan"]


def __getattr__(name: str) -> Any:
    if name in ("scan", "quantize"):
        return getattr(import_module(f"fc2conv.{name}"), name)
    raise AttributeError(f"module 'fc2conv.runtime' has no attribute {name!r}")
