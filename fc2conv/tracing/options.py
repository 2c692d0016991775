"""How a model is traced (`TraceOptions`), shared by the tracers and by what decides to keep code whole."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the options are made where PyTorch is not imported (`Recipe`)
    from torch import nn

__all__ = ["TraceOptions"]


@dataclass(frozen=True)
class TraceOptions:
    """How to trace: module types kept whole, functions kept as one node, fixed forward arguments, and
    submodules (by qualified name) kept whole because the conversion does not touch them."""

    leaf_modules: tuple[type[nn.Module], ...] = ()
    autowrap_functions: tuple[Any, ...] = ()
    concrete_args: dict[str, Any] | None = field(default=None, hash=False)
    leaf_names: frozenset[str] = frozenset()
