"""The ops `fc2conv.analysis.reach` follows, grouped by how they move values between positions: windows that
slide (convolutions, pools), pads, ops that keep every value in place (element-wise, channel-wise, reshapes),
reductions, and ops that mix all positions (attention, norms over the map).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import LinearConv
from .ops import (
    ACTIVATION_FUNCTIONS,
    ACTIVATION_METHODS,
    ACTIVATION_MODULES,
    IDENTITY_FUNCTIONS,
    IDENTITY_METHODS,
    IDENTITY_MODULES,
)

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
AVG_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.LPPool1d, nn.LPPool2d)
ADAPTIVE_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                  nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
PADS = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
        nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
        nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d)
MAP_NORMS = (nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
# Ops that move no value between positions: activations, identities, batch norm (eval), channel-wise ops,
# arithmetic, and reshapes (whether a reshape keeps the spatial axes whole is checked per node).
ELEMENTWISE_MODULES = ACTIVATION_MODULES + IDENTITY_MODULES + (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LocalResponseNorm, nn.ChannelShuffle,
    nn.Flatten, nn.Unflatten,
)
ELEMENTWISE_FUNCTIONS = ACTIVATION_FUNCTIONS | IDENTITY_FUNCTIONS | {
    F.batch_norm, F.local_response_norm, F.normalize, torch.exp, torch.log,
    torch.sqrt, torch.rsqrt, torch.abs, torch.neg, torch.pow, torch.erf, torch.square, torch.sign, torch.floor,
    torch.ceil, torch.round, torch.reciprocal, torch.where, torch.maximum, torch.minimum, torch.channel_shuffle,
    torch.ones_like, torch.zeros_like, torch.full_like,
    torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.transpose, torch.permute, torch.chunk,
    torch.split, torch.add, torch.sub, torch.mul, torch.div, torch.cat, torch.concat, torch.concatenate,
    torch.stack, operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.neg,
    operator.pow, operator.getitem, operator.iadd, operator.imul, operator.isub, operator.itruediv,
    torch.nn.functional.layer_norm, torch.nn.functional.softmax, torch.softmax, torch.nn.functional.log_softmax,
    torch.log_softmax, torch.mean, torch.amax, torch.sum, torch.max, torch.amin, torch.std, torch.var,
}
ELEMENTWISE_METHODS = ACTIVATION_METHODS | IDENTITY_METHODS | {
    "exp", "log", "sqrt", "rsqrt", "abs", "neg", "pow", "square", "float", "double", "half", "to", "type_as",
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "expand", "expand_as", "view", "reshape", "flatten",
    "unflatten", "squeeze", "unsqueeze", "permute", "transpose", "chunk", "split", "softmax", "log_softmax", "mean",
    "amax", "sum", "max", "amin", "std", "var", "masked_fill", "gelu", "silu",
}
# Functions and modules known by their qualified names, so that their libraries need not be imported here (timm
# keeps these modules whole when tracing: batch norm and an activation, per position).
ELEMENTWISE_NAMES = {
    "torchvision.ops.stochastic_depth.stochastic_depth", "timm.layers.drop.drop_path",
    "timm.layers.norm_act.BatchNormAct2d", "timm.layers.norm_act.FrozenBatchNormAct2d",
    "timm.layers.norm_act.SyncBatchNormAct", "timm.layers.inplace_abn.InplaceAbn",
}
MIXING_FUNCTIONS = {torch.matmul, torch.bmm, torch.einsum, operator.matmul, torch.baddbmm,
                    F.scaled_dot_product_attention}
MIXING_MODULES = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.Transformer)
REDUCTIONS = {torch.mean, torch.amax, torch.sum, torch.max, torch.amin, torch.std, torch.var, torch.norm,
              torch.linalg.vector_norm, torch.logsumexp, "mean", "amax", "sum", "max", "amin", "std", "var", "norm",
              "logsumexp"}
NORMS = {torch.norm, torch.linalg.vector_norm, "norm"}
SOFTMAXES = {F.softmax, torch.softmax, F.log_softmax, torch.log_softmax, "softmax", "log_softmax"}
WINDOW_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d,
                    F.avg_pool2d, F.avg_pool3d}
KNOWN_MODULES = (CONVS + MAX_POOLS + AVG_POOLS + ADAPTIVE_POOLS + PADS + MAP_NORMS + ELEMENTWISE_MODULES
                 + MIXING_MODULES + (nn.Linear, nn.LayerNorm, nn.Softmax, nn.LogSoftmax))


def standard(module: nn.Module) -> bool:
    """A module of a known torch.nn type whose forward is that type's own (a subclass such as timm's Conv2dSame,
    which pads by the input's size in its own forward, is not what its base class says)."""
    if not isinstance(module, KNOWN_MODULES):
        return False
    if isinstance(module, LinearConv):  # fc2conv's own: the convolution it subclasses, computed as a GEMM
        return True
    base = next(c for c in type(module).__mro__ if c.__module__.startswith("torch.nn"))
    return type(module).forward is base.forward


def qualified(thing: Any) -> str:
    return f"{getattr(thing, '__module__', '')}.{getattr(thing, '__name__', '')}"
