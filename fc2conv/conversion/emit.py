"""The converted graph, emitted from an analysis: the traced graph copied node by node into a new graph. Kept nodes
are copied, aliased nodes take the value of the node they alias, and each replacement action emits the module
`maths` builds for it under the name of the layer it replaces. Then lint, dead-code elimination, recompile.
"""

from __future__ import annotations

from functools import singledispatchmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..analysis import (
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
)
from . import maths

__all__ = ["Emitter"]


def _fetch(module: nn.Module, target: str) -> Any:
    for part in target.split("."):
        module = getattr(module, part)
    return module


class Emitter:
    """Emits the converted graph of the traced `gm` from its `analysis` (`run`), for maps of rank `rank`."""

    def __init__(self, gm: fx.GraphModule, analysis: Analysis, rank: int):
        self.gm, self.analysis = gm, analysis
        self.rank = rank  # of the converted maps, N×C×(spatial axes), whatever rank the original's tensor had
        self.graph = fx.Graph()
        self.env: dict[fx.Node, fx.Node] = {}
        self.root: dict[str, Any] = {}
        self.channels_last: dict[fx.Node, fx.Node] = {}

    def value(self, node: fx.Node) -> fx.Node:
        """The converted value of `node` as the original code expects it."""
        if isinstance(self.analysis.values.get(node), ChannelsLast):
            if node not in self.channels_last:
                rank = len(node.meta["tensor_meta"].shape)
                self.channels_last[node] = self.graph.call_method("permute", (self.env[node], 0, *range(2, rank), 1))
            return self.channels_last[node]
        return self.env[node]

    def call(self, name: str, module: nn.Module, source: fx.Node, *, emitted: bool = False) -> fx.Node:
        """Call `module`, registered as `name`, on `source` (a node of the original graph, or of the new one when
        `emitted`)."""
        self.root[name] = module
        return self.graph.call_module(name, (source if emitted else self.env[source],))

    def run(self) -> fx.GraphModule:
        for node in self.gm.graph.nodes:
            action = self.analysis.actions.get(node)
            if node.op == "output":
                result = node.args[0]
                self.graph.output(self.env[result] if isinstance(result, fx.Node) else result)
            elif action is None:
                self.env[node] = self.copy(node)
            else:
                self.env[node] = self.emit(action, node)
        gm = fx.GraphModule(self.root, self.graph, class_name=type(self.gm).__name__)
        gm.graph.lint()
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
        return gm

    def copy(self, node: fx.Node) -> fx.Node:
        if node.op == "call_function" and node.target is getattr and node.args[1:] == ("data",):
            # `x.data` hides x from exporters, which then bake its sizes into the graph; `x.detach()` does not.
            return self.graph.call_method("detach", (self.value(node.args[0]),))
        if node.op in ("call_module", "get_attr"):
            self.root[node.target] = _fetch(self.gm, node.target)
        # A node that stays channels-last computes on the NCHW map; others get the permute they expect.
        stays_channels_last = isinstance(self.analysis.values.get(node), ChannelsLast)
        new = self.graph.node_copy(node, self.env.__getitem__ if stays_channels_last else self.value)
        new.meta = {}
        return new

    @singledispatchmethod
    def emit(self, action: Any, node: fx.Node) -> fx.Node:
        raise TypeError(f"no rewrite for {type(action).__name__}")

    @emit.register
    def _(self, action: Alias, node: fx.Node) -> fx.Node:
        return self.env[action.of]

    @emit.register
    def _(self, action: LinearToConv, node: fx.Node) -> fx.Node:
        if node.op == "call_module":
            linear, name = self.gm.get_submodule(node.target), node.target
            weight, bias = linear.weight, linear.bias
        else:  # F.linear(x, weight, bias) with parameters fetched by get_attr
            weight = _fetch(self.gm, node.args[1].target)
            bias_node = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
            bias = _fetch(self.gm, bias_node.target) if bias_node is not None else None
            name = f"{node.name}_conv"
        conv = maths.linear_to_conv(weight, bias, action.channels, action.kernel, fold_from=action.fold_from)
        return self.call(name, conv, action.input)

    @emit.register
    def _(self, action: BatchNormToMaps, node: fx.Node) -> fx.Node:
        bn = maths.batchnorm_to_maps(self.gm.get_submodule(node.target), action.spatial)
        return self.call(node.target, bn, action.input)

    @emit.register
    def _(self, action: LayerNormToChannels, node: fx.Node) -> fx.Node:
        if node.op == "call_module":
            return self.call(node.target, maths.layernorm_to_channels(self.gm.get_submodule(node.target)),
                             action.input)
        # F.layer_norm(x, (C,), weight, bias, eps) as written, on the channels moved last and back.
        # A permute, not movedim: the grid analysis (fc2conv.analysis.reach) follows permutes, and the TorchScript
        # ONNX exporter writes non-negative axes only when given them.
        rank = self.rank
        last = self.graph.call_method("permute", (self.env[action.input], (0, *range(2, rank), 1)))
        rest = tuple(self.env[a] if isinstance(a, fx.Node) else a for a in node.args[1:])
        kwargs = {k: self.env[v] if isinstance(v, fx.Node) else v for k, v in node.kwargs.items()}
        normed = self.graph.call_function(node.target, (last, *rest), kwargs)
        return self.graph.call_method("permute", (normed, (0, rank - 1, *range(1, rank - 1))))

    @emit.register
    def _(self, action: ConcatOverChannels, node: fx.Node) -> fx.Node:
        return self.graph.call_function(torch.cat, ([self.env[n] for n in action.inputs],), {"dim": 1})

    @emit.register
    def _(self, action: SoftmaxOverChannels, node: fx.Node) -> fx.Node:
        softmax = F.log_softmax if action.log else F.softmax
        return self.graph.call_function(softmax, (self.env[action.input],), {"dim": 1})

    @emit.register
    def _(self, action: GlobalToWindowPool, node: fx.Node) -> fx.Node:
        name = node.target if node.op == "call_module" else f"{node.name}_window"
        if action.channels_last:  # a pool over the positions of an N×(positions)×C map: over N×C×(positions)
            return self.call(name, maths.window_pool(action.kind, action.size), self._channels_first(action.input),
                             emitted=True)
        return self.call(name, maths.window_pool(action.kind, action.size), action.input)

    @emit.register
    def _(self, action: GlobalPoolKeepDims, node: fx.Node) -> fx.Node:
        reduce = torch.mean if action.kind == "avg" else torch.amax
        dims = tuple(range(2, len(action.input.meta["tensor_meta"].shape)))
        source = self._channels_first(action.input) if action.channels_last else self.env[action.input]
        return self.graph.call_function(reduce, (source, dims), {"keepdim": True})

    @emit.register
    def _(self, action: MoveChannelsFirst, node: fx.Node) -> fx.Node:
        return self._channels_first(action.input)

    def _channels_first(self, source: fx.Node) -> fx.Node:
        """The converted N×(positions)×C `source` permuted to N×C×(positions)."""
        rank = len(source.meta["tensor_meta"].shape)
        return self.graph.call_method("permute", (self.env[source], (0, rank - 1, *range(1, rank - 1))))
