"""The values of `fc2conv.analysis.reach`: where a tensor's elements come from in the input (`Reach`), or that they
depend on all of it (`Everywhere`), or that the pass cannot tell (`Unknown`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ATTENTION", "Everywhere", "Reach", "Unknown", "Value"]

ATTENTION = "attention: it multiplies two input-dependent tensors, so every position sees every other"


@dataclass(frozen=True)
class Reach:
    """Element j along spatial axis a depends on input positions j·stride[a] + lo[a] … j·stride[a] + hi[a]."""

    axes: tuple[int, ...]
    stride: tuple[int, ...]
    lo: tuple[int, ...]
    hi: tuple[int, ...]


@dataclass(frozen=True)
class Unknown:
    """This pass cannot tell where the value comes from, because of `node`."""

    node: str
    why: str


@dataclass(frozen=True)
class Everywhere:
    """Depends on the whole input, because of `node`: `attention` when positions are mixed with each other
    (attention, token mixing), else global context (pools, norms over the map). `held`: where the tensor's
    positions still are (a map scaled by global context), None when they are pooled away or mixed."""

    node: str
    why: str
    attention: bool = False
    held: Reach | Unknown | None = None


Value = Reach | Everywhere | Unknown | None  # None: does not depend on the input at all
