"""What the analysis says of each node: its *value* in the converted graph and the *action* the rewrite emits for
it, and the `Analysis` that carries them to the rewrite (`fc2conv.conversion.rewrite`).

Values:
- kept (no entry): the node computes what it computed before, on maps that may now be larger;
- `Vector`: the original output is a vector per example that equals `source.flatten(1)` at the reference
  size, where `source` is an N×C×(spatial) map in the converted graph. A flatten of C×h×w features starts one
  (kernel h×w), a Linear on it gives another (kernel 1×1): this is how the head is carried as maps;
- `ChannelsLast`: the original output is `source` with its channels moved last.

Actions: a copy of the node (the default), an alias of another node's value (a flatten or an identity pool
disappears), or one of the replacements below.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx

from ..shapes import times
from .plan import Plan

__all__ = [
    "Action", "Alias", "Analysis", "BatchNormToMaps", "ChannelsLast", "ConcatOverChannels", "GlobalPoolKeepDims",
    "GlobalToWindowPool", "LayerNormToChannels", "LinearToConv", "MoveChannelsFirst", "SoftmaxOverChannels", "Vector",
]


@dataclass(frozen=True)
class Vector:
    source: fx.Node
    channels: int
    kernel: tuple[int, ...]
    origin: fx.Node  # where the vector was made; vectors of two origins never mix
    fold_from: tuple[int, ...] | None = None  # an adaptive average pool from this size is still to fold
    mean: bool = False  # cam: the original vector is the spatial mean of `source`

    @property
    def is_plain(self) -> bool:
        return all(k == 1 for k in self.kernel) and self.fold_from is None

    def describe(self) -> str:
        return f"flattened {self.channels}×{times(self.kernel)} features from '{self.origin.name}'"


@dataclass(frozen=True)
class ChannelsLast:
    source: fx.Node




@dataclass(frozen=True)
class Alias:
    of: fx.Node


@dataclass(frozen=True)
class LinearToConv:
    input: fx.Node
    channels: int
    kernel: tuple[int, ...]
    fold_from: tuple[int, ...] | None


@dataclass(frozen=True)
class BatchNormToMaps:
    input: fx.Node
    spatial: int


@dataclass(frozen=True)
class LayerNormToChannels:
    input: fx.Node


@dataclass(frozen=True)
class SoftmaxOverChannels:
    input: fx.Node
    log: bool


@dataclass(frozen=True)
class GlobalToWindowPool:
    input: fx.Node
    kind: str
    size: tuple[int, ...]
    channels_last: bool = False  # the input is N×(positions)×C: its channels move first, then the window slides


@dataclass(frozen=True)
class GlobalPoolKeepDims:
    input: fx.Node
    kind: str
    channels_last: bool = False  # the input is N×(positions)×C: its channels move first


@dataclass(frozen=True)
class MoveChannelsFirst:
    """An N×(positions)×C tensor as the N×C×(positions) map it is (cam: the map the class maps are made from)."""

    input: fx.Node


@dataclass(frozen=True)
class ConcatOverChannels:
    inputs: tuple[fx.Node, ...]


Action = Alias | LinearToConv | BatchNormToMaps | LayerNormToChannels | SoftmaxOverChannels | GlobalToWindowPool
Action = Action | GlobalPoolKeepDims | ConcatOverChannels | MoveChannelsFirst


@dataclass
class Analysis:
    """Everything the rewrite needs: per-node values and actions, the plan, and the head's entry."""

    mode: str
    values: dict[fx.Node, Vector | ChannelsLast]
    actions: dict[fx.Node, Action]
    plan: Plan
    cut: fx.Node | None  # the feature map the head slides over (dense), when there is exactly one
    window: tuple[int, ...] | None  # its size at the reference input
    global_context: bool  # dense: some global pool feeds the backbone, so cells see image-level context
    widened: bool  # global/cam: a fixed pool that covered the map at the reference size now pools any size
    cut_channels_last: bool = False  # the cut is N×(positions)×C (a backbone that works channels-last)
