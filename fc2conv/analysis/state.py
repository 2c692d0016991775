"""What the analysis pass shares with its visitor mixins (`pools.py`, `head.py`, `channels_last.py`): the state
they read and write, declared once (`AnalyzerState`), and the shape of the rules they are written in (`Rule`).

A rule is one way the pass treats a node, as `fc2conv.runtime.onnx.rules` treats an ONNX node: `match` says whether the
rule speaks for the node, `check` returns the reason it must refuse (or None), and `rewrite` records the node's
value, action and decision. `apply_first` tries rules in order; the first that matches decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from torch import fx, nn

from ..errors import ConversionError
from .plan import Decision
from .values import Action, ChannelsLast, Vector

__all__ = ["AnalyzerState", "At", "Rule", "apply_first"]


class AnalyzerState:
    """The pass's state and helpers that the mixins use. `fc2conv.analysis.analyzer._Analyzer` sets every attribute
    in its `__init__` and defines every method; a mixin uses nothing else of it."""

    gm: fx.GraphModule
    mode: str  # "dense", "global" or "cam"
    input_shape: tuple[int, ...]
    modules: dict[str, nn.Module]  # every name a module is reachable by, shared modules included
    variable: set[fx.Node]  # nodes whose value depends on the input
    pooled: set[fx.Node]  # global pools, and nodes computed from them alone
    values: dict[fx.Node, Vector | ChannelsLast]  # what a node's output is in the converted graph (none: kept)
    actions: dict[fx.Node, Action]  # what the rewrite emits for a node (none: a copy)
    decisions: list[Decision]  # the plan's rows
    head: set[fx.Node]  # nodes downstream of where the head starts
    positions_last: set[fx.Node]  # N×(positions)×C maps of the backbone
    lost: dict[fx.Node, str]  # nodes that read the head's channels-last tensor in a way it cannot carry
    pool_origins: dict[fx.Node, fx.Node]  # global pool → the origin its vectors get
    context: dict[fx.Node, fx.Node]  # node computed from a global-context pool alone → that pool
    global_context: bool  # some global pool feeds the backbone
    widened: bool  # a fixed pool that covered the map at the reference size now pools any size

    def fail(self, node: fx.Node, callee: Any, why: str) -> ConversionError:
        """The error that refuses `node`, naming it and `why`."""
        raise NotImplementedError

    def layer(self, node: fx.Node) -> str:
        """The name of `node`'s layer in the plan."""
        raise NotImplementedError

    def start_head(self, node: fx.Node, features: fx.Node) -> None:
        """`node` starts the head on `features`, unless it is already inside the head."""
        raise NotImplementedError


@dataclass(frozen=True)
class At:
    """A node as a rule sees it: the pass, the node, and what it calls (a module, a function or a method name)."""

    state: AnalyzerState
    node: fx.Node
    callee: Any


AtNode = TypeVar("AtNode", bound=At)


class Rule(Generic[AtNode]):
    """One way the pass treats a node. `check` runs only where `match` holds; `rewrite` only where `check` found
    no reason to refuse."""

    def match(self, at: AtNode) -> bool:
        raise NotImplementedError

    def check(self, at: AtNode) -> str | None:
        return None

    def rewrite(self, at: AtNode) -> None:
        raise NotImplementedError


def apply_first(rules: Sequence[Rule[AtNode]], at: AtNode) -> bool:
    """Apply the first of `rules` that matches `at`, or refuse with its reason; False if none matches."""
    for rule in rules:
        if rule.match(at):
            reason = rule.check(at)
            if reason is not None:
                raise at.state.fail(at.node, at.callee, reason)
            rule.rewrite(at)
            return True
    return False
