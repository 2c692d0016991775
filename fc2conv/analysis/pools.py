"""Global pools: which is the head and which is global context, and what each becomes in each mode (a mixin of
the analyzer, `fc2conv.analysis.analyzer`), one rule per case (`fc2conv.analysis.state.Rule`), tried in
`POOL_RULES` order.

A squeeze-excitation pool rescales the features it was computed from: it is global context, not the head, and
sliding it would change what every cell of the backbone computes. It stays as it is, and so does everything
computed from it alone. A head pool becomes, in dense mode, the stride-1 window pool of the size it covered at the
reference size (a fixed kernel that covered the whole map too, as `convert_onnx` slides it in a static export); in
global mode it stays global; in cam mode the head runs before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import fx

from ..shapes import times
from .ops import Pool, callee_of, match_pool, op_name, shape_of
from .plan import Decision
from .state import AnalyzerState, At, Rule, apply_first
from .values import Alias, GlobalPoolKeepDims, GlobalToWindowPool, Vector

__all__ = ["POOL_RULES", "PoolAt", "PoolVisits", "feeds_only_head", "pooled_nodes"]


def feeds_only_head(pools: list[fx.Node], graph: fx.Graph, variable: set[fx.Node], pooled: set[fx.Node]) -> bool:
    """True unless something downstream of `pools` (global pools of one map) mixes them with input-dependent
    values that were not pooled (`pooled`: computed from global pools alone).

    A squeeze-excitation pool rescales the features it was computed from: it is global context, not the
    head, and sliding it would change what every cell of the backbone computes. Pools of the same map may
    mix with each other (an average and a max pool concatenated): as windows they slide on the same grid.
    Pools of different maps meeting are still the head, which then refuses to mix them.
    """
    downstream = set(pools)
    for node in graph.nodes:
        inputs = node.all_input_nodes
        if node in downstream or not any(n in downstream for n in inputs):
            continue
        downstream.add(node)
        for n in inputs:
            if (n not in downstream and n in variable and n not in pooled and shape_of(n) is not None
                    and node.op != "output"):
                return False
    return True


def pooled_nodes(graph: fx.Graph, variable: set[fx.Node], is_pool: Any) -> set[fx.Node]:
    """Global pools, and the nodes whose input-dependent inputs all come from them."""
    pooled: set[fx.Node] = set()
    for node in graph.nodes:
        inputs = [n for n in node.all_input_nodes if n in variable]
        if is_pool(node) or (inputs and all(n in pooled for n in inputs)):
            pooled.add(node)
    return pooled


@dataclass(frozen=True)
class PoolAt(At):
    """A global or adaptive pool as a rule sees it: `features` the map it pools (`channels` deep), whether it is the
    head's (`head`: nothing downstream mixes it with unpooled features), and the origin its vectors get."""

    pool: Pool
    features: fx.Node
    channels: int
    head: bool
    origin: fx.Node

    def record(self, rule: str, reason: str = "") -> None:
        self.state.decisions.append(Decision(self.state.layer(self.node), op_name(self.callee), rule,
                                             self.pool.size_in, self.channels, self.channels, reason))

    def vectors(self, source: fx.Node, **kwargs) -> None:
        """The pool's output is one vector per example: `source` carried as a map of 1×…×1 cells."""
        self.state.values[self.node] = Vector(source, self.channels, (1,) * len(self.pool.size_in),
                                              origin=self.origin, **kwargs)


_FIXED_NOTE = (" (its fixed kernel covered the whole map at the reference size; the converted model pools the whole "
               "map at every size, where the original fails)")


class AdaptiveOutsideTheHead(Rule[PoolAt]):
    """An adaptive pool to a size above one, in global or cam mode or outside the head: kept as it is."""

    def match(self, at: PoolAt) -> bool:
        return not at.pool.is_global and (at.state.mode != "dense" or not at.head)

    def rewrite(self, at: PoolAt) -> None:
        pass


class AdaptiveIdentity(Rule[PoolAt]):
    """An adaptive pool whose output is its input's size: the identity at the reference size, removed."""

    def match(self, at: PoolAt) -> bool:
        return not at.pool.is_global and at.pool.size_in == at.pool.size_out

    def rewrite(self, at: PoolAt) -> None:
        at.state.start_head(at.node, at.features)
        at.state.actions[at.node] = Alias(at.features)
        at.record("removed", "the identity at the reference size")


class AdaptiveAverageFolded(Rule[PoolAt]):
    """An adaptive average pool from h×w to a smaller size: folded into the next conv's kernel."""

    def match(self, at: PoolAt) -> bool:
        return not at.pool.is_global and at.pool.kind == "avg"

    def rewrite(self, at: PoolAt) -> None:
        pool = at.pool
        at.state.start_head(at.node, at.features)
        at.state.actions[at.node] = Alias(at.features)
        at.state.values[at.node] = Vector(at.features, at.channels, pool.size_out, origin=at.node,
                                          fold_from=pool.size_in)
        at.record("folded", f"averages {times(pool.size_in)} to {times(pool.size_out)}; folded into the next conv")


class AdaptiveMax(Rule[PoolAt]):
    def match(self, at: PoolAt) -> bool:
        return not at.pool.is_global

    def check(self, at: PoolAt) -> str | None:
        size_in, size_out = times(at.pool.size_in), times(at.pool.size_out)
        return (f"an adaptive max pool from {size_in} to {size_out} is not a sliding window; use mode='global', or "
                f"a reference size where the map is already {size_out}")


