"""fc2conv: make CNN classifiers fully convolutional, and prove the result is the same network.

    import fc2conv
    dense = fc2conv.convert(model, input_shape=(3, 224, 224))   # Linear heads → Conv2d
    print(fc2conv.verify(model, dense))                          # max error at 224 and larger
    fc2conv.geometry(dense).box(i, j)                            # input box of output cell (i, j)

The names below load lazily, so `fc2conv.runtime` (numpy, onnxruntime and Pillow only) never imports torch.
"""

from importlib import import_module
from typing import TYPE_CHECKING

__all__ = [
    "ConversionError", "Geometry", "Recipe", "convert", "convert_onnx", "export_onnx", "geometry", "load", "plan",
    "save", "verify",
]

_HOMES = {
    "ConversionError": "errors",
    "Geometry": "grid",
    "convert": "rewrite",
    "geometry": "grid",
    "plan": "rewrite",
    "verify": "verification",
    "convert_onnx": "onnx.convert",
    "export_onnx": "onnx.export",
    "Recipe": "recipe",
    "load": "artifact",
    "save": "artifact",
}

if TYPE_CHECKING:
    from .artifact import load, save
    from .errors import ConversionError
    from .grid import Geometry, geometry
    from .onnx.convert import convert_onnx
    from .onnx.export import export_onnx
    from .recipe import Recipe
    from .rewrite import convert, plan
    from .verification import verify


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'fc2conv' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
