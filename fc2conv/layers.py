"""The modules a conversion puts into a network.

`LinearConv2d` is a real `nn.Conv2d` (isinstance holds, `torch.export` and ONNX see a `Conv`), but in eager
mode it computes the same sums as a GEMM: PyTorch's CPU convolution is several times slower than the
equal matrix product for the large kernels a converted head has (a 7×7 kernel over 512 channels), so
- on an input exactly the kernel's size it is `F.linear` on the flattened input;
- on a larger input it is im2col (`F.unfold`) followed by one batched matrix product.
While any tracer or exporter is running it is a plain `Conv2d`, so exported graphs hold one `Conv` node.

`ChannelLayerNorm` is `LayerNorm` over the channel dimension of an N×C×H×W tensor, what a
`LayerNorm(C)` on a vector becomes once the vector is a 1×1 map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ChannelLayerNorm", "LinearConv2d"]


def _tracing() -> bool:
    return (
        torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.fx._symbolic_trace.is_fx_symbolic_tracing()
        or torch.onnx.is_in_onnx_export()
    )


class LinearConv2d(nn.Conv2d):
    """A stride-1, unpadded `Conv2d` that runs at matrix-product speed in eager mode.

    Numerically it is the convolution: both paths sum the same products, in a different order, so results
    agree to rounding (float32 ≈ 1e-6 relative). Its weight may be a view of a Linear's weight.
    """

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> LinearConv2d:
        """A convolution whose parameters share storage with `weight` (out×C×h×w) and `bias` (no copy)."""
        out_channels, in_channels, h, w = weight.shape
        conv = cls(in_channels, out_channels, (h, w), bias=bias is not None, device="meta", dtype=weight.dtype)
        conv.weight = nn.Parameter(weight.detach())
        conv.bias = None if bias is None else nn.Parameter(bias.detach())
        return conv

    @property
    def _is_plain(self) -> bool:
        return (self.stride, self.padding, self.dilation, self.groups) == ((1, 1), (0, 0), (1, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _tracing() or not self._is_plain or x.dim() != 4:
            # Exporters and tracers see the plain convolution: one ONNX `Conv`, one `aten.conv2d`.
            return super().forward(x)
        n, _, height, width = x.shape
        kh, kw = self.kernel_size
        weight = self.weight.reshape(self.out_channels, -1)
        if (height, width) == (kh, kw):
            return F.linear(x.reshape(n, -1), weight, self.bias).view(n, self.out_channels, 1, 1)
        out_h, out_w = height - kh + 1, width - kw + 1
        if (kh, kw) == (1, 1):
            # A 1×1 convolution is a Linear over the channels of every pixel.
            return F.linear(x.permute(0, 2, 3, 1), weight, self.bias).permute(0, 3, 1, 2)
        out = weight @ F.unfold(x, (kh, kw))  # (out × c·kh·kw) @ (n × c·kh·kw × windows)
        if self.bias is not None:
            out += self.bias.view(-1, 1)
        return out.view(n, self.out_channels, out_h, out_w)


class ChannelLayerNorm(nn.LayerNorm):
    """`LayerNorm` over dimension 1 of an N×C×H×W tensor (torchvision's `LayerNorm2d`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)
