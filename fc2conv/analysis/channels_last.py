"""The head written channels-last, a mixin of the analyzer (`fc2conv.analysis.analyzer`): a conv map moved to
N×(positions)×C by `permute`/`transpose`, then Linears over the channels (1×1 convolutions), LayerNorms over them,
element-wise ops, a pool over the positions, a squeeze to N×K. Such a tensor is carried as `ChannelsLast(source)`:
the original value is `source`, an N×C×(positions) map of the converted graph, with its channels moved last.

Shapes met in public code: torchaudio's M5 (`F.avg_pool1d(x, x.shape[-1])`, `permute(0, 2, 1)`, a Linear, then
`squeeze(1)` or a log-softmax over the last axis), ConvNeXt-style heads (`permute` → `LayerNorm` → `Linear` →
`permute` back), and a Linear applied at every position before the pool (`permute` → `Linear` → `mean((1, 2))`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

from torch import fx

from .ops import (
    BINARY_FUNCTIONS,
    BINARY_METHODS,
    CONCAT_FUNCTIONS,
    PERMUTES,
    POINTWISE_FUNCTIONS,
    POINTWISE_METHODS,
    POINTWISE_MODULES,
    REDUCTIONS,
    SPLITS,
    arg,
    callee_of,
    channels_first_order,
    channels_last_order,
    describe,
    is_linear,
    is_op,
    is_reshape,
    kind_in,
    layer_norm_size,
    linear_op,
    op_name,
    permutation,
    shape_of,
    softmax_dim,
    softmax_kind,
)
from .plan import Decision
from .state import AnalyzerState, At, Rule, apply_first
from .values import (
    Alias,
    ChannelsLast,
    GlobalPoolKeepDims,
    GlobalToWindowPool,
    LayerNormToChannels,
    LinearToConv,
    MoveChannelsFirst,
    SoftmaxOverChannels,
    Vector,
)

__all__ = ["CHANNELS_LAST_RULES", "ChannelsLastAt", "ChannelsLastVisits"]


@dataclass(frozen=True)
class ChannelsLastAt(At):
    """A node that reads the head's channels-last tensor `value`, whose last axis holds `channels`."""

    value: ChannelsLast
    channels: int | None

    def carry(self) -> None:
        """The node's output is channels-last too, computed by the node itself on the converted map."""
        self.state.values[self.node] = ChannelsLast(self.node)


class LinearOverChannels(Rule[ChannelsLastAt]):
    """A Linear over the channels at every position: a 1×1 conv of the map."""

    def match(self, at: ChannelsLastAt) -> bool:
        return is_linear(at.callee) and at.node.args[0] in at.state.values

    def rewrite(self, at: ChannelsLastAt) -> None:
        node, state = at.node, at.state
        op, in_features, out_features = linear_op(node, at.callee)
        ones = (1,) * (len(shape_of(node.args[0])) - 2)
        state.actions[node] = LinearToConv(node.args[0], in_features, ones, None)
        at.carry()
        state.decisions.append(Decision(state.layer(node), op, "1×1 conv", ones, in_features, out_features,
                                        "channels-last Linear"))


class LayerNormOverChannels(Rule[ChannelsLastAt]):
    def match(self, at: ChannelsLastAt) -> bool:
        return layer_norm_size(at.node, at.callee) == at.channels

    def rewrite(self, at: ChannelsLastAt) -> None:
        at.state.actions[at.node] = LayerNormToChannels(at.node.args[0])
        at.carry()


class PointwiseChannelsLast(Rule[ChannelsLastAt]):
    def match(self, at: ChannelsLastAt) -> bool:
        return (is_op(at.callee, POINTWISE_MODULES, POINTWISE_FUNCTIONS, POINTWISE_METHODS)
                and len(at.node.all_input_nodes) == 1)

    def rewrite(self, at: ChannelsLastAt) -> None:
        at.carry()


