"""Which global pools of an ONNX graph are its head and which are global context.

A pool over all spatial positions (GlobalAveragePool, GlobalMaxPool, or ReduceMean/ReduceMax over every spatial
axis) is the head's when everything computed from it meets only other pooled data (an average and a max pool of
one map, concatenated, as timm's catavgmax does); it is global context when its result meets data that was not
pooled (a squeeze-excitation gate multiplying the features it pooled), and stays global.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .graph import Graph, attribute

__all__ = ["PoolUse", "pool_kind", "pool_use"]

_GLOBAL_POOLS = {"GlobalAveragePool": "avg", "GlobalMaxPool": "max", "ReduceMean": "avg", "ReduceMax": "max"}
_WINDOW_POOLS = {"AveragePool": "avg", "MaxPool": "max"}


def _covers_whole_map(g: Graph, node: onnx.NodeProto) -> bool:
    """A window pool that is a global pool at the reference size: one window, its kernel the size of the map (or
    larger, in ceil mode), no padding or dilation. A static export writes `F.avg_pool2d(x, x.size()[2:])` and
    `nn.AdaptiveAvgPool2d(1)` this way (AveragePool(7, stride 7) on a 7×7 map), and Hugging Face's EfficientNet
    pools with `nn.AvgPool2d(1280, ceil_mode=True)`."""
    size = g.shapes.get(node.input[0], (None,))[2:]
    kernel = attribute(node, "kernel_shape")
    if not size or None in size or kernel is None or len(kernel) != len(size) or len(node.output) != 1:
        return False
    if any(attribute(node, "pads", [0]) or [0]) or any(d != 1 for d in attribute(node, "dilations", [1]) or [1]):
        return False
    if attribute(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        return False
    larger = attribute(node, "ceil_mode", 0) and all(k >= s for k, s in zip(kernel, size, strict=True))
    return tuple(kernel) == tuple(size) or bool(larger)


def pool_kind(g: Graph, node: onnx.NodeProto) -> str | None:
    """"avg" or "max" when `node` pools an N×C×(spatial) map over all its spatial positions, else None."""
    if node.op_type in _WINDOW_POOLS:
        return _WINDOW_POOLS[node.op_type] if _covers_whole_map(g, node) else None
    kind = _GLOBAL_POOLS.get(node.op_type)
    rank = g.rank(node.input[0]) if kind is not None else None
    if rank is None or rank < 3:
        return None
    if node.op_type.startswith("Global"):
        return kind
    axes = attribute(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = g.constant(node.input[1])
    if axes is None or len(axes) == 0:
        return None
    return kind if {int(a) % rank for a in np.asarray(axes).ravel()} == set(range(2, rank)) else None


@dataclass
class PoolUse:
    """How the outputs of global pools are used: `context` pools meet, in some node, data that was not
    pooled; `maps[p]` is the map pool `p` pooled from, and `partners[p]` the pools whose results meet p's."""

    context: set[str] = field(default_factory=set)
    maps: dict[str, str] = field(default_factory=dict)
    partners: dict[str, set[str]] = field(default_factory=dict)


def pool_use(g: Graph) -> PoolUse:
    """Pools already made sliding count as pooled data: an average and a max pool of one map, concatenated,
    are both head pools, whichever is rewritten first."""
    dependent = g.value_dependent()
    use = PoolUse()
    pooled: dict[str, set[str]] = {}  # tensor computed from pooled data only → the pools it comes from
    for node in g.graph.node:
        if pool_kind(g, node) or node.output[0] in g.sliding_pools:
            pooled[node.output[0]] = {node.output[0]}
            use.maps[node.output[0]] = node.input[0]
            continue
        data = [i for i in node.input if i in dependent]
        sources = [pooled[i] for i in data if i in pooled]
        if not sources:
            continue
        mixed = set().union(*sources)
        if len(sources) == len(data):
            pooled.update((out, mixed) for out in node.output)
            for pool in mixed:
                use.partners.setdefault(pool, set()).update(mixed)
        else:
            use.context.update(mixed)
    return use
