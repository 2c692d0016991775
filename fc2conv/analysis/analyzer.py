"""The analysis pass: one walk over the traced graph in order gives every node a value and an action
(`fc2conv.analysis.values`), and every Linear, pool and norm the mode touches a `Decision` (`fc2conv.analysis.plan`).
Pools are decided in `pools.py`, the head's vectors carried in `head.py`. A model refused for its head after
attention that mixes all positions (`fc2conv.analysis.reach`) is refused for the attention first, naming its layer.
"""

from __future__ import annotations

from typing import Any

from torch import fx

from ..errors import ConversionError, first_line
from ..metadata import MODES
from ..shapes import VECTOR_MAP, is_vector_input, times
from .channels_last import ChannelsLastVisits
from .head import HeadVisits
from .ops import (
    callee_of,
    describe,
    is_flatten,
    is_linear,
    linear_op,
    match_pool,
    shape_of,
    variable_nodes,
)
from .plan import Decision, Plan
from .pools import PoolVisits, pooled_nodes
from .reach import Everywhere, reach_of
from .values import Action, Alias, Analysis, ChannelsLast, Vector

__all__ = ["ANALYSED_MODES", "analyze"]

# The modes of fc2conv.metadata.MODES the analysis plans: "pool" is "dense", reduced after the rewrite.
ANALYSED_MODES: tuple[str, ...] = tuple(mode for mode in MODES if mode != "pool")


