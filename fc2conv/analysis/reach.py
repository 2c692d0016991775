"""Where each value of a traced network comes from in its input: the receptive field, derived from the graph.

Along spatial axis a, element j of a tensor depends on input positions j·stride[a] + lo[a] … j·stride[a] + hi[a]
(its `Reach`; `axes[a]` is the tensor dimension that holds axis a). One pass in graph order, per op:

- input: stride 1, lo = hi = 0, spatial axes after the batch and channel dimensions;
- convolution or pool with kernel k, stride s, padding p, dilation d over (stride S, lo, hi):
  stride s·S, lo − p·S, hi + (d·(k − 1) − p)·S (reflect and replicate padding reach as far as zeros);
- constant, reflect or replicate padding by p before: lo − p·S, hi − p·S;
- element-wise ops, batch norm, channel-wise ops (a Linear or LayerNorm on a channels-last tensor, softmax over
  channels, reshapes and permutations that keep the spatial dimensions whole): unchanged;
- several inputs (sums, products, concatenations): the union, when they share a grid.

A value that depends on the whole input is `Everywhere`, naming the node that made it so: a global pool
(squeeze-excitation), a norm over the map (GroupNorm, InstanceNorm), attention and token mixing (a product
of two input-dependent tensors, a Linear or softmax across positions), circular padding. A value this pass
cannot follow (an op it does not know, grids of different strides meeting) is `Unknown`, again with the node.

Attention is the more fundamental of the two: a value after attention names the first layer that mixed positions,
and a map scaled by global context (`Everywhere.held`: the positions it still holds) is followed on, so that
attention after squeeze-excitation (CoAtNet, GC ViT) is named, not the squeeze-excitation pool. The rules for
convolutions, pools and pads are `fc2conv.analysis.sliding`'s; the values, `fc2conv.analysis.reach_values`'.
"""

from __future__ import annotations

import operator
from dataclasses import replace
from typing import Any

import torch.nn.functional as F
from torch import fx, nn

from .ops import (
    PERMUTES,
    arg,
    is_op,
    permutation,
    shape_of,
)
from .positions import (
    ADAPTIVE_POOLS,
    AVG_POOLS,
    CONVS,
    ELEMENTWISE_FUNCTIONS,
    ELEMENTWISE_METHODS,
    ELEMENTWISE_MODULES,
    ELEMENTWISE_NAMES,
    MAP_NORMS,
    MAX_POOLS,
    MIXING_FUNCTIONS,
    MIXING_MODULES,
    NORMS,
    PADS,
    REDUCTIONS,
    SOFTMAXES,
    WINDOW_FUNCTIONS,
    qualified,
    standard,
)
from .reach_values import ATTENTION, Everywhere, Reach, Unknown, Value
from .sliding import SlidingOps

__all__ = ["ATTENTION", "Everywhere", "Reach", "Unknown", "Value", "reach_of"]


def reach_of(gm: fx.GraphModule, spatial: int) -> dict[fx.Node, Value]:
    """The value of every node of `gm` (traced through, shapes recorded in `node.meta["tensor_meta"]`) whose
    input has `spatial` spatial axes after its batch and channel dimensions."""
    return _Pass(gm, spatial).run()