class SoftmaxOverLastAxis(Rule[ChannelsLastAt]):
    """A (log-)softmax over the classes, last here, which are axis 1 of the converted map."""

    def match(self, at: ChannelsLastAt) -> bool:
        return (softmax_kind(at.callee) is not None
                and softmax_dim(at.node, at.callee) in (-1, len(shape_of(at.node)) - 1))

    def rewrite(self, at: ChannelsLastAt) -> None:
        at.state.actions[at.node] = SoftmaxOverChannels(at.node.args[0], softmax_kind(at.callee))
        at.carry()


class PermuteBack(Rule[ChannelsLastAt]):
    """The channels moved first again: the converted map itself."""

    def match(self, at: ChannelsLastAt) -> bool:
        rank = len(shape_of(at.node.args[0]) or ())
        return is_op(at.callee, (), PERMUTES, PERMUTES) and permutation(at.node) == channels_first_order(rank)

    def rewrite(self, at: ChannelsLastAt) -> None:
        at.state.actions[at.node] = Alias(at.value.source)


class ScoresOfOneCell(Rule[ChannelsLastAt]):
    """N×1×…×1×K scores squeezed to N×K (torchaudio's M5): the map's one cell at the reference size."""

    def match(self, at: ChannelsLastAt) -> bool:
        return is_reshape(at.callee) and at.state.scores_of_one_cell(at.node)

    def rewrite(self, at: ChannelsLastAt) -> None:
        source = at.value.source
        at.state.actions[at.node] = Alias(source)
        classes, ones = shape_of(at.node)[1], (1,) * (len(shape_of(at.node.args[0])) - 2)
        at.state.values[at.node] = Vector(source, classes, ones, origin=source)


class PoolOverPositions(Rule[ChannelsLastAt]):
    """A mean or amax over every position: the head's pool (`visit_pool_over_positions`)."""

    def match(self, at: ChannelsLastAt) -> bool:
        return at.state.pool_over_positions(at.node, at.callee) is not None

    def rewrite(self, at: ChannelsLastAt) -> None:
        kind = at.state.pool_over_positions(at.node, at.callee)
        at.state.visit_pool_over_positions(at.node, at.callee, at.value, kind)


class LostChannelsLast(Rule[ChannelsLastAt]):
    """Anything else gets the channels-last tensor back (the rewrite materialises the permute); the output check
    names it if the scores depend on it."""

    def match(self, at: ChannelsLastAt) -> bool:
        return True

    def rewrite(self, at: ChannelsLastAt) -> None:
        at.state.lost[at.node] = describe(at.node, at.callee)


# In order: the first rule that matches decides.
CHANNELS_LAST_RULES: tuple[Rule[ChannelsLastAt], ...] = (
    LinearOverChannels(), LayerNormOverChannels(), PointwiseChannelsLast(), SoftmaxOverLastAxis(), PermuteBack(),
    ScoresOfOneCell(), PoolOverPositions(), LostChannelsLast(),
)