class GlobalContext(Rule[PoolAt]):
    """A global pool whose result rescales the features elsewhere (squeeze-excitation): kept global."""

    def match(self, at: PoolAt) -> bool:
        return not at.head

    def rewrite(self, at: PoolAt) -> None:
        at.state.context[at.node] = at.node
        at.state.global_context = True
        at.record("kept global", "global context: its result rescales the features elsewhere")
        if at.pool.fixed:  # its kernel covered the map at the reference size: global at every size, as meant
            at.state.actions[at.node] = GlobalPoolKeepDims(at.features, at.pool.kind)


class WindowPool(Rule[PoolAt]):
    """dense: the head's global pool becomes a stride-1 window pool of the size it covered. A pool whose fixed
    kernel covered the whole map at the reference size (`F.avg_pool2d(out, 4)` on a 4×4 map) is the head's global
    pool too, and slides with stride 1 as well, not with its own stride: the same map `convert_onnx` makes of a
    static export, where the kernel is all that is left of how the pool was written."""

    def match(self, at: PoolAt) -> bool:
        return at.state.mode == "dense"

    def rewrite(self, at: PoolAt) -> None:
        pool, state = at.pool, at.state
        state.start_head(at.node, at.features)
        state.actions[at.node] = GlobalToWindowPool(at.features, pool.kind, pool.size_in)
        at.record(f"window {pool.kind} pool", "stride 1: slides over larger inputs" + (
            " (its fixed kernel covered the whole map at the reference size: it slides as a global pool does, "
            "not with its own stride)" if pool.fixed else ""))
        if not pool.keepdim:
            at.vectors(at.node)


class CamRemoved(Rule[PoolAt]):
    """cam: the head runs at every location, and its maps are averaged after it."""

    def match(self, at: PoolAt) -> bool:
        return at.state.mode == "cam"

    def check(self, at: PoolAt) -> str | None:
        return "class activation maps need a global *average* pool" if at.pool.kind != "avg" else None

    def rewrite(self, at: PoolAt) -> None:
        at.state.widened = at.pool.fixed
        at.state.start_head(at.node, at.features)
        at.state.actions[at.node] = Alias(at.features)
        at.vectors(at.features, mean=True)
        at.record("removed", "cam: the head runs at every location before averaging" + (
            _FIXED_NOTE if at.pool.fixed else ""))


class GlobalKept(Rule[PoolAt]):
    """global: the pool stays global, so the output stays one cell; vectors are carried as 1×1 maps."""

    def match(self, at: PoolAt) -> bool:
        return at.state.mode == "global"

    def rewrite(self, at: PoolAt) -> None:
        pool, state = at.pool, at.state
        state.widened = pool.fixed
        state.start_head(at.node, at.features)  # the head is what follows: a Linear on permuted maps converts
        at.record("kept global", "mode='global': the output stays one cell for every input size" + (
            _FIXED_NOTE if pool.fixed else ""))
        if not pool.keepdim or pool.fixed:  # one cell at every size
            state.actions[at.node] = GlobalPoolKeepDims(at.features, pool.kind)
        if not pool.keepdim:
            at.vectors(at.node)


# In order: the first rule that matches decides.
POOL_RULES: tuple[Rule[PoolAt], ...] = (
    AdaptiveOutsideTheHead(), AdaptiveIdentity(), AdaptiveAverageFolded(), AdaptiveMax(), GlobalContext(),
    WindowPool(), CamRemoved(), GlobalKept(),
)


class PoolVisits(AnalyzerState):
    """The analyzer's decisions on pools (see the module docstring)."""

    def is_global_pool(self, node: fx.Node) -> bool:
        pool = match_pool(node, callee_of(node, self.modules)) if node.op in ("call_module", "call_function",
                                                                             "call_method") else None
        return pool is not None and pool.is_global

    def global_pools_of(self, features: fx.Node) -> list[fx.Node]:
        """Every global pool of `features`, in graph order."""
        return [n for n in features.users
                if (pool := match_pool(n, callee_of(n, self.modules))) is not None and pool.is_global
                and n.args[0] is features]

    def pooled_again(self, node: fx.Node) -> bool:
        """Whether a pool other than a fixed window, global or adaptive, is computed from `node`'s output further on:
        then that pool, not `node`, is the one that meets maps of every size (a max pool whose window happens to
        cover a 2×2 map, followed by an adaptive pool to 1×2, is an ordinary layer)."""
        seen, todo = set(), list(node.users)
        while todo:
            user = todo.pop()
            if user in seen:
                continue
            seen.add(user)
            pool = match_pool(user, callee_of(user, self.modules)) if user.op != "output" else None
            if pool is not None and not pool.fixed:
                return True
            todo.extend(user.users)
        return False

    def visit_pool(self, node: fx.Node, callee: Any, pool: Pool) -> None:
        if pool.fixed and self.pooled_again(node):
            return  # a window that happens to cover the map: the model's global pool comes later
        features = node.args[0]
        siblings = self.global_pools_of(features) if pool.is_global else [node]
        head = feeds_only_head(siblings, self.gm.graph, self.variable, self.pooled)
        origin = self.pool_origins[node] = siblings[0]  # vectors pooled from one map may mix: one origin
        apply_first(POOL_RULES, PoolAt(self, node, callee, pool, features, shape_of(features)[1], head, origin))
