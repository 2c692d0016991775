"""What an fx node computes: the vocabularies of modules, functions and methods the analysis knows, and the
matchers built on them (pools, flattens, Linears, permutations, softmaxes). Pure functions of nodes; no state.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

# Activations: each output element is a function of the same input element (and, for PReLU, of its channel).
ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
    nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.PReLU, nn.RReLU, nn.Softsign, nn.Tanhshrink,
    nn.Threshold, nn.LogSigmoid,
)
ACTIVATION_FUNCTIONS = {
    F.relu, F.relu_, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.leaky_relu, F.elu,
    F.selu, F.celu, F.mish, F.softplus, F.hardtanh, F.prelu, F.softsign, F.logsigmoid, F.threshold, torch.relu,
    torch.relu_, torch.sigmoid, torch.tanh, torch.clamp, torch.clip,
}
ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min",
                      "clamp_max", "clip", "hardtanh", "hardtanh_"}
# Ops that are the identity in eval mode: they commute with pooling and with spatial averaging.
IDENTITY_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
                    nn.Identity)
IDENTITY_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout}
IDENTITY_METHODS = {"contiguous", "clone", "detach"}
POINTWISE_MODULES = ACTIVATION_MODULES + IDENTITY_MODULES
POINTWISE_FUNCTIONS = ACTIVATION_FUNCTIONS | IDENTITY_FUNCTIONS
POINTWISE_METHODS = ACTIVATION_METHODS | IDENTITY_METHODS
BINARY_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
                    torch.div}
BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_"}
LINEAR_IN_MEAN = {operator.add, operator.sub, torch.add, torch.sub, "add", "sub", "add_", "sub_"}
RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze"}
CONCAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
SPLITS = {torch.split, torch.chunk, torch.tensor_split, "split", "chunk", "tensor_split"}
SOFTMAX_FUNCTIONS = {F.softmax: False, torch.softmax: False, F.log_softmax: True, torch.log_softmax: True}
SOFTMAX_METHODS = {"softmax": False, "log_softmax": True}
ADAPTIVE_POOLS = {
    nn.AdaptiveAvgPool1d: "avg", nn.AdaptiveAvgPool2d: "avg", nn.AdaptiveAvgPool3d: "avg",
    nn.AdaptiveMaxPool1d: "max", nn.AdaptiveMaxPool2d: "max", nn.AdaptiveMaxPool3d: "max",
    F.adaptive_avg_pool1d: "avg", F.adaptive_avg_pool2d: "avg", F.adaptive_avg_pool3d: "avg",
    F.adaptive_max_pool1d: "max", F.adaptive_max_pool2d: "max", F.adaptive_max_pool3d: "max",
}
# Fixed-window pools: global when their kernel is read from the tensor, or covers the map at the reference size.
WINDOW_POOLS = {
    nn.AvgPool1d: "avg", nn.AvgPool2d: "avg", nn.AvgPool3d: "avg", nn.MaxPool1d: "max", nn.MaxPool2d: "max",
    nn.MaxPool3d: "max", F.avg_pool1d: "avg", F.avg_pool2d: "avg", F.avg_pool3d: "avg", F.max_pool1d: "max",
    F.max_pool2d: "max", F.max_pool3d: "max",
}
REDUCTIONS = {"mean": "avg", torch.mean: "avg", "amax": "max", torch.amax: "max"}
PERMUTES = {torch.permute, torch.transpose, "permute", "transpose"}


def shape_of(node: Any) -> tuple[int, ...] | None:
    """The shape of a tensor-valued node; of the first tensor of a node that gives several (chunk, split)."""
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    if not hasattr(meta, "shape") and isinstance(meta, list | tuple) and meta:
        meta = meta[0]
    return tuple(meta.shape) if hasattr(meta, "shape") else None


def callee_of(node: fx.Node, modules: dict[str, nn.Module]) -> Any:
    """The module, function or method name a node calls."""
    if node.op == "call_module":
        return modules[node.target]
    return node.target if node.op in ("call_function", "call_method") else None


def is_op(callee: Any, modules: tuple[type, ...], functions=(), methods=()) -> bool:
    if isinstance(callee, nn.Module):
        return isinstance(callee, modules)
    if isinstance(callee, str):
        return callee in methods
    try:
        return callee in functions
    except TypeError:  # an unhashable callable
        return False


def layer_norm_size(node: fx.Node, callee: Any) -> int | None:
    """The size a LayerNorm normalizes over, when it is one dimension (the last): `nn.LayerNorm(C)` or
    `F.layer_norm(x, (C,), …)` (timm's); None for anything else."""
    if isinstance(callee, nn.LayerNorm):
        shape = tuple(callee.normalized_shape)
    elif callee in (F.layer_norm, torch.layer_norm):
        shape = arg(node, 1, "normalized_shape")
        shape = (shape,) if isinstance(shape, int) else tuple(shape) if isinstance(shape, list | tuple) else ()
    else:
        return None
    return shape[0] if len(shape) == 1 and isinstance(shape[0], int) else None


def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


@dataclass(frozen=True)
class Pool:
    kind: str
    size_in: tuple[int, ...]
    size_out: tuple[int, ...]
    keepdim: bool
    fixed: bool = False  # a fixed kernel that covers the whole map only at the reference size

    @property
    def is_global(self) -> bool:
        return all(s == 1 for s in self.size_out)


def kind_in(table: dict, callee: Any) -> str | None:
    try:
        return table.get(type(callee) if isinstance(callee, nn.Module) else callee)
    except TypeError:  # unhashable callee
        return None


def match_pool(node: fx.Node, callee: Any) -> Pool | None:
    """Adaptive pools, spatial mean/amax reductions, and fixed-window pools that cover the whole map (a kernel
    read from the tensor, or one the size of the map at the reference input) of an N×C×(spatial) tensor."""
    source = node.args[0] if node.args else None
    shape_in, shape_out = shape_of(source), shape_of(node)
    if shape_in is None or shape_out is None or len(shape_in) < 3:
        return None
    spatial = shape_in[2:]
    if (kind := kind_in(ADAPTIVE_POOLS, callee)) is not None:
        if getattr(callee, "return_indices", False) or node.kwargs.get("return_indices", False):
            return None
        return Pool(kind, spatial, shape_out[2:], keepdim=True)
    if (kind := kind_in(WINDOW_POOLS, callee)) is not None:
        covers = covers_whole_map(node, callee, spatial)
        if covers is None or len(shape_out) != len(shape_in) or any(s != 1 for s in shape_out[2:]):
            return None
        return Pool(kind, spatial, shape_out[2:], keepdim=True, fixed=covers == "fixed")
    if (kind := kind_in(REDUCTIONS, callee)) is None:
        return None
    dims = arg(node, 1, "dim")
    dims = (dims,) if isinstance(dims, int) else dims
    if not isinstance(dims, list | tuple) or {d % len(shape_in) for d in dims} != set(range(2, len(shape_in))):
        return None
    keepdim = bool(arg(node, 2, "keepdim", False))
    return Pool(kind, spatial, (1,) * len(spatial), keepdim)


def covers_whole_map(node: fx.Node, callee: Any, spatial: tuple[int, ...]) -> str | None:
    """"dynamic" when a pool's kernel is read from the tensor (`F.avg_pool2d(x, x.size()[2:])`) or is larger than
    the map with `ceil_mode` (Hugging Face's EfficientNet: `nn.AvgPool2d(1280, ceil_mode=True)`, one window over
    any map up to 1280 wide), "fixed" when it is the map's size at the reference input without padding
    (`nn.AvgPool2d(7)` on a 7×7 map), else None."""
    if isinstance(callee, nn.Module):
        kernel, padding = callee.kernel_size, callee.padding
        ceil_mode, divisor = callee.ceil_mode, getattr(callee, "divisor_override", None)
    else:
        kernel, padding = arg(node, 1, "kernel_size"), arg(node, 3, "padding", 0)
        average = kind_in(WINDOW_POOLS, callee) == "avg"
        ceil_mode = arg(node, 4 if average else 5, "ceil_mode", False)
        divisor = arg(node, 6, "divisor_override") if average else None
    if isinstance(kernel, fx.Node) or (isinstance(kernel, list | tuple) and any(isinstance(k, fx.Node)
                                                                                 for k in kernel)):
        return "dynamic"
    kernel = (kernel,) * len(spatial) if isinstance(kernel, int) else tuple(kernel)
    padding = (padding,) * len(spatial) if isinstance(padding, int) else tuple(padding)
    if any(padding) or divisor is not None:
        return None
    if ceil_mode is True and all(k >= s for k, s in zip(kernel, spatial, strict=True)) and kernel != spatial:
        return "dynamic"
    return "fixed" if kernel == spatial else None


def is_reshape(callee: Any) -> bool:
    return is_op(callee, (nn.Flatten,), RESHAPE_FUNCTIONS, RESHAPE_METHODS)


def is_flatten(node: fx.Node, callee: Any) -> bool:
    """A reshape of N×C×(spatial) features into N×(C·spatial), however it is spelled; after a global pool also
    the first of a chain of squeezes (N×C×1×1 → N×C×1)."""
    if not is_reshape(callee):
        return False
    shape_in, shape_out = shape_of(node.args[0]), shape_of(node)
    if shape_in is None or shape_out is None or len(shape_in) < 3 or len(shape_out) >= len(shape_in):
        return False
    batch, channels, *spatial = shape_in
    if shape_out == (batch, channels * math.prod(spatial)):
        return True
    return set(spatial) == {1} and shape_out[:2] == (batch, channels) and set(shape_out[2:]) <= {1}


def is_batch_size(node: fx.Node) -> bool:
    """`x.size(0)`, or `x.shape` / `x.size()` used only as `[0]`: the batch size, which a map shares."""
    if node.op == "call_method" and node.target == "size":
        dim = arg(node, 1, "dim")
        if dim is not None:
            return dim == 0
    elif not (node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",)):
        return False
    return all(user.target is operator.getitem and user.args[1] == 0 for user in node.users)


def is_batch_and_channels(node: fx.Node) -> bool:
    """`x.shape` / `x.size()` used only as `[:2]`, `[0]` or `[1]` (Hugging Face's EfficientNet reshapes its pooled
    N×C×1×1 features by `pooled.shape[:2]`): sizes a pooled vector shares with the map it comes from."""
    reads_shape = node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",)
    if not (reads_shape or (node.op == "call_method" and node.target == "size" and len(node.args) == 1
                            and not node.kwargs)):
        return False
    leading = (0, 1, slice(None, 2), slice(0, 2), slice(None, 1), slice(0, 1))
    return bool(node.users) and all(user.target is operator.getitem and user.args[1] in leading
                                    for user in node.users)


def is_linear(callee: Any) -> bool:
    return isinstance(callee, nn.Linear) or callee is F.linear


def op_name(callee: Any) -> str:
    """What a node calls, as the plan and messages name it: a module's class, or a function's or method's name."""
    if isinstance(callee, nn.Module):
        return type(callee).__name__
    return str(getattr(callee, "__name__", callee))


def describe(node: fx.Node, callee: Any) -> str:
    """The node as messages name it: its layer (a module's path, else the node's name) and what it calls."""
    name = node.target if isinstance(callee, nn.Module) else node.name
    return f"'{name}' ({op_name(callee)})"


def linear_op(node: fx.Node, callee: Any) -> tuple[str, int, int]:
    if isinstance(callee, nn.Linear):
        return f"Linear({callee.in_features}, {callee.out_features})", callee.in_features, callee.out_features
    out_features, in_features = shape_of(node.args[1]) or (None, None)
    return f"F.linear({in_features}, {out_features})", in_features, out_features


def variable_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value depends on the model's input."""
    variable: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(n in variable for n in node.all_input_nodes):
            variable.add(node)
    return variable


def channels_last_order(rank: int) -> tuple[int, ...]:
    """The permutation that moves the channels of an N×C×(spatial) tensor last (ConvNeXt's blocks)."""
    return (0, *range(2, rank), 1)


def channels_first_order(rank: int) -> tuple[int, ...]:
    """Its inverse: channels back after the batch."""
    return (0, rank - 1, *range(1, rank - 1))


def permutation(node: fx.Node) -> tuple[int, ...] | None:
    """The permutation of a permute node, or of a transpose node (two dims swapped)."""
    rank = len(shape_of(node) or ())
    if node.target in ("transpose", torch.transpose):
        a, b = arg(node, 1, "dim0"), arg(node, 2, "dim1")
        if not (isinstance(a, int) and isinstance(b, int) and rank):
            return None
        order = list(range(rank))
        order[a % rank], order[b % rank] = order[b % rank], order[a % rank]
        return tuple(order)
    dims = node.args[1:] if node.op == "call_method" else node.args[1:2]
    if len(dims) == 1 and isinstance(dims[0], list | tuple):
        dims = dims[0]
    dims = dims or node.kwargs.get("dims", ())
    if not all(isinstance(d, int) for d in dims):
        return None
    return tuple(d % rank for d in dims) if rank else tuple(dims)


def softmax_kind(callee: Any) -> bool | None:
    if isinstance(callee, nn.Softmax | nn.LogSoftmax):
        return isinstance(callee, nn.LogSoftmax)
    if isinstance(callee, str):
        return SOFTMAX_METHODS.get(callee)
    try:
        return SOFTMAX_FUNCTIONS.get(callee)
    except TypeError:
        return None


def softmax_dim(node: fx.Node, callee: Any) -> Any:
    return callee.dim if isinstance(callee, nn.Module) else arg(node, 1, "dim")
