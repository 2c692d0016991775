"""The head written channels-last, a mixin of the analyzer (`fc2conv.analysis.analyzer`): a conv map moved to
N×(positions)×C by `permute`/`transpose`, then Linears over the channels (1×1 convolutions), LayerNorms over them,
element-wise ops, a pool over the positions, a squeeze to N×K. Such a tensor is carried as `ChannelsLast(source)`:
the original value is `source`, an N×C×(positions) map of the converted graph, with its channels moved last.

Shapes met in public code: torchaudio's M5 (`F.avg_pool1d(x, x.shape[-1])`, `permute(0, 2, 1)`, a Linear, then
`squeeze(1)` or a log-softmax over the last axis), ConvNeXt-style heads (`permute` → `LayerNorm` → `Linear` →
`permute` back), and a Linear applied at every position before the pool (`permute` → `Linear` → `mean((1, 2))`).
"""

from __future__ import annotations

from typing import Any

from torch import fx, nn

from .ops import (
    BINARY_FUNCTIONS,
    BINARY_METHODS,
    PERMUTES,
    POINTWISE_FUNCTIONS,
    POINTWISE_METHODS,
    POINTWISE_MODULES,
    REDUCTIONS,
    arg,
    callee_of,
    channels_first_order,
    channels_last_order,
    describe,
    is_linear,
    is_op,
    is_reshape,
    kind_in,
    linear_op,
    permutation,
    shape_of,
    softmax_dim,
    softmax_kind,
)
from .plan import Decision
from .values import (
    Alias,
    ChannelsLast,
    GlobalPoolKeepDims,
    GlobalToWindowPool,
    LayerNormToChannels,
    LinearToConv,
    SoftmaxOverChannels,
    Vector,
)

__all__ = ["ChannelsLastVisits"]


