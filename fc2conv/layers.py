"""The modules a conversion puts into a network.

`LinearConv2d` is a real `nn.Conv2d` (isinstance holds, `torch.export` and ONNX see a `Conv`), but in eager
mode it computes the same sums as a GEMM: PyTorch's CPU convolution is several times slower than the
equal matrix product for the large kernels a converted head has (a 7×7 kernel over 512 channels), so
- on an input exactly the kernel's size it is `F.linear` on the flattened input;
- on a larger input it is im2col (`F.unfold`) followed by one batched matrix product.
`LinearConv1d` and `LinearConv3d` do the same for signals and volumes (im2col by `Tensor.unfold`).
While any tracer or exporter is running it is a plain `Conv2d`, so exported graphs hold one `Conv` node.

`ChannelLayerNorm` is `LayerNorm` over the channel dimension of an N×C×H×W tensor, what a
`LayerNorm(C)` on a vector becomes once the vector is a 1×1 map.

`DilatedAverage` is an average pool whose divisor changes at the border (ceil mode, or zero padding that is
not counted) run with stride 1 and a dilated kernel, as `fc2conv.conversion.density` rarefies it.

`SamePad` is TensorFlow's SAME padding, widths computed from the input's size at run time in a form that every
exporter keeps symbolic (`fc2conv.tracing.padding` puts it where a library computes them in Python).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .compat import is_fx_tracing

__all__ = [
    "ChannelLayerNorm", "DilatedAverage", "LinearConv", "LinearConv1d", "LinearConv2d", "LinearConv3d", "SamePad",
    "im2col", "linear_conv", "pad_widths",
]


def _tracing() -> bool:
    return (
        torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or is_fx_tracing()
        or torch.onnx.is_in_onnx_export()
    )


class _LinearConv:
    """A stride-1, unpadded convolution (dilated or not) that runs at matrix-product speed in eager mode.

    Numerically it is the convolution: both paths sum the same products, in a different order, so results
    agree to rounding (float32 ≈ 1e-6 relative). Its weight may be a view of a Linear's weight.
    """

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None):
        """A convolution whose parameters share storage with `weight` (out×C×kernel) and `bias` (no copy)."""
        out_channels, in_channels, *kernel = weight.shape
        conv = cls(in_channels, out_channels, tuple(kernel), bias=bias is not None, device="meta", dtype=weight.dtype)
        conv.weight = nn.Parameter(weight.detach())
        conv.bias = None if bias is None else nn.Parameter(bias.detach())
        return conv

    @property
    def _is_plain(self) -> bool:
        ones, zeros = (1,) * len(self.kernel_size), (0,) * len(self.kernel_size)
        return (self.stride, self.padding, self.groups) == (ones, zeros, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.out_channels == 1 and torch.compiler.is_exporting():
            # torch.export's fake convolution (checked on torch 2.9-2.14) guards "more than one output cell" when a
            # convolution has one output channel, so a one-score head (a regression, a one-logit binary classifier)
            # would refuse its own reference size, where the map is 1×1. Two equal channels, then one, avoid it.
            bias = None if self.bias is None else self.bias.expand(2)
            return self._conv_forward(x, self.weight.expand(2, *self.weight.shape[1:]), bias)[:, :1]
        if _tracing() or not self._is_plain or x.dim() != self.weight.dim():
            # Exporters and tracers see the plain convolution: one ONNX `Conv`, one `aten.convolution`.
            return super().forward(x)
        n, kernel, spatial, dilation = x.shape[0], tuple(self.kernel_size), tuple(x.shape[2:]), tuple(self.dilation)
        weight = self.weight.reshape(self.out_channels, -1)
        if all(k == 1 for k in kernel):
            # A 1×1 convolution is a Linear over the channels of every position.
            return F.linear(x.movedim(1, -1), weight, self.bias).movedim(-1, 1)
        if spatial == kernel and all(d == 1 for d in dilation):
            return F.linear(x.reshape(n, -1), weight, self.bias).view(n, self.out_channels, *(1,) * len(kernel))
        out = weight @ im2col(x, kernel, dilation)  # (out × c·k) @ (n × c·k × windows)
        if self.bias is not None:
            out += self.bias.view(-1, 1)
        extent = (d * (k - 1) for d, k in zip(dilation, kernel, strict=True))
        return out.view(n, self.out_channels, *(s - e for s, e in zip(spatial, extent, strict=True)))


def im2col(x: torch.Tensor, kernel: tuple[int, ...], dilation: tuple[int, ...] | None = None) -> torch.Tensor:
    """im2col: every stride-1 window of `x` (N×C×spatial), its taps `dilation` apart, as the columns of an
    N × C·prod(kernel) × windows tensor, in the order of the convolution's flattened weight."""
    dilation = dilation or (1,) * len(kernel)
    if len(kernel) == 2:
        return F.unfold(x, kernel, dilation=dilation)
    n, c = x.shape[:2]
    for axis, (k, d) in enumerate(zip(kernel, dilation, strict=True)):
        x = x.unfold(2 + axis, d * (k - 1) + 1, 1)[..., ::d]  # N × C × out… × k…
    rank = len(kernel)
    order = (0, 1, *range(2 + rank, 2 + 2 * rank), *range(2, 2 + rank))
    return x.permute(order).reshape(n, c * math.prod(kernel), -1)


