"""Global pools: which is the head and which is global context, and what each becomes in each mode (a mixin of
the analyzer, `fc2conv.analysis.analyzer`).

A squeeze-excitation pool rescales the features it was computed from: it is global context, not the head, and
sliding it would change what every cell of the backbone computes. It stays as it is, and so does everything
computed from it alone. A head pool becomes, in dense mode, the stride-1 window pool of the size it covered at the
reference size; in global mode it stays global; in cam mode the head runs before it.
"""

from __future__ import annotations

from typing import Any

from torch import fx

from ..shapes import times
from .ops import Pool, callee_of, describe, match_pool, shape_of
from .plan import Decision
from .values import Alias, GlobalPoolKeepDims, GlobalToWindowPool, Vector

__all__ = ["PoolVisits", "feeds_only_head", "pooled_nodes"]


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


class PoolVisits:
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
        """Whether a global pool other than a fixed window is computed from `node`'s output further on."""
        seen, todo = set(), list(node.users)
        while todo:
            user = todo.pop()
            if user in seen:
                continue
            seen.add(user)
            pool = match_pool(user, callee_of(user, self.modules)) if user.op != "output" else None
            if pool is not None and pool.is_global and not pool.fixed:
                return True
            todo.extend(user.users)
        return False

    def visit_pool(self, node: fx.Node, callee: Any, pool: Pool) -> None:
        if pool.fixed and self.pooled_again(node):
            return  # a window that happens to cover the map: the model's global pool comes later
        features = node.args[0]
        channels = shape_of(features)[1]
        siblings = self.global_pools_of(features) if pool.is_global else [node]
        head = feeds_only_head(siblings, self.gm.graph, self.variable, self.pooled)
        origin = self.pool_origins[node] = siblings[0]  # vectors pooled from one map may mix: one origin
        op = describe(node, callee).split(" ", 1)[1].strip("()")
        ones = (1,) * len(pool.size_in)
        record = lambda rule, reason="": self.decisions.append(  # noqa: E731
            Decision(self.layer(node), op, rule, pool.size_in, channels, channels, reason))
        if not pool.is_global:
            if self.mode != "dense" or not head:
                return
            self.start_head(node, features)
            if pool.size_in == pool.size_out:
                self.actions[node] = Alias(features)
                record("removed", "the identity at the reference size")
            elif pool.kind == "avg":
                self.actions[node] = Alias(features)
                self.values[node] = Vector(features, channels, pool.size_out, origin=node, fold_from=pool.size_in)
                record("folded", f"averages {times(pool.size_in)} to {times(pool.size_out)}; folded into the "
                                 "next conv")
            else:
                raise self.fail(node, callee, (
                    f"an adaptive max pool from {times(pool.size_in)} to {times(pool.size_out)} is not a sliding "
                    f"window; use mode='global', or a reference size where the map is already "
                    f"{times(pool.size_out)}"))
            return
        if not head:
            self.context[node] = node
            self.global_context = True
            record("kept global", "global context: its result rescales the features elsewhere")
            if pool.fixed:  # its kernel covered the map at the reference size: global at every size, as meant
                self.actions[node] = GlobalPoolKeepDims(features, pool.kind)
            return
        fixed_note = (" (its fixed kernel covered the whole map at the reference size; the converted model "
                      "pools the whole map at every size, where the original fails)") if pool.fixed else ""
        if self.mode == "dense" and pool.fixed:
            return  # a fixed window slides with its own stride, as in the original: kept as it is
        self.widened = pool.fixed
        if self.mode == "global":
            self.start_head(node, features)  # the head is what follows: a Linear on permuted maps converts
            record("kept global", "mode='global': the output stays one cell for every input size" + fixed_note)
        elif self.mode == "dense":
            self.start_head(node, features)
            self.actions[node] = GlobalToWindowPool(features, pool.kind, pool.size_in)
            record(f"window {pool.kind} pool", "stride 1: slides over larger inputs")
            if not pool.keepdim:
                self.values[node] = Vector(node, channels, ones, origin=origin)
            return
        elif self.mode == "cam":
            if pool.kind != "avg":
                raise self.fail(node, callee, "class activation maps need a global *average* pool")
            self.start_head(node, features)
            self.actions[node] = Alias(features)
            self.values[node] = Vector(features, channels, ones, origin=origin, mean=True)
            record("removed", "cam: the head runs at every location before averaging" + fixed_note)
            return
        if not pool.keepdim or pool.fixed:  # one cell at every size; vectors carried as 1×1 maps
            self.actions[node] = GlobalPoolKeepDims(features, pool.kind)
        if not pool.keepdim:
            self.values[node] = Vector(node, channels, ones, origin=origin)
