"""fc2conv: make CNN classifiers fully convolutional, and prove the result is the same network.

    import fc2conv
    dense = fc2conv.convert(model, input_shape=(3, 224, 224))   # Linear heads → Conv2d
    print(fc2conv.verify(model, dense))                          # max error at 224 and larger
    fc2conv.geometry(dense).box(i, j)                            # input box of output cell (i, j)

The names below load lazily, so `fc2conv.runtime` (numpy, onnxruntime and Pillow only) never imports torch.
"""

from importlib import import_module
from typing import TYPE_CHECKING

from . import aliases

aliases.install()  # `fc2conv.scan` and `fc2conv.viewer` are the torch-free wing's scanner and viewer

__all__ = [
    "BackendError", "ConversionError", "Fc2convError", "Geometry", "InputError", "Recipe", "ScanError",
    "allowed_densities", "convert", "convert_onnx", "export_onnx", "geometry", "load", "plan", "save", "verify",
]

_HOMES = {
    "BackendError": "errors",
    "ConversionError": "errors",
    "Fc2convError": "errors",
    "InputError": "errors",
    "ScanError": "errors",
    "Geometry": "conversion.geometry",
    "allowed_densities": "conversion.density",
    "convert": "conversion.rewrite",
    "geometry": "conversion.geometry",
    "plan": "conversion.rewrite",
    "verify": "conversion.verification",
    "convert_onnx": "runtime.onnx.convert",
    "export_onnx": "onnx.export",
    "Recipe": "storage.recipe",
    "load": "storage.artifact",
    "save": "storage.artifact",
}

if TYPE_CHECKING:
    from .conversion.density import allowed_densities
    from .conversion.geometry import Geometry, geometry
    from .conversion.rewrite import convert, plan
    from .conversion.verification import verify
    from .errors import BackendError, ConversionError, Fc2convError, InputError, ScanError
    from .onnx.export import export_onnx
    from .runtime.onnx.convert import convert_onnx
    from .storage.artifact import load, save
    from .storage.recipe import Recipe


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'fc2conv' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
