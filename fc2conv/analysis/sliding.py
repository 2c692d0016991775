"""Windows that slide over the map, for `fc2conv.analysis.reach`: convolutions, pools and pads, and how far each
moves where a tensor's elements come from in the input."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch.nn.functional as F
from torch import fx, nn

from .ops import arg, shape_of
from .reach_values import Everywhere, Reach, Unknown, Value

__all__ = ["SlidingOps"]


def _per_axis(value: Any, axes: int, default: int | None = None) -> tuple[int, ...] | None:
    """An int or a sequence of ints as one int per axis; None when it is computed at run time."""
    if value is None:
        return None if default is None else (default,) * axes
    if isinstance(value, int):
        return (value,) * axes
    if isinstance(value, list | tuple) and len(value) == axes and all(isinstance(v, int) for v in value):
        return tuple(value)
    return None


class SlidingOps:
    """The reach pass's rules for convolutions, pools and pads (a mixin of its `_Pass`)."""

    def everywhere(self, node: fx.Node, why: str, attention: bool = False, held: Reach | Unknown | None = None
                   ) -> Everywhere:
        raise NotImplementedError

    def unknown(self, node: fx.Node, why: str) -> Unknown:
        raise NotImplementedError

    def window(self, node: fx.Node, callee: Any, source: Reach) -> Value:
        """A sliding window: convolution or pool."""
        k = len(source.axes)
        if isinstance(callee, nn.Module):
            kernel = _per_axis(callee.kernel_size, k)
            stride = _per_axis(callee.stride, k, default=None) or kernel
            padding = callee.padding if isinstance(getattr(callee, "padding", 0), str) else _per_axis(
                getattr(callee, "padding", 0), k)
            dilation = _per_axis(getattr(callee, "dilation", 1), k)
            if getattr(callee, "padding_mode", "zeros") == "circular":
                return self.everywhere(node, "circular padding wraps the map around its edges")
        elif callee in (F.conv1d, F.conv2d, F.conv3d):
            weight = shape_of(node.args[1])
            kernel = None if weight is None else tuple(weight[2:])
            stride = _per_axis(arg(node, 3, "stride", 1), k)
            padding = arg(node, 4, "padding", 0)
            padding = padding if isinstance(padding, str) else _per_axis(padding, k)
            dilation = _per_axis(arg(node, 5, "dilation", 1), k)
        else:
            kernel = _per_axis(arg(node, 1, "kernel_size"), k)
            if kernel is None:  # read from the tensor at run time: the pool covers the whole map
                return self.everywhere(node, "a pool whose kernel is the size of the whole map")
            stride = _per_axis(arg(node, 2, "stride"), k) or kernel
            padding = _per_axis(arg(node, 3, "padding", 0), k)
            dilation = _per_axis(arg(node, 4, "dilation", 1), k) if "max" in callee.__name__ else (1,) * k
        if kernel is None or stride is None or dilation is None or padding is None:
            return self.unknown(node, "its kernel, stride, padding or dilation is computed at run time")
        if padding == "valid":
            padding = (0,) * k
        elif padding == "same":
            padding = tuple(d * (w - 1) // 2 for d, w in zip(dilation, kernel, strict=True))
        lo = tuple(lo - p * s for lo, p, s in zip(source.lo, padding, source.stride, strict=True))
        hi = tuple(hi + (d * (w - 1) - p) * s
                   for hi, d, w, p, s in zip(source.hi, dilation, kernel, padding, source.stride, strict=True))
        return Reach(source.axes, tuple(s * t for s, t in zip(source.stride, stride, strict=True)), lo, hi)

    def pad(self, node: fx.Node, callee: Any, source: Reach) -> Value:
        if isinstance(callee, nn.Module):
            widths, mode = callee.padding, "circular" if "Circular" in type(callee).__name__ else "constant"
        else:
            widths, mode = arg(node, 1, "pad"), arg(node, 2, "mode", "constant")
        if mode == "circular":
            return self.everywhere(node, "circular padding wraps the map around its edges")
        if not isinstance(widths, list | tuple) or not all(isinstance(w, int) for w in widths):
            return self.unknown(node, "its padding is computed at run time (padding that depends on the size)")
        rank = len(shape_of(node))
        before = {rank - 1 - i // 2: w for i, w in enumerate(widths) if i % 2 == 0}  # F.pad: last dim first
        shift = [before.get(axis, 0) * s for axis, s in zip(source.axes, source.stride, strict=True)]
        return replace(source, lo=tuple(lo - d for lo, d in zip(source.lo, shift, strict=True)),
                       hi=tuple(hi - d for hi, d in zip(source.hi, shift, strict=True)))
