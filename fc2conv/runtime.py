"""fc2conv without PyTorch: run exported models (`DenseModel`, `heatmap`) and scan images of any size (`scan`), with
numpy, onnxruntime, Pillow and, for scanning, Dask, zarr and tifffile. Never imports torch (tested with torch
blocked); `scan` loads its libraries on first use.

    from fc2conv.runtime import DenseModel, heatmap, scan
    result = DenseModel("resnet18.onnx").run("photo.jpg")          # one pass: `fc2conv.inference`
    scan("slide.tif", model="resnet18.onnx", out="slide.zarr")      # tile by tile: `fc2conv.scan`
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .images import ImageLike, load_image
from .inference import DenseModel, Prediction, Result, colormap, heatmap
from .metadata import PREFIX as METADATA_PREFIX

if TYPE_CHECKING:
    from .scan import scan

__all__ = ["METADATA_PREFIX", "DenseModel", "ImageLike", "Prediction", "Result", "colormap", "heatmap", "load_image",
           "scan"]


def __getattr__(name: str) -> Any:
    if name == "scan":
        return import_module("fc2conv.scan").scan
    raise AttributeError(f"module 'fc2conv.runtime' has no attribute {name!r}")