class ChannelsLastVisits(AnalyzerState):
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
            carried = (is_linear(callee) or layer_norm_size(user, callee) is not None
                       or softmax_kind(callee) is not None or kind_in(REDUCTIONS, callee) is not None
                       or is_reshape(callee)
                       or is_op(callee, POINTWISE_MODULES, POINTWISE_FUNCTIONS, POINTWISE_METHODS)
                       or (is_op(callee, (), BINARY_FUNCTIONS, BINARY_METHODS) and constants))
            if not carried:
                return False
            todo.extend(user.users)
        return reached

    def visit_channels_last(self, node: fx.Node, callee: Any) -> None:
        value = next(v for n in node.all_input_nodes if isinstance(v := self.values.get(n), ChannelsLast))
        channels = shape_of(node.args[0])[-1] if node.args and isinstance(node.args[0], fx.Node) else None
        apply_first(CHANNELS_LAST_RULES, ChannelsLastAt(self, node, callee, value, channels))

    def scores_of_one_cell(self, node: fx.Node) -> bool:
        """A squeeze or flatten of the head's channels-last N×1×…×1×K scores to N×K (torchaudio's M5: a Linear on
        the permuted pooled map, then `squeeze(1)`): the scores of the map's one cell at the reference size."""
        shape_in, shape_out = shape_of(node.args[0]), shape_of(node)
        return (node.args[0] in self.head and shape_in is not None and shape_out is not None and len(shape_in) >= 3
                and shape_out == (shape_in[0], shape_in[-1]) and all(s == 1 for s in shape_in[1:-1]))

    def pool_over_positions(self, node: fx.Node, callee: Any, of: set[fx.Node] | None = None) -> str | None:
        """"avg" or "max" for a mean or amax over every position of a channels-last tensor in `of` (default: the
        head's)."""
        kind, rank = kind_in(REDUCTIONS, callee), len(shape_of(node.args[0]) or ())
        dims = arg(node, 1, "dim")
        dims = (dims,) if isinstance(dims, int) else dims
        if kind is None or node.args[0] not in (self.head if of is None else of) or not isinstance(dims, list | tuple) \
                or rank < 3:
            return None
        return kind if {d % rank for d in dims} == set(range(1, rank - 1)) else None

    def note_positions_last(self, node: fx.Node, callee: Any) -> None:
        """Remember `node` if it is an N×(positions)×C map of the backbone (MambaOut's blocks work so): a permute
        that moves a map's channels last, or an op that keeps that layout on such maps alone: a Linear or a
        LayerNorm over the channels, an element-wise op, a binary op of such maps, a split or concatenation of the
        channels. A pool over its positions is then the model's global pool (`visit_pool_over_positions`)."""
        rank, shape = len(self.input_shape) + 1, shape_of(node)
        if node not in self.variable or shape is None or len(shape) != rank:
            return
        if self.moves_channels_last(node, callee):
            self.positions_last.add(node)
            return
        inputs = [n for n in node.all_input_nodes if n in self.variable]
        if not inputs or any(n not in self.positions_last or (shape_of(n) or ())[1:-1] != shape[1:-1] for n in inputs):
            return
        on_channels = arg(node, 1, "dim", 0) in (-1, rank - 1)
        if (is_linear(callee) or layer_norm_size(node, callee) == shape[-1]
                or is_op(callee, POINTWISE_MODULES, POINTWISE_FUNCTIONS, POINTWISE_METHODS)
                or is_op(callee, (), BINARY_FUNCTIONS, BINARY_METHODS) or callee is operator.getitem
                or (is_op(callee, (), SPLITS, SPLITS) and arg(node, 2, "dim", 0) in (-1, rank - 1))
                or (is_op(callee, (), CONCAT_FUNCTIONS) and on_channels)):
            self.positions_last.add(node)

    def visit_pool_over_positions(self, node: fx.Node, callee: Any, value: ChannelsLast | None, kind: str) -> None:
        """The head's pool, over the channels-last positions of `value.source` (None: of the backbone's
        N×(positions)×C map `node.args[0]` itself): as `fc2conv.analysis.pools` makes a pool of a map, a window of
        its reference size in dense mode, kept global in global mode, removed in cam."""
        _, *size, channels = shape_of(node.args[0])  # the original's layout: N×(positions)×C
        last = value is None  # the map is channels-last itself: its channels move first in the converted graph
        source = node.args[0] if last else value.source
        size = tuple(size)
        keepdim = bool(arg(node, 2, "keepdim", False))
        op = op_name(callee)
        ones = (1,) * len(size)
        record = lambda rule, reason="": self.decisions.append(  # noqa: E731
            Decision(self.layer(node), op, rule, size, channels, channels, reason))
        if self.mode == "cam":
            if kind != "avg" or keepdim:
                raise self.fail(node, callee, "class activation maps need a global *average* pool to N×K")
            self.actions[node] = MoveChannelsFirst(source) if last else Alias(source)
            mapped = node if last else source
            self.values[node] = Vector(mapped, channels, ones, origin=mapped, mean=True)
            record("removed", "cam: the head runs at every location before averaging")
            return
        if self.mode == "dense":
            self.actions[node] = GlobalToWindowPool(source, kind, size, channels_last=last)
            record(f"window {kind} pool", "stride 1: slides over larger inputs (over channels-last positions)")
        else:
            self.actions[node] = GlobalPoolKeepDims(source, kind, channels_last=last)
            record("kept global", "mode='global': the output stays one cell for every input size")
        self.values[node] = ChannelsLast(node) if keepdim else Vector(node, channels, ones, origin=node)