class LinearConv1d(_LinearConv, nn.Conv1d):
    """A `Conv1d` (over N×C×L signals) that runs at matrix-product speed in eager mode."""


class LinearConv2d(_LinearConv, nn.Conv2d):
    """A `Conv2d` that runs at matrix-product speed in eager mode."""


class LinearConv3d(_LinearConv, nn.Conv3d):
    """A `Conv3d` (over N×C×D×H×W volumes and clips) that runs at matrix-product speed in eager mode."""


LinearConv = LinearConv1d | LinearConv2d | LinearConv3d


def linear_conv(weight: torch.Tensor, bias: torch.Tensor | None) -> LinearConv:
    """The `LinearConv1d`, `LinearConv2d` or `LinearConv3d` (by the weight's rank) sharing `weight` and `bias`."""
    kinds = {3: LinearConv1d, 4: LinearConv2d, 5: LinearConv3d}
    return kinds[weight.dim()].from_weight(weight, bias)


class ChannelLayerNorm(nn.LayerNorm):
    """`LayerNorm` over dimension 1 of an N×C×(spatial) tensor (torchvision's `LayerNorm2d` for 2-D maps)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Permutations spelled out: the ONNX exporter writes movedim(1, -1) as a Transpose with a negative axis.
        rank = x.dim()
        x = x.permute(0, *range(2, rank), 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, rank - 1, *range(1, rank - 1))


def pad_widths(before: tuple[int, ...], after: tuple[int, ...]) -> list[int]:
    """`F.pad`'s widths for padding each spatial axis by `before` and `after` positions (last axis first)."""
    return [p for b, a in reversed(list(zip(before, after, strict=True))) for p in (b, a)]


class DilatedAverage(nn.Module):
    """An average pool with stride 1 and a kernel dilated by `dilation`, padded by `before` and `after` positions
    on each axis (the last `after − before` being the overflow of a pool in ceil mode), dividing every window by
    what PyTorch's pool divides it by: the positions it covers in the input and, if `count_padding`, in the
    `before` padding on either side, never in the overflow."""

    def __init__(self, channels: int, kernel: tuple[int, ...], dilation: tuple[int, ...], before: tuple[int, ...],
                 after: tuple[int, ...], count_padding: bool):
        super().__init__()
        self.dilation, self.count_padding = dilation, count_padding
        self.pads = pad_widths(before, after)
        self.symmetric = pad_widths(before, before)
        self.overflow = pad_widths((0,) * len(before), tuple(a - b for b, a in zip(before, after, strict=True)))
        self.register_buffer("weight", torch.ones(channels, 1, *kernel), persistent=False)
        self.conv = (F.conv1d, F.conv2d, F.conv3d)[len(kernel) - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.conv(F.pad(x, self.pads), self.weight, dilation=self.dilation, groups=x.shape[1])
        inside = torch.ones_like(x[:, :1])
        if self.count_padding:
            counted = F.pad(F.pad(inside, self.symmetric, value=1.0), self.overflow)
        else:
            counted = F.pad(inside, self.pads)
        return total / self.conv(counted, self.weight[:1], dilation=self.dilation)


class SamePad(nn.Module):
    """TensorFlow's SAME padding before a window of `kernel` positions moving by `stride`, per spatial axis: in all
    max((⌈size / stride⌉ − 1)·stride + kernel − size, 0) positions, half of them (rounded down) before, each width
    times `scale`, filled with `value`.

    The widths depend on the input's size, so they are computed at run time: with Python ints in eager mode, with
    `torch.sym_max` under `torch.export` (no guard on the size), and with tensor ops while the TorchScript ONNX
    exporter traces (where sizes are tensors), so the exported Pad follows the size too."""

    def __init__(self, kernel: tuple[int, ...], stride: tuple[int, ...], scale: tuple[int, ...] | None = None,
                 value: float = 0.0):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.scale, self.value = tuple(scale or (1,) * len(self.kernel)), float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        widths = []
        for axis in reversed(range(len(self.kernel))):  # F.pad takes the last axis first
            total = _same_width(x.shape[x.dim() - len(self.kernel) + axis], self.kernel[axis], self.stride[axis])
            before = total // 2
            widths += [before * self.scale[axis], (total - before) * self.scale[axis]]
        return F.pad(x, widths, value=self.value)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, scale={self.scale}, value={self.value}"


def _same_width(size, kernel: int, stride: int):
    """SAME's padding of an axis of `size` (an int, a SymInt, or a tensor while the ONNX exporter traces)."""
    if kernel >= stride:  # ≥ 0 as it is; written so that torch.export finds the output size of the window that follows
        # as (size − 1) // stride + 1, the same expression as an unpadded 1×1 shortcut of that stride
        return stride * ((size - 1) // stride) + kernel - size
    if kernel <= 1:
        return 0
    width = kernel - 1 - (size - 1) % stride
    if isinstance(width, torch.Tensor):
        return torch.clamp(width, min=0)
    return torch.sym_max(width, 0) if isinstance(width, torch.SymInt) else max(width, 0)
