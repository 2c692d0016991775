"""Every private PyTorch API fc2conv uses, in one place, each with why it is needed and a fallback where the
public API can stand in.

Checked on torch 2.13.0 and 2.14.1 (CI installs 2.14.1, `scripts/constraints.txt`). A torch that moves or removes
one of these names fails here, at import, naming it, rather than deep inside a conversion; `tests/test_compat.py`
checks what each returns against the installed torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.fx._symbolic_trace as _symbolic_trace
from torch import nn
from torch.fx.passes import shape_prop as _shape_prop

__all__ = [
    "CHECKED_TORCH",
    "BatchNormBase",
    "DropoutBase",
    "InstanceNormBase",
    "is_fx_tracing",
    "original_module_methods",
    "size_oblivious_export",
    "tensor_metadata",
]

CHECKED_TORCH = ("2.13.0", "2.14.1")

# The common bases of BatchNorm1d/2d/3d (and SyncBatchNorm, LazyBatchNorm*), of InstanceNorm1d/2d/3d and of every
# Dropout: private classes, but the only way to recognise a user's subclass of any of them at once.
BatchNormBase: type[nn.Module] = nn.modules.batchnorm._BatchNorm
InstanceNormBase: type[nn.Module] = nn.modules.instancenorm._InstanceNorm
DropoutBase: type[nn.Module] = nn.modules.dropout._DropoutNd


def tensor_metadata(value: torch.Tensor) -> Any:
    """The `TensorMetadata` ShapeProp stores in `node.meta["tensor_meta"]` (shape, dtype, strides, ...), which
    fc2conv's quiet shape propagation writes the same way so every torch.fx pass reads it."""
    return _shape_prop._extract_tensor_metadata(value)


def is_fx_tracing() -> bool:
    """Whether torch.fx's symbolic tracer is running (`torch.fx._symbolic_trace.is_fx_symbolic_tracing`; public
    `torch.fx` has no such query)."""
    return _symbolic_trace.is_fx_symbolic_tracing()


def original_module_methods() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """`nn.Module.__call__` and `__getattr__` as they were before torch.fx's tracer patched them: meta-tensor runs
    inside a trace need the unpatched ones (`torch.fx._symbolic_trace._orig_module_call` / `_orig_module_getattr`)."""
    return _symbolic_trace._orig_module_call, _symbolic_trace._orig_module_getattr


def size_oblivious_export() -> contextlib.AbstractContextManager[None]:
    """`torch.export` without guarding "this size is not 1" (`torch.fx.experimental._config.backed_size_oblivious`),
    so a converted model's 1×1 map at the reference size exports with dynamic spatial sizes; a no-op on a torch
    that has no such option (it then did not guard either)."""
    import torch.fx.experimental._config as fx_config

    if hasattr(fx_config, "backed_size_oblivious"):
        return fx_config.patch(backed_size_oblivious=True)
    return contextlib.nullcontext()
