"""Denser dense maps from the same weights: filter rarefaction ("à trous", DeepLab), an exact rewrite of a
converted network.

A network of total stride S gives one cell every S input positions. For a density r that divides S into a
new stride T = S / r lying on the network's own grid (a product of its last strides), every convolution or pool
whose input sits on a grid coarser than T runs instead on the grid of stride T: its stride becomes 1, and its
dilation and padding are multiplied by f = c / T, where c is its input's stride in the original network. Each
tap then reads the very positions it read before, so the same weights score windows every T positions in one
pass. An average pool, which has no dilation, becomes the depthwise convolution with weights 1/k (or
1/divisor_override) that it is, or a `DilatedAverage` where its divisor changes at the border (uncounted zero
padding, ceil mode). A pool in ceil mode keeps its last window, which runs past the input, by padding the finer
grid as far (−∞ for a max pool), so the map has the same cells.

What holds, per axis (tested): cell r·i + a of the denser map is computed from the pixels of cell i of the
ordinary dense map of the input shifted by a·T; with no padding in the backbone that makes it exactly that
cell (the denser map is the shift-and-stitch map), and the cells r·i are the ordinary map itself wherever the
zero padding of both networks falls on the same positions. The grid positions are taken from
`fc2conv.analysis.reach`, so every op after the first rarefied one must be one it follows.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..analysis.ops import arg
from ..analysis.positions import AVG_POOLS, CONVS, MAX_POOLS, WINDOW_FUNCTIONS
from ..analysis.reach import Reach, reach_of
from ..errors import ConversionError
from ..layers import DilatedAverage, LinearConv1d, LinearConv2d, LinearConv3d, pad_widths
from ..shapes import map_size, times
from ..tracing.trace import TraceOptions, trace

__all__ = ["allowed_densities", "densify", "densities"]

_LP_POOLS = (nn.LPPool1d, nn.LPPool2d)  # windows too (AVG_POOLS), but with no form on a finer grid
_CONV_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d}
_MAX_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d}
_MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_DEPTHWISE = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def densities(stride: tuple[int, ...], levels: set[tuple[int, ...]]) -> list[int]:
    """The densities r a network of total `stride` allows: S / c for every grid level c its layers produce (the
    same r along every axis)."""
    allowed = set()
    for level in levels:
        if all(s % c == 0 for s, c in zip(stride, level, strict=True)):
            ratios = {s // c for s, c in zip(stride, level, strict=True)}
            allowed |= ratios if len(ratios) == 1 else set()
    return sorted(r for r in allowed if r > 1)


def allowed_densities(converted: fx.GraphModule) -> list[int]:
    """The densities a model made by `fc2conv.convert` in dense mode allows (empty when fc2conv cannot follow its
    grid)."""
    info = converted.fc2conv
    gm, values, output = _grid(converted, info.input_shape, info.trace_options, None)
    return densities(output.stride, _levels(gm, values)) if isinstance(output, Reach) else []


def _grid(converted: fx.GraphModule, input_shape: tuple[int, ...], options: TraceOptions, density: int | None):
    """The fully traced network, every node's place on the input grid, and the output's (refused when it has none,
    if a `density` is asked for). An MLP's input of shape (D,) is a 1×1 map of vectors once converted."""
    input_shape = (input_shape[0], *map_size(input_shape))
    # The converted heads stay LinearConv modules (rarefied as convolutions), so they keep their GEMM speed.
    leaves = (*options.leaf_modules, LinearConv1d, LinearConv2d, LinearConv3d)
    gm = trace(converted, input_shape, TraceOptions(leaves, options.autowrap_functions))
    values = reach_of(gm, len(input_shape) - 1)
    output = values[next(n for n in gm.graph.nodes if n.op == "output")]
    if density is not None and not isinstance(output, Reach):
        why = getattr(output, "why", "its cells see the whole input")
        raise ConversionError(f"density={density}: fc2conv cannot follow the grid of this network ('"
                              f"{getattr(output, 'node', '?')}': {why})")
    return gm, values, output