class ChannelsLastVisits:
    """The analyzer's visits to nodes that read channels-last tensors."""

    def moves_channels_last(self, node: fx.Node, callee: Any) -> bool:
        """A permute of an N×C×(positions) map that moves its channels last."""
        rank = len(shape_of(node.args[0]) or ()) if node.args else 0
        return is_op(callee, (), PERMUTES, PERMUTES) and rank >= 3 and permutation(node) == channels_last_order(rank)

    def head_written_channels_last(self, permute: fx.Node) -> bool:
        """Whether everything computed from `permute` reaches the model's output with the channels last, through
        ops this mixin carries: then it is the head, written channels-last, and the map it permutes is what slides."""
        if len(shape_of(permute.args[0])) != len(self.input_shape) + 1:  # positions flattened or mixed: not a map
            return False
        reached, seen, todo = False, set(), list(permute.users)
        while todo:
            user = todo.pop()
            if user in seen:
                continue
            seen.add(user)
            if user.op == "output":
                reached = True
                continue
            callee = callee_of(user, self.modules)
            constants = all(n not in self.variable for n in user.all_input_nodes if n not in seen and n is not permute)
            carried = (is_linear(callee) or isinstance(callee, nn.LayerNorm) or softmax_kind(callee) is not None
                       or kind_in(REDUCTIONS, callee) is not None or is_reshape(callee)
                       or is_op(callee, POINTWISE_MODULES, POINTWISE_FUNCTIONS, POINTWISE_METHODS)
                       or (is_op(callee, (), BINARY_FUNCTIONS, BINARY_METHODS) and constants))
            if not carried:
                return False
            todo.extend(user.users)
        return reached

    def visit_channels_last(self, node: fx.Node, callee: Any) -> None:
        value = next(v for n in node.all_input_nodes if isinstance(v := self.values.get(n), ChannelsLast))
        channels = shape_of(node.args[0])[-1] if node.args and isinstance(node.args[0], fx.Node) else None
        if is_linear(callee) and node.args[0] in self.values:
            op, in_features, out_features = linear_op(node, callee)
            ones = (1,) * (len(shape_of(node.args[0])) - 2)
            self.actions[node] = LinearToConv(node.args[0], in_features, ones, None)
            self.values[node] = ChannelsLast(node)
            self.decisions.append(Decision(self.layer(node), op, "1×1 conv", ones, in_features, out_features,
                                           "channels-last Linear"))
        elif isinstance(callee, nn.LayerNorm) and tuple(callee.normalized_shape) == (channels,):
            self.actions[node] = LayerNormToChannels(node.args[0])
            self.values[node] = ChannelsLast(node)
        elif (is_op(callee, POINTWISE_MODULES, POINTWISE_FUNCTIONS, POINTWISE_METHODS)
              and len(node.all_input_nodes) == 1):
            self.values[node] = ChannelsLast(node)
        elif (log := softmax_kind(callee)) is not None and softmax_dim(node, callee) in (-1, len(shape_of(node)) - 1):
            self.actions[node] = SoftmaxOverChannels(node.args[0], log)  # over the classes, which are now dim 1
            self.values[node] = ChannelsLast(node)
        elif is_op(callee, (), PERMUTES, PERMUTES) and permutation(node) == channels_first_order(
                len(shape_of(node.args[0]) or ())):
            self.actions[node] = Alias(value.source)
        elif is_reshape(callee) and self.scores_of_one_cell(node):
            self.actions[node] = Alias(value.source)
            classes, ones = shape_of(node)[1], (1,) * (len(shape_of(node.args[0])) - 2)
            self.values[node] = Vector(value.source, classes, ones, origin=value.source)
        elif (kind := self.pool_over_positions(node, callee)) is not None:
            self.visit_pool_over_positions(node, callee, value, kind)
        else:  # it gets the channels-last tensor back (the rewrite materialises the permute)
            self.lost[node] = describe(node, callee)

    def scores_of_one_cell(self, node: fx.Node) -> bool:
        """A squeeze or flatten of the head's channels-last N×1×…×1×K scores to N×K (torchaudio's M5: a Linear on
        the permuted pooled map, then `squeeze(1)`): the scores of the map's one cell at the reference size."""
        shape_in, shape_out = shape_of(node.args[0]), shape_of(node)
        return (node.args[0] in self.head and shape_in is not None and shape_out is not None and len(shape_in) >= 3
                and shape_out == (shape_in[0], shape_in[-1]) and all(s == 1 for s in shape_in[1:-1]))

    def pool_over_positions(self, node: fx.Node, callee: Any) -> str | None:
        """"avg" or "max" for a mean or amax over every position of the head's channels-last tensor."""
        kind, rank = kind_in(REDUCTIONS, callee), len(shape_of(node.args[0]) or ())
        dims = arg(node, 1, "dim")
        dims = (dims,) if isinstance(dims, int) else dims
        if kind is None or node.args[0] not in self.head or not isinstance(dims, list | tuple) or rank < 3:
            return None
        return kind if {d % rank for d in dims} == set(range(1, rank - 1)) else None

    def visit_pool_over_positions(self, node: fx.Node, callee: Any, value: ChannelsLast, kind: str) -> None:
        """The head's pool, over the channels-last positions of `value.source`: as `fc2conv.analysis.pools` makes a
        pool of a map, a window of its reference size in dense mode, kept global in global mode, removed in cam."""
        _, *size, channels = shape_of(node.args[0])  # the original's layout: N×(positions)×C
        size = tuple(size)
        keepdim = bool(arg(node, 2, "keepdim", False))
        op = describe(node, callee).split(" ", 1)[1].strip("()")
        ones = (1,) * len(size)
        record = lambda rule, reason="": self.decisions.append(  # noqa: E731
            Decision(self.layer(node), op, rule, size, channels, channels, reason))
        if self.mode == "cam":
            if kind != "avg" or keepdim:
                raise self.fail(node, callee, "class activation maps need a global *average* pool to N×K")
            self.actions[node] = Alias(value.source)
            self.values[node] = Vector(value.source, channels, ones, origin=value.source, mean=True)
            record("removed", "cam: the head runs at every location before averaging")
            return
        if self.mode == "dense":
            self.actions[node] = GlobalToWindowPool(value.source, kind, size)
            record(f"window {kind} pool", "stride 1: slides over larger inputs (over channels-last positions)")
        else:
            self.actions[node] = GlobalPoolKeepDims(value.source, kind)
            record("kept global", "mode='global': the output stays one cell for every input size")
        self.values[node] = ChannelsLast(node) if keepdim else Vector(node, channels, ones, origin=node)
