"""ONNX support for fc2conv.

`export_onnx` (`export`, PyTorch) writes a converted model to ONNX; `convert_onnx` rewrites ONNX graphs with `onnx`,
`onnxruntime` and `numpy` only, in the torch-free wing (`fc2conv.runtime.onnx`). Both load lazily, so
`import fc2conv.onnx` (and `convert_onnx`) works on a machine without PyTorch.
"""

from importlib import import_module
from typing import TYPE_CHECKING

__all__ = ["convert_onnx", "export_onnx"]

_HOMES = {"convert_onnx": "..runtime.onnx.convert", "export_onnx": ".export"}

if TYPE_CHECKING:
    from ..runtime.onnx.convert import convert_onnx
    from .export import export_onnx


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module 'fc2conv.onnx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
