"""What every ONNX rewrite rule shares (`fc2conv.runtime.onnx.rules` has the rules and the algebra): the `Rule`
protocol, the ops that flatten a map into vectors and back, and the bookkeeping of vectors carried as maps."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ...shapes import times
from .graph import Graph

__all__ = ["FLATTENS", "UNFLATTENS", "UNKNOWN_SHAPE", "Rule", "fixed_size_reason", "grows", "lift", "per_feature",
           "set_int"]

FLATTENS = frozenset({"Flatten", "Reshape", "Squeeze"})
UNFLATTENS = frozenset({"Reshape", "Unsqueeze"})
UNKNOWN_SHAPE = (
    "unknown to ONNX shape inference at the reference input size (a shape the graph computes at run time, "
    "such as a channel shuffle's Reshape); convert the PyTorch model with fc2conv.convert instead"
)


class Rule:
    """One rewrite rule. `check` runs only where `match` holds; `rewrite` only where `check` found no reason."""

    def match(self, g: Graph, node: onnx.NodeProto) -> bool:
        raise NotImplementedError

    def check(self, g: Graph, node: onnx.NodeProto) -> str | None:
        return None

    def rewrite(self, g: Graph, node: onnx.NodeProto) -> None:
        raise NotImplementedError


def lift(g: Graph, name: str, batch: int | None, features: int | None) -> None:
    """Record that `name`, an N×D vector in the original graph, now holds N×D×1×…×1 at the reference size."""
    g.lifted.add(name)
    g.shapes[name] = (batch, features, *(1,) * g.spatial)


def set_int(node: onnx.NodeProto, name: str, value: int) -> None:
    """Set `node`'s integer attribute `name`, adding it when absent."""
    for attr in node.attribute:
        if attr.name == name:
            attr.i = value
            return
    node.attribute.append(helper.make_attribute(name, value))


def per_feature(value: np.ndarray, features: int) -> bool:
    """Whether `value` broadcasts against N×features vectors as one number or one number per feature."""
    return value.size == 1 or value.shape in ((features,), (1, features))


def grows(g: Graph, name: str) -> bool | None:
    """Whether the spatial size of map `name` grows with the input (None when shape inference cannot tell)."""
    ref, probe = g.shapes.get(name), g.probe.get(name)
    if ref is None or probe is None or None in probe[2:]:
        return None
    return any(p > r for p, r in zip(probe[2:], ref[2:], strict=True))


def fixed_size_reason(name: str, size: tuple[int, ...]) -> str:
    """Why a rule that would slide refuses: its input map `name` keeps the size `size` when the image grows."""
    return (
        f"its input {name!r} stays {times(size)} when the image grows, so nothing can slide over it: a "
        "layer before it has this image size baked in (a reshape written with the export's sizes, or an adaptive "
        "pool the exporter unrolled). Export with dynamic height and width (dynamic_axes), at a size where such a "
        "pool is the identity (VGG/AlexNet: 224×224), or use mode='global'"
    )