class _Analyzer(PoolVisits, HeadVisits, ChannelsLastVisits):
    def __init__(self, gm: fx.GraphModule, input_shape: tuple[int, ...], mode: str, channels_last_linears: bool):
        self.gm, self.mode, self.channels_last_linears = gm, mode, channels_last_linears
        self.input_shape = input_shape
        self.modules = dict(gm.named_modules(remove_duplicate=False))  # a module shared under two names
        self.variable = variable_nodes(gm.graph)
        self.pooled = pooled_nodes(gm.graph, self.variable, self.is_global_pool)
        self.values: dict[fx.Node, Vector | ChannelsLast] = {}
        self.actions: dict[fx.Node, Action] = {}
        self.decisions: list[Decision] = []
        self.cuts: dict[fx.Node, tuple[int, ...]] = {}
        self.head: set[fx.Node] = set()  # nodes downstream of where the head starts
        self.positions_last: set[fx.Node] = set()  # N×(positions)×C maps of the backbone (`note_positions_last`)
        self.lost: dict[fx.Node, str] = {}  # nodes that read the head's channels-last tensor in a way it cannot carry
        self.pool_origins: dict[fx.Node, fx.Node] = {}  # global pool → the origin its vectors get
        self.context: dict[fx.Node, fx.Node] = {}  # node computed from a global-context pool alone → that pool
        self.global_context = False
        self.widened = False

    # -- helpers
    def fail(self, node: fx.Node, callee: Any, why: str) -> ConversionError:
        prefix = "cam mode: " if self.mode == "cam" else ""
        return ConversionError(f"{prefix}cannot convert {describe(node, callee)}: {why}")

    def resolve(self, node: fx.Node) -> fx.Node:
        """Follow aliases back to the node whose value is really emitted."""
        while isinstance(self.actions.get(node), Alias):
            node = self.actions[node].of
        return node

    def layer(self, node: fx.Node) -> str:
        return str(node.target) if node.op == "call_module" else node.name

    def start_head(self, node: fx.Node, features: fx.Node) -> None:
        """`node` starts the head on `features`, unless it is already inside the head."""
        inside = features in self.head
        self.head.add(node)
        if inside:
            return
        features = self.resolve(features)
        shape = shape_of(features)
        self.cuts[features] = VECTOR_MAP if shape is None or len(shape) < 3 else shape[2:]

    def context_pool(self, node: fx.Node) -> fx.Node | None:
        """The global-context pool `node` is computed from, when every input-dependent input comes from it."""
        inputs = [n for n in node.all_input_nodes if n in self.variable]
        pools = {self.context.get(n) for n in inputs}
        return next(iter(pools)) if inputs and len(pools) == 1 and None not in pools else None

    # -- the pass
    def run(self) -> Analysis:
        for node in self.gm.graph.nodes:
            callee = callee_of(node, self.modules)
            inputs = [self.values.get(n) for n in node.all_input_nodes]
            try:
                if node.op == "placeholder":
                    self.visit_placeholder(node)
                elif node.op == "output":
                    self.visit_output(node)
                elif (pool := self.context_pool(node)) is not None:
                    self.visit_context(node, callee, pool)
                elif any(isinstance(v, Vector) for v in inputs):
                    self.visit_vector(node, callee)
                elif any(isinstance(v, ChannelsLast) for v in inputs):
                    self.visit_channels_last(node, callee)
                else:
                    self.visit_kept(node, callee)
                    if node not in self.values:
                        self.note_positions_last(node, callee)
            except ConversionError:
                raise
            except Exception as e:  # a pattern fc2conv did not foresee: name the node, never a raw crash
                raise self.fail(node, callee, f"fc2conv failed to analyse it ({first_line(e, named=True)}); please "
                                              "report this model") from e
            if any(n in self.head for n in node.all_input_nodes):
                self.head.add(node)
        notes = []
        if not any(d.op.startswith(("Linear", "F.linear")) and d.rule != "left alone" for d in self.decisions):
            notes.append("No Linear layer of the head to convert: the model is already convolutional.")
        if self.global_context and self.mode != "global":
            notes.append("Global pools that feed the backbone stay global: dense cells see image-level context.")
        (cut, window), = self.cuts.items() if len(self.cuts) == 1 else ((None, None),)
        return Analysis(self.mode, self.values, self.actions, Plan(self.decisions, notes), cut, window,
                        self.global_context, self.widened, cut in self.positions_last)

    def visit_placeholder(self, node: fx.Node) -> None:
        if is_vector_input(self.input_shape):  # an MLP: its input vector becomes a map of vectors
            self.values[node] = Vector(node, self.input_shape[0], VECTOR_MAP, origin=node)
            self.start_head(node, node)

    def visit_output(self, node: fx.Node) -> None:
        result = node.args[0]
        if not isinstance(result, fx.Node):
            raise ConversionError(
                f"the model returns {type(result).__name__}, not one tensor; fc2conv converts classifiers "
                "that return a single N×K tensor of scores"
            )
        value, shape = self.values.get(result), shape_of(result)
        if isinstance(value, Vector) and value.is_plain and value.mean == (self.mode == "cam"):
            return
        if isinstance(value, ChannelsLast) and result in self.head and self.mode != "cam":
            return  # scores over the last dimension (N×1×K): the converted map has them first, N×K×L
        if self.mode == "cam" and isinstance(value, Vector):
            raise ConversionError(
                f"cam mode: the output '{result.name}' is not computed linearly from a global average pool "
                f"(the head starts at '{value.origin.name}'); use mode='dense' or mode='global'"
            )
        if value is None and shape is not None and len(shape) == len(self.input_shape) + 1 >= 3:
            return  # already a map of scores, N×K×(the input's spatial axes)
        if value is None and shape is not None and len(shape) == 2:  # N×K scores, but not from a map fc2conv carries
            lost = next((self.lost[n] for n in _ancestors(result) if n in self.lost), None)
            why = (f"{lost} reads the head's channels-last tensor in a way fc2conv cannot apply to a map of scores"
                   if lost else "fc2conv cannot trace them back to conv features through a Linear head, a pool or "
                                "ops it applies to maps")
            raise ConversionError(f"the model's output '{result.name}' is {times(shape)} class scores, but {why}; "
                                  "fc2conv cannot give them as a map")
        what = value.describe() if isinstance(value, Vector) else shape
        raise ConversionError(
            f"the model's output '{result.name}' is {what}, not a vector of class scores per example "
            "(N×K) computed from conv features; fc2conv cannot give it as a map"
        )

    def visit_context(self, node: fx.Node, callee: Any, pool: fx.Node) -> None:
        """Squeeze-excitation and its kin: computed from a global-context pool alone, kept as it is."""
        self.context[node] = pool
        if is_linear(callee):
            self.decisions.append(Decision(self.layer(node), linear_op(node, callee)[0], "left alone", reason=(
                f"global context from '{pool.name}' (squeeze-excitation), not the head")))

    def visit_kept(self, node: fx.Node, callee: Any) -> None:
        pool = match_pool(node, callee)
        if pool is not None:
            self.visit_pool(node, callee, pool)
        elif (is_flatten(node, callee) and node.args[0] in self.variable
              and len(shape_of(node.args[0])) == len(self.input_shape) + 1):  # a map like the input, not tokens
            features = node.args[0]
            _, channels, *spatial = shape_of(features)
            self.actions[node] = Alias(features)
            self.values[node] = Vector(features, channels, tuple(spatial),
                                       origin=self.pool_origins.get(features, node))
            self.start_head(node, features)
        elif node.args and (kind := self.pool_over_positions(node, callee, of=self.positions_last)) is not None:
            # The global pool of a backbone that works channels-last (MambaOut): over the positions of its map.
            self.start_head(node, node.args[0])
            self.cuts[self.resolve(node.args[0])] = tuple(shape_of(node.args[0])[1:-1])
            self.visit_pool_over_positions(node, callee, None, kind)
        elif is_linear(callee):
            shape = shape_of(node.args[0])
            op = linear_op(node, callee)[0]
            if shape is not None and len(shape) >= 3:
                self.decisions.append(Decision(
                    self.layer(node), op, "left alone", reason=(
                        f"acts on the last dimension of a {len(shape)}-D tensor at every position; already "
                        "convolutional" + ("" if self.channels_last_linears else
                                           " (channels_last_linears=True makes it a 1×1 conv)"))))
                return
            source = node.args[0]
            raise self.fail(node, callee, (
                f"it is fed by '{getattr(source, 'name', source)}' of shape {shape}, which is not flattened "
                "conv features, a global pool or another Linear. Heads on sequences or tokens (RNNs, "
                "transformers, whose attention mixes all positions) have no spatial map to slide over; fc2conv "
                "converts heads on convolutional feature maps"))
        elif self.moves_channels_last(node, callee) and (
                self.channels_last_linears or node.args[0] in self.head or self.head_written_channels_last(node)):
            # Channels moved last, for Linears over them: ConvNeXt's blocks (on request), a head that permutes the
            # pooled map (N×C×1 → N×1×C) before its Linear, or a head written channels-last from the conv map on.
            if node.args[0] not in self.head and self.head_written_channels_last(node):
                self.start_head(node, node.args[0])
            self.actions[node] = Alias(node.args[0])
            self.values[node] = ChannelsLast(node.args[0])


