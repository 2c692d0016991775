"""Decide, node by node, how a traced classifier becomes fully convolutional (`analyze`), and where each value
comes from in the input (`reach`).

One pass over the graph in order gives every node a *value* and an *action*.

Values say what a node's output is in the converted graph:
- kept (no entry): the node computes what it computed before, on maps that may now be larger;
- `Vector`: the original output is a vector per example that equals `source.flatten(1)` at the reference
  size, where `source` is an N×C×(spatial) map in the converted graph, with 1, 2 or 3 spatial axes. A flatten
  of C×h×w features starts one (kernel h×w), a Linear on it gives another (kernel 1×1): this is how the head
  is carried as maps;
- `ChannelsLast`: the original output is `source` with its channels moved last (the inside of a ConvNeXt
  block).

Global pools that are not the head (squeeze-excitation and every other spelling of global context: ECA,
split attention, CBAM) are kept as they are, and so is everything computed from them alone until it meets
the features again: a Linear there is left alone.

Actions say what the rewrite emits: a copy of the node (the default), an alias of another node's
value (a flatten or an identity pool disappears), or one of the replacements below. Every Linear,
and every pool the mode touches, also gets a `Decision`, the printable row of `plan()`.
"""

from .analyzer import ANALYSED_MODES, analyze
from .plan import Decision, Plan
from .values import (
    Alias,
    Analysis,
    BatchNormToMaps,
    ChannelsLast,
    ConcatOverChannels,
    GlobalPoolKeepDims,
    GlobalToWindowPool,
    LayerNormToChannels,
    LinearToConv,
    MoveChannelsFirst,
    SoftmaxOverChannels,
    Vector,
)

__all__ = [
    "ANALYSED_MODES", "Alias", "Analysis", "BatchNormToMaps", "ChannelsLast", "ConcatOverChannels", "Decision",
    "GlobalPoolKeepDims", "GlobalToWindowPool", "LayerNormToChannels", "LinearToConv", "MoveChannelsFirst", "Plan",
    "SoftmaxOverChannels", "Vector", "analyze",
]
