"""The maths of each rewrite, on modules and tensors only (no graphs), for 1, 2 or 3 spatial axes.

- Global convolution. A Linear on flattened features x ∈ R^{C×h×w} computes
  y_o = b_o + Σ_{c,i,j} W[o, c·h·w + i·w + j] · x[c, i, j], which is `Conv2d(C, out, (h, w))` with weight
  `W.view(out, C, h, w)` evaluated where the kernel covers x. With h = w = 1 it is a 1×1 convolution. The
  same holds for C×L features (`Conv1d`, weight `W.view(out, C, L)`) and C×D×H×W volumes (`Conv3d`).
- Adaptive average pool folding. `adaptive_avg_pool2d` from H×W to h×w is linear and separable:
  pooled[c] = P_H · x[c] · P_Wᵀ with P_H[i, :] averaging rows ⌊iH/h⌋ … ⌈(i+1)H/h⌉ − 1. A Linear after it
  is therefore the convolution with kernel H×W and weight W'[o, c] = P_Hᵀ · W[o, c] · P_W (one such matrix
  per spatial axis, in any number of axes).
- BatchNorm1d on vectors is BatchNorm1d/2d/3d on 1×…×1 maps with the same statistics and affine parameters.
- LayerNorm(C) on vectors is LayerNorm over the channels of 1×…×1 maps.
- A global pool over an h×w map is the window pool of size h×w and stride 1 at that size; on a larger map
  it slides, giving one pooled vector per window.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..layers import ChannelLayerNorm, LinearConv, linear_conv
from ..shapes import times

__all__ = [
    "adaptive_pool_matrix",
    "batchnorm_to_maps",
    "fold_adaptive_avg_pool",
    "layernorm_to_channels",
    "linear_to_conv",
    "window_pool",
]


def linear_to_conv(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    channels: int,
    kernel: tuple[int, ...],
    *,
    fold_from: tuple[int, ...] | None = None,
) -> LinearConv:
    """The convolution (1-D, 2-D or 3-D, by the length of `kernel`) equal to `F.linear(x.flatten(1), weight,
    bias)` on C×(kernel) features.

    The weight is a view of `weight` (no copy) unless an adaptive average pool from `fold_from` is folded
    in, which needs new weights of kernel `fold_from`.
    """
    out_features, in_features = weight.shape
    size = channels * math.prod(kernel)
    if in_features != size:
        raise ValueError(f"Linear takes {in_features} features, not {channels}×{times(kernel)} = {size}")
    conv_weight = weight.view(out_features, channels, *kernel)
    if fold_from is not None:
        conv_weight = fold_adaptive_avg_pool(conv_weight, fold_from)
    return linear_conv(conv_weight, bias)


def adaptive_pool_matrix(size_in: int, size_out: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The size_out × size_in matrix of `adaptive_avg_pool1d` (PyTorch's start/end index rule)."""
    matrix = torch.zeros(size_out, size_in, dtype=dtype)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -(-((i + 1) * size_in) // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def fold_adaptive_avg_pool(weight: torch.Tensor, size_in: tuple[int, ...]) -> torch.Tensor:
    """Weights out×C×(size_in) equal to applying `weight` (out×C×(size_out)) after an adaptive average pool
    from `size_in` to `size_out`: one pooling matrix per spatial axis."""
    folded = weight.detach()
    for axis, size in enumerate(size_in):
        dim = 2 + axis
        matrix = adaptive_pool_matrix(size, folded.shape[dim]).to(weight.dtype)  # size_out × size_in
        folded = torch.movedim(torch.tensordot(folded, matrix, dims=([dim], [0])), -1, dim)
    return folded.contiguous()


def batchnorm_to_maps(bn: nn.BatchNorm1d, spatial: int) -> nn.Module:
    """A BatchNorm over N×C×(`spatial` axes) maps sharing `bn`'s statistics and affine parameters (no copy);
    `bn` itself for one axis (BatchNorm1d takes N×C×L)."""
    if spatial == 1:
        return bn
    kind = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial]
    maps = kind(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                track_running_stats=bn.track_running_stats, device="meta")
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        setattr(maps, name, getattr(bn, name))
    return maps.train(bn.training)


def layernorm_to_channels(ln: nn.LayerNorm) -> ChannelLayerNorm:
    """A LayerNorm over dimension 1 of N×C×H×W maps, sharing `ln`'s parameters (no copy)."""
    (channels,) = ln.normalized_shape
    channel_ln = ChannelLayerNorm(channels, eps=ln.eps, elementwise_affine=False, device="meta")
    channel_ln.weight, channel_ln.bias = ln.weight, ln.bias
    return channel_ln


def window_pool(kind: str, size: tuple[int, ...]) -> nn.Module:
    """The stride-1 pool of window `size` that equals a global `kind` ("avg" or "max") pool at that size."""
    pools = {"avg": (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d), "max": (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)}
    return pools[kind][len(size) - 1](size, stride=1)