def _ancestors(node: fx.Node) -> list[fx.Node]:
    """`node` and every node it is computed from, nearest first."""
    found, todo = [], [node]
    while todo:
        current = todo.pop(0)
        if current not in found:
            found.append(current)
            todo.extend(current.all_input_nodes)
    return found


def analyze(gm: fx.GraphModule, input_shape: tuple[int, ...], mode: str = "dense", *,
            channels_last_linears: bool = False) -> Analysis:
    """Values, actions and the plan for converting a traced, shape-propagated model (see `trace`)."""
    if mode not in ANALYSED_MODES:
        raise ValueError(f"mode must be one of {', '.join(ANALYSED_MODES)}, not {mode!r}")
    try:
        return _Analyzer(gm, tuple(input_shape), mode, channels_last_linears).run()
    except ConversionError as e:
        mixer = None if mode == "global" or "attention" in str(e).lower() else _attention(gm, input_shape)
        if mixer is None:
            raise
        raise ConversionError(
            f"'{mixer.node}' sees the whole input ({mixer.why}): a model whose attention mixes all positions has no "
            f"map of local features for its head to slide over; fc2conv converts heads on convolutional feature "
            f"maps. Besides, {e}") from e


def _attention(gm: fx.GraphModule, input_shape: tuple[int, ...]) -> Everywhere | None:
    """The attention (or token mixing) the model's output comes after, if any (`fc2conv.analysis.reach`): a
    more fundamental reason to refuse a dense map than anything about the head."""
    if is_vector_input(input_shape):
        return None
    try:
        values = reach_of(gm, len(input_shape) - 1)
    except Exception:  # the reach pass is a second opinion here: the analysis's own refusal stands without it
        return None
    value = next((values[n] for n in gm.graph.nodes if n.op == "output"), None)
    return value if isinstance(value, Everywhere) and value.attention else None
