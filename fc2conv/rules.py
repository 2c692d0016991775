"""The maths of each rewrite, on modules and tensors only (no graphs).

- Global convolution. A Linear on flattened features x ∈ R^{C×h×w} computes
  y_o = b_o + Σ_{c,i,j} W[o, c·h·w + i·w + j] · x[c, i, j], which is `Conv2d(C, out, (h, w))` with weight
  `W.view(out, C, h, w)` evaluated where the kernel covers x. With h = w = 1 it is a 1×1 convolution.
- Adaptive average pool folding. `adaptive_avg_pool2d` from H×W to h×w is linear and separable:
  pooled[c] = P_H · x[c] · P_Wᵀ with P_H[i, :] averaging rows ⌊iH/h⌋ … ⌈(i+1)H/h⌉ − 1. A Linear after it
  is therefore the convolution with kernel H×W and weight W'[o, c] = P_Hᵀ · W[o, c] · P_W.
- BatchNorm1d on vectors is BatchNorm2d on 1×1 maps with the same statistics and affine parameters.
- LayerNorm(C) on vectors is LayerNorm over the channels of 1×1 maps.
- A global pool over an h×w map is the window pool of size h×w and stride 1 at that size; on a larger map
  it slides, giving one pooled vector per window.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import ChannelLayerNorm, LinearConv2d

__all__ = [
    "adaptive_pool_matrix",
    "batchnorm_to_2d",
    "fold_adaptive_avg_pool",
    "layernorm_to_channels",
    "linear_to_conv",
    "window_pool",
]


def linear_to_conv(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    channels: int,
    kernel: tuple[int, int],
    *,
    fold_from: tuple[int, int] | None = None,
) -> LinearConv2d:
    """The convolution equal to `F.linear(x.flatten(1), weight, bias)` on C×h×w features.

    The weight is a view of `weight` (no copy) unless an adaptive average pool from `fold_from` is folded
    in, which needs new weights of kernel `fold_from`.
    """
    out_features, in_features = weight.shape
    h, w = kernel
    if in_features != channels * h * w:
        raise ValueError(f"Linear takes {in_features} features, not {channels}×{h}×{w} = {channels * h * w}")
    conv_weight = weight.view(out_features, channels, h, w)
    if fold_from is not None:
        conv_weight = fold_adaptive_avg_pool(conv_weight, fold_from)
    return LinearConv2d.from_weight(conv_weight, bias)


def adaptive_pool_matrix(size_in: int, size_out: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The size_out × size_in matrix of `adaptive_avg_pool1d` (PyTorch's start/end index rule)."""
    matrix = torch.zeros(size_out, size_in, dtype=dtype)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -(-((i + 1) * size_in) // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def fold_adaptive_avg_pool(weight: torch.Tensor, size_in: tuple[int, int]) -> torch.Tensor:
    """Weights out×C×H×W equal to applying `weight` (out×C×h×w) after an adaptive pool from H×W to h×w."""
    _, _, h, w = weight.shape
    rows = adaptive_pool_matrix(size_in[0], h).to(weight.dtype)
    cols = adaptive_pool_matrix(size_in[1], w).to(weight.dtype)
    return torch.einsum("ocij,ia,jb->ocab", weight.detach(), rows, cols).contiguous()


def batchnorm_to_2d(bn: nn.BatchNorm1d) -> nn.BatchNorm2d:
    """A BatchNorm2d sharing `bn`'s statistics and affine parameters (no copy)."""
    bn2d = nn.BatchNorm2d(
        bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
        track_running_stats=bn.track_running_stats, device="meta",
    )
    for name in ("weight", "bias"):
        setattr(bn2d, name, getattr(bn, name))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        setattr(bn2d, name, getattr(bn, name))
    return bn2d.train(bn.training)


def layernorm_to_channels(ln: nn.LayerNorm) -> ChannelLayerNorm:
    """A LayerNorm over dimension 1 of N×C×H×W maps, sharing `ln`'s parameters (no copy)."""
    (channels,) = ln.normalized_shape
    channel_ln = ChannelLayerNorm(channels, eps=ln.eps, elementwise_affine=False, device="meta")
    channel_ln.weight, channel_ln.bias = ln.weight, ln.bias
    return channel_ln


def window_pool(kind: str, size: tuple[int, int]) -> nn.Module:
    """The stride-1 pool of window `size` that equals a global `kind` ("avg" or "max") pool at that size."""
    if kind == "avg":
        return nn.AvgPool2d(size, stride=1)
    return nn.MaxPool2d(size, stride=1)
