"""The rules for a classifier's Linear layers: a Gemm or MatMul on flattened features (or on a vector carried as a
map) becomes a Conv (`GemmToConv`), and a per-output constant added after it joins its bias (`FoldBias`). The
algebra is in `fc2conv.runtime.onnx.rules`."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from ...shapes import times
from .graph import Graph, attribute, describe
from .rule import FLATTENS, UNKNOWN_SHAPE, Rule, fixed_size_reason, grows, lift, per_feature

__all__ = ["FoldBias", "GemmToConv"]


class GemmToConv(Rule):
    """Gemm, or MatMul by a constant matrix, on flattened N×C×h×w features or on a lifted vector → Conv."""

    def __init__(self, dense: bool) -> None:
        self.dense = dense

    def match(self, g: Graph, node: onnx.NodeProto) -> bool:
        if node.op_type != "MatMul":
            return node.op_type == "Gemm"
        a, b = node.input
        return g.is_constant(b) and g.rank(b) == 2 and (a in g.lifted or g.rank(a) == 2)

    def check(self, g: Graph, node: onnx.NodeProto) -> str | None:
        features = self._features(g, node.input[0])
        if isinstance(features, str):
            return features
        x, channels, kernel = features
        if attribute(node, "transA", 0):
            return "transA=1 transposes the batch into the features"
        if not g.is_constant(node.input[1]) or g.rank(node.input[1]) != 2:
            return f"its weight {node.input[1]!r} is not a constant matrix"
        out_features, in_features = self._matrix_shape(node, g.shapes[node.input[1]])
        if in_features != channels * math.prod(kernel):
            return (f"it takes {in_features} features, not {channels}×{times(kernel)} = "
                    f"{channels * math.prod(kernel)}")
        bias = g.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if len(node.input) > 2 and node.input[2] and (bias is None or not per_feature(bias, out_features)):
            return f"its bias {node.input[2]!r} is not a constant with one value per output"
        if self.dense and x not in g.lifted and grows(g, x) is False:
            return fixed_size_reason(x, kernel)
        return None

    def rewrite(self, g: Graph, node: onnx.NodeProto) -> None:
        x, _, kernel = self._features(g, node.input[0])
        weight = self._matrix(node, g.constant(node.input[1]))
        alpha = attribute(node, "alpha", 1.0) if node.op_type == "Gemm" else 1.0
        conv_weight = (alpha * weight).astype(weight.dtype).reshape(weight.shape[0], -1, *kernel)
        inputs = [x, g.add_initializer(conv_weight, f"{node.input[1]}_conv")]
        if len(node.input) > 2 and node.input[2]:
            beta = attribute(node, "beta", 1.0)
            bias = np.broadcast_to(beta * g.constant(node.input[2]), (1, weight.shape[0])).reshape(-1)
            inputs.append(g.add_initializer(bias.astype(weight.dtype), f"{node.input[2]}_conv"))
        out = node.output[0]
        conv = helper.make_node("Conv", inputs, [out], name=node.name, kernel_shape=list(kernel))
        g.replace(node, [conv])
        lift(g, out, g.shapes[x][0], weight.shape[0])

    @staticmethod
    def _out_by_in(node: onnx.NodeProto) -> bool:
        """Whether the weight is stored out×in (Gemm with transB=1); otherwise it is in×out."""
        return node.op_type == "Gemm" and bool(attribute(node, "transB", 0))

    @classmethod
    def _matrix_shape(cls, node: onnx.NodeProto, shape: tuple[int, ...]) -> tuple[int, int]:
        return (shape[0], shape[1]) if cls._out_by_in(node) else (shape[1], shape[0])

    @classmethod
    def _matrix(cls, node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
        """The weight as out×in."""
        return weight if cls._out_by_in(node) else weight.T

    @staticmethod
    def _features(g: Graph, a: str) -> tuple[str, int, tuple[int, ...]] | str:
        """(map, C, kernel) such that `a` is Flatten(map) or the lifted map itself; else why not."""
        if a in g.lifted:
            return a, g.shapes[a][1], (1,) * g.spatial
        producer = g.producer.get(a)
        if producer is None:
            return f"its input {a!r} is a graph input of rank {g.rank(a)}, not image features"
        source = g.shapes.get(producer.input[0])
        if producer.op_type in FLATTENS and source is not None and len(source) == 2 + g.spatial:
            if None in source:
                return f"the shape of its input features {producer.input[0]!r} is {UNKNOWN_SHAPE}"
            if g.shapes.get(a) == (source[0], math.prod(source[1:])):
                return producer.input[0], source[1], tuple(source[2:])
        return (
            f"its input {a!r} comes from {describe(producer)}, not from flattened convolutional features, a "
            "global pool or another converted Gemm"
        )



class FoldBias(Rule):
    """Add of a per-output constant right after a head Conv → that Conv's bias."""

    def match(self, g: Graph, node: onnx.NodeProto) -> bool:
        if node.op_type != "Add" or len(node.input) != 2:
            return False
        for conv_out, other in (node.input, reversed(node.input)):
            conv = g.producer.get(conv_out)
            value = g.constant(other)
            if (
                conv is not None and conv.op_type == "Conv" and conv_out in g.lifted
                and len(g.consumers[conv_out]) == 1 and conv_out not in g.outputs
                and value is not None and per_feature(value, g.shapes[conv_out][1])
            ):
                return True
        return False

    def rewrite(self, g: Graph, node: onnx.NodeProto) -> None:
        conv_out, other = node.input if node.input[0] in g.lifted else reversed(node.input)
        conv = g.producer[conv_out]
        channels = g.shapes[conv_out][1]
        weight = g.constant(conv.input[1])
        bias = g.constant(conv.input[2]) if len(conv.input) > 2 else np.zeros(channels, weight.dtype)
        bias = (bias + np.broadcast_to(g.constant(other), (1, channels)).reshape(-1)).astype(weight.dtype)
        name = g.add_initializer(bias, f"{conv.input[1]}_bias")
        if len(conv.input) > 2:
            conv.input[2] = name
        else:
            conv.input.append(name)
        conv.output[0] = node.output[0]
        g.replace(node, [])
        lift(g, node.output[0], *g.shapes[conv_out][:2])