def densify(converted: fx.GraphModule, density: int, input_shape: tuple[int, ...], options: TraceOptions
            ) -> tuple[fx.GraphModule, list[str]]:
    """`converted` (dense mode) rewritten to give `density` times more cells along each axis, and the layers that
    now run on the finer grid. The result is a new fully traced GraphModule whose modules are copies where their
    strides, dilations or padding change."""
    gm, values, output = _grid(converted, input_shape, options, density)
    levels = _levels(gm, values)
    if any(s % density for s in output.stride) or tuple(s // density for s in output.stride) not in levels:
        raise ConversionError(
            f"density={density} does not fit this network's strides {times(output.stride)}: the new stride must "
            f"be one its layers produce; allowed densities: {densities(output.stride, levels) or 'none (stride 1)'}")
    target = tuple(s // density for s in output.stride)
    modules = dict(gm.named_modules())
    rarefied = []
    # Where each window op reads from, taken before any is replaced (a replacement is a node `values` lacks).
    windows = [(node, _source_reach(node, values)) for node in gm.graph.nodes if _is_window(node, modules)]
    for node, source in windows:
        if source is None:
            continue
        factor = tuple(c // t for c, t in zip(source.stride, target, strict=True))
        own = _own_stride(node, modules, len(target))
        if all(c * s <= t for c, s, t in zip(source.stride, own, target, strict=True)):
            continue  # before the grid gets coarser than the target: unchanged
        if any(c < t for c, t in zip(source.stride, target, strict=True)):
            raise ConversionError(f"density={density}: '{_name(node)}' strides from a grid finer than the new "
                                  f"stride {times(target)} to a coarser one; choose one of "
                                  f"{densities(output.stride, levels)}")
        rarefied.append(_name(node))
        _rarefy(gm, node, modules, factor)
    gm.graph.lint()
    gm.recompile()
    return gm, rarefied


def _levels(gm: fx.GraphModule, values: dict) -> set[tuple[int, ...]]:
    """Every grid a tensor of the network sits on."""
    return {v.stride for v in values.values() if isinstance(v, Reach)}


def _source_reach(node: fx.Node, values: dict) -> Reach | None:
    first = node.args[0] if node.args else None
    value = values.get(first) if isinstance(first, fx.Node) else None
    return value if isinstance(value, Reach) else None


def _is_window(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A sliding window as `fc2conv.analysis.reach` follows one: a convolution or pool."""
    if node.op == "call_module":
        return isinstance(modules[node.target], CONVS + MAX_POOLS + AVG_POOLS)
    return node.op == "call_function" and node.target in WINDOW_FUNCTIONS


def _per_axis(value: Any, axes: int) -> tuple[int, ...]:
    return (value,) * axes if isinstance(value, int) else tuple(value)


def _own_stride(node: fx.Node, modules: dict[str, nn.Module], axes: int) -> tuple[int, ...]:
    if node.op == "call_module":
        module = modules[node.target]
        return _per_axis(module.stride or module.kernel_size, axes)
    if node.target in _CONV_FUNCTIONS:
        return _per_axis(arg(node, 3, "stride", 1), axes)
    return _per_axis(arg(node, 2, "stride", None) or arg(node, 1, "kernel_size", 1), axes)


def _rarefy(gm: fx.GraphModule, node: fx.Node, modules: dict[str, nn.Module], factor: tuple[int, ...]) -> None:
    """Make `node` run on a grid `factor` times finer: stride 1, dilation and padding times `factor`."""
    if node.op == "call_module" and isinstance(modules[node.target], CONVS):
        _set_submodule(gm, node.target, _rarefied_conv(modules[node.target], factor, _name(node)))
    elif node.op == "call_function" and node.target in _CONV_FUNCTIONS:
        node.args, node.kwargs = node.args[:2], {
            "bias": arg(node, 2, "bias", None), "stride": 1,
            "padding": _scaled(arg(node, 4, "padding", 0), factor, _name(node)),
            "dilation": _times_each(arg(node, 5, "dilation", 1), factor), "groups": arg(node, 6, "groups", 1)}
    else:
        _rarefy_pool(gm, node, modules[node.target] if node.op == "call_module" else _pool_module(node, len(factor)),
                     factor)


def _pool_module(node: fx.Node, axes: int) -> nn.Module:
    """The pooling module a functional max or average pool call is."""
    kernel, stride, padding = arg(node, 1, "kernel_size", None), arg(node, 2, "stride", None), arg(node, 3,
                                                                                                      "padding", 0)
    if node.target in _MAX_FUNCTIONS:
        return _MAX_POOL[axes](kernel, stride, padding, arg(node, 4, "dilation", 1),
                               ceil_mode=arg(node, 5, "ceil_mode", False))
    return {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[axes](
        kernel, stride, padding, arg(node, 4, "ceil_mode", False), arg(node, 5, "count_include_pad", True),
        *((arg(node, 6, "divisor_override", None),) if axes > 1 else ()))


def _rarefy_pool(gm: fx.GraphModule, node: fx.Node, pool: nn.Module, factor: tuple[int, ...]) -> None:
    """Replace pool `node` by its stride-1 form on a grid `factor` times finer: a max pool dilated by `factor`, an
    average pool as the depthwise convolution it is. A pool in ceil mode keeps a last window that runs past its
    input, so the finer grid is padded as far after the input (−∞ for a max pool, and an average divides those
    windows by what they cover); padding PyTorch's max pool does not take (uneven, or above half the kernel)
    becomes an explicit pad."""
    if isinstance(pool, _LP_POOLS):
        raise ConversionError(f"'{_name(node)}': a power-average pool ({type(pool).__name__}) has no dilated form; "
                              "it cannot run on a finer grid")
    axes = len(factor)
    kernel, stride = _per_axis(pool.kernel_size, axes), _per_axis(pool.stride or pool.kernel_size, axes)
    padding, dilation = _per_axis(pool.padding, axes), _per_axis(getattr(pool, "dilation", 1), axes)
    before = _times_each(padding, factor)
    after = tuple(b + f * max(0, min(s - 1, d * (k - 1) - p)) if pool.ceil_mode else b
                  for b, f, s, d, k, p in zip(before, factor, stride, dilation, kernel, padding, strict=True))
    source = node.args[0]
    if isinstance(pool, MAX_POOLS):
        inner = before
        if after != before or any(2 * b > k for b, k in zip(before, kernel, strict=True)):
            with gm.graph.inserting_before(node):
                source = gm.graph.call_function(F.pad, (source, pad_widths(before, after)), {"value": float("-inf")})
            inner = (0,) * axes
        replacement = _MAX_POOL[axes](kernel, 1, inner, _times_each(dilation, factor))
    else:
        replacement = _average(pool, node, factor, before, after)
    if node.op == "call_module":
        _set_submodule(gm, node.target, replacement)
        node.args, node.kwargs = (source,), {}
        return
    name = f"{node.name}_atrous"
    gm.add_submodule(name, replacement)
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(name, (source,))
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def _average(pool: nn.Module, node: fx.Node, factor: tuple[int, ...], before: tuple[int, ...],
             after: tuple[int, ...]) -> nn.Module:
    """Average pool `pool` on a grid `factor` times finer: the depthwise convolution with weights 1/k it is where
    every window has one divisor, a `DilatedAverage` where the divisor changes at the border."""
    kernel = _per_axis(pool.kernel_size, len(factor))
    channels = int(node.meta["tensor_meta"].shape[1])  # an average pool keeps its channels
    override = getattr(pool, "divisor_override", None)
    if not override and (after != before or (any(before) and not pool.count_include_pad)):
        return DilatedAverage(channels, kernel, factor, before, after, pool.count_include_pad)
    conv = _DEPTHWISE[len(factor)](channels, channels, kernel, padding=before, dilation=factor, groups=channels,
                                   bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0 / (override or math.prod(kernel)))
    conv.weight.requires_grad_(False)
    return conv


def _scaled(padding: Any, factor: tuple[int, ...], layer: str) -> tuple[int, ...]:
    """A convolution's `padding` times `factor`; 'same' and 'valid' are refused, naming `layer`."""
    if isinstance(padding, str):
        raise ConversionError(f"'{layer}' pads {padding!r}; fc2conv rarefies numeric padding only")
    return _times_each(padding, factor)


def _rarefied_conv(module: nn.Module, factor: tuple[int, ...], layer: str) -> nn.Module:
    """A shallow copy of convolution `layer` (sharing its parameters) on a grid `factor` times finer."""
    rarefied = copy.copy(module)
    rarefied.stride = (1,) * len(factor)
    rarefied.dilation = _times_each(module.dilation, factor)
    rarefied.padding = _scaled(module.padding, factor, layer)
    rarefied._reversed_padding_repeated_twice = pad_widths(rarefied.padding, rarefied.padding)
    return rarefied


def _times_each(value: Any, factor: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(v * f for v, f in zip(_per_axis(value, len(factor)), factor, strict=True))


def _set_submodule(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def _name(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name