class _Pass(SlidingOps):
    def __init__(self, gm: fx.GraphModule, spatial: int):
        self.gm, self.spatial = gm, spatial
        self.modules = dict(gm.named_modules(remove_duplicate=False))  # a module shared under two names
        self.values: dict[fx.Node, Value] = {}

    def run(self) -> dict[fx.Node, Value]:
        for node in self.gm.graph.nodes:
            self.values[node] = self.visit(node)
        return self.values

    # -- helpers

    def name(self, node: fx.Node) -> str:
        """The layer a node belongs to: its module, or the module whose forward computes it."""
        if node.op == "call_module":
            return str(node.target)
        stack = list(node.meta.get("nn_module_stack", {}).values())
        return f"{stack[-1][0]}: {node.name}" if stack and stack[-1][0] else node.name

    def everywhere(self, node: fx.Node, why: str, attention: bool = False, held: Reach | Unknown | None = None
                   ) -> Everywhere:
        return Everywhere(self.name(node), why, attention, held)

    def positions(self, node: fx.Node) -> Value:
        """Where `node`'s positions are: its value, or, for one that sees the whole input, those it still holds."""
        value = self.values.get(node)
        return value.held if isinstance(value, Everywhere) else value

    def unknown(self, node: fx.Node, why: str) -> Unknown:
        return Unknown(self.name(node), why)

    # -- the pass

    def visit(self, node: fx.Node) -> Value:
        if node.op == "placeholder":
            zeros = (0,) * self.spatial
            return Reach(tuple(range(2, 2 + self.spatial)), (1,) * self.spatial, zeros, zeros)
        if node.op == "output":
            return self.values.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        values = [self.values.get(n) for n in node.all_input_nodes]
        values = [v for v in values if v is not None]
        if not values or shape_of(node) is None:  # constants; sizes, shapes and other Python values
            return None
        callee = self.modules[node.target] if node.op == "call_module" else node.target
        everywhere = [v for v in values if isinstance(v, Everywhere)]
        mixed = next((v for v in everywhere if v.attention), None)
        if mixed is not None:  # the first layer that mixes positions is the one named
            return mixed
        if self.mixes(node, callee, values):
            return self.everywhere(node, ATTENTION, attention=True)
        if everywhere:
            return self.beyond_context(node, callee, values, everywhere)
        unknown = next((v for v in values if isinstance(v, Unknown)), None)
        return unknown if unknown is not None else self.spatial_op(node, callee, values)

    def mixes(self, node: fx.Node, callee: Any, values: list[Value]) -> bool:
        """Attention: a product of two tensors of which one still holds positions (not two pooled summaries),
        global context upstream (squeeze-excitation) or not."""
        if isinstance(callee, MIXING_MODULES):
            return True
        positional = [v for v in values if not isinstance(v, Everywhere) or v.held is not None]
        return is_op(callee, (), MIXING_FUNCTIONS, {"matmul", "bmm", "__matmul__"}) and len(values) >= 2 and bool(
            positional)

    def beyond_context(self, node: fx.Node, callee: Any, values: list[Value], everywhere: list[Everywhere]
                       ) -> Everywhere:
        """An op on values that see the whole input through global context: followed through the positions its
        maps still hold, so that attention after it is still found (CoAtNet and GC ViT put squeeze-excitation
        before their attention)."""
        first = everywhere[0]
        held = [v.held if isinstance(v, Everywhere) else v for v in values]
        held = [h for h in held if h is not None]  # pooled summaries, broadcast over the positions, hold none
        if not held:
            return first
        unknown = next((h for h in held if isinstance(h, Unknown)), None)
        after = unknown if unknown is not None else self.spatial_op(node, callee, held)
        if isinstance(after, Everywhere):
            return after if after.attention else replace(first, held=after.held)
        return replace(first, held=after)

    def spatial_op(self, node: fx.Node, callee: Any, reaches: list[Reach]) -> Value:
        first = reaches[0]
        if isinstance(callee, nn.Module) and not (standard(callee) or qualified(type(callee)) in ELEMENTWISE_NAMES):
            return self.unknown(node, f"fc2conv does not know how {type(callee).__name__} moves values between "
                                      "positions (a module kept whole)")
        if is_op(callee, CONVS + MAX_POOLS + AVG_POOLS, WINDOW_FUNCTIONS):
            return self.window(node, callee, first)
        if is_op(callee, ADAPTIVE_POOLS, {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
                                        F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d}):
            return self.everywhere(node, "an adaptive pool: its windows follow the size of the whole map")
        if is_op(callee, PADS, {F.pad}):
            return self.pad(node, callee, first)
        if is_op(callee, MAP_NORMS, {F.group_norm, F.instance_norm}):
            return self.everywhere(node, "a norm over the whole map (its statistics come from every position)",
                                   held=first)
        if isinstance(callee, nn.Linear) or callee is F.linear:
            if len(first.axes) and max(first.axes) == len(shape_of(node.args[0])) - 1:
                return self.everywhere(node, "a Linear across positions (token mixing)", attention=True)
            return first
        if isinstance(callee, nn.LayerNorm) or callee is F.layer_norm:
            normalized = len(callee.normalized_shape if isinstance(callee, nn.LayerNorm) else arg(node, 1, "shape"))
            rank = len(shape_of(node))
            if any(axis >= rank - normalized for axis in first.axes):
                return self.everywhere(node, "a LayerNorm over positions", held=first)
            return first
        if is_op(callee, (nn.Softmax, nn.LogSoftmax), SOFTMAXES, SOFTMAXES):
            dim = callee.dim if isinstance(callee, nn.Module) else arg(node, 1, "dim")
            if dim is None or dim % len(shape_of(node)) in first.axes:
                return self.everywhere(node, "a softmax across positions (attention)", attention=True)
            return first
        if is_op(callee, (), REDUCTIONS, REDUCTIONS):
            return self.reduction(node, first)
        named = type(callee) if isinstance(callee, nn.Module) else callee
        if not (is_op(callee, ELEMENTWISE_MODULES, ELEMENTWISE_FUNCTIONS, ELEMENTWISE_METHODS)
                or qualified(named) in ELEMENTWISE_NAMES):
            what = type(callee).__name__ if isinstance(callee, nn.Module) else getattr(callee, "__name__", callee)
            return self.unknown(node, f"fc2conv does not know how {what} moves values between positions")
        merged = self.union(node, reaches)
        if not isinstance(merged, Reach):
            return merged
        if callee is operator.getitem and hasattr(node.args[0].meta.get("tensor_meta"), "shape"):
            return self.sliced(node, merged)
        return self.relocated(node, merged)

    def reduction(self, node: fx.Node, source: Reach) -> Value:
        at = 2 if node.target in NORMS else 1  # norms take the order first: x.norm(p, dim, keepdim)
        dims = arg(node, at, "dim")
        rank = len(shape_of(node.args[0]))
        dims = set(range(rank)) if dims is None else {d % rank for d in ((dims,) if isinstance(dims, int) else dims)}
        if dims & set(source.axes):
            return self.everywhere(node, "a pool over the whole map (global context)")
        keepdim = bool(arg(node, at + 1, "keepdim", False))
        axes = tuple(a - (0 if keepdim else sum(d < a for d in dims)) for a in source.axes)
        return replace(source, axes=axes)

    def union(self, node: fx.Node, reaches: list[Reach]) -> Value:
        """Several inputs on one grid: each output element depends on what any of them depends on."""
        first = reaches[0]
        if any(r.stride != first.stride for r in reaches):
            return self.unknown(node, "it combines maps of different strides")
        return replace(first, lo=tuple(map(min, *(r.lo for r in reaches))) if len(reaches) > 1 else first.lo,
                       hi=tuple(map(max, *(r.hi for r in reaches))) if len(reaches) > 1 else first.hi)

    def relocated(self, node: fx.Node, source: Reach) -> Value:
        """Where the spatial axes sit after an op that may reshape, permute or broadcast its tensor."""
        shape_in, shape_out = shape_of(self.widest_input(node)), shape_of(node)
        order = permutation(node) if node.target in PERMUTES else None
        if order is not None:
            return replace(source, axes=tuple(order.index(a) for a in source.axes))
        if shape_out == shape_in:
            return source
        sizes = tuple(shape_in[a] for a in source.axes)
        if self.trailing(source, shape_in) and shape_out[len(shape_out) - len(sizes):] == sizes:
            return replace(source, axes=tuple(range(len(shape_out) - len(sizes), len(shape_out))))
        if all(size == 1 for size in sizes):  # a map of one cell: no positions left to move
            return source
        return self.unknown(node, f"it turns the map {list(shape_in)} into {list(shape_out)}, merging or moving its "
                                  "positions (tokens)")

    def widest_input(self, node: fx.Node) -> fx.Node:
        """The input whose positions the output carries: of those that hold any, the one of highest rank."""
        held = [n for n in node.all_input_nodes if isinstance(self.positions(n), Reach) and shape_of(n) is not None]
        return max(held, key=lambda n: len(shape_of(n)))

    @staticmethod
    def trailing(source: Reach, shape: tuple[int, ...]) -> bool:
        return source.axes == tuple(range(len(shape) - len(source.axes), len(shape)))

    def sliced(self, node: fx.Node, source: Reach) -> Value:
        """`x[...]`: selecting channels keeps the positions; a crop `start:stop` of a spatial axis shifts them."""
        index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        if Ellipsis in index or any(i is None for i in index):
            return self.relocated(node, source)
        shift = dict.fromkeys(source.axes, 0)
        removed = 0
        for dim, item in enumerate(index):
            if dim in shift:
                if not (isinstance(item, slice) and item.step in (None, 1)
                        and (item.start is None or (isinstance(item.start, int) and item.start >= 0))
                        and (item.stop is None or isinstance(item.stop, int))):
                    return self.unknown(node, "it indexes a spatial axis in a way that depends on the map's size")
                shift[dim] = item.start or 0
            elif isinstance(item, int):
                removed += 1 if dim < min(source.axes) else 0
        deltas = [shift[a] * s for a, s in zip(source.axes, source.stride, strict=True)]
        return Reach(tuple(a - removed for a in source.axes), source.stride,
                     tuple(lo + d for lo, d in zip(source.lo, deltas, strict=True)),
                     tuple(hi + d for hi, d in zip(source.hi, deltas, strict=True)))
