"""The head carried as maps: how each op applies to the head's vectors (`Vector` values), a mixin of the analyzer
(`fc2conv.analysis.analyzer`); channels-last tensors are `channels_last.py`'s. Each branch says what it accepts and
refuses with the reason what it cannot carry exactly.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import fx, nn

from .ops import (
    BINARY_FUNCTIONS,
    BINARY_METHODS,
    CONCAT_FUNCTIONS,
    IDENTITY_FUNCTIONS,
    IDENTITY_METHODS,
    IDENTITY_MODULES,
    LINEAR_IN_MEAN,
    POINTWISE_FUNCTIONS,
    POINTWISE_METHODS,
    POINTWISE_MODULES,
    arg,
    is_batch_and_channels,
    is_batch_size,
    is_linear,
    is_op,
    is_reshape,
    linear_op,
    shape_of,
    softmax_dim,
    softmax_kind,
)
from .plan import Decision
from .values import (
    Alias,
    BatchNormToMaps,
    ConcatOverChannels,
    LayerNormToChannels,
    LinearToConv,
    SoftmaxOverChannels,
    Vector,
)

__all__ = ["HeadVisits"]


class HeadVisits:
    """The analyzer's visits to nodes that read the head's vectors."""

    def visit_vector(self, node: fx.Node, callee: Any) -> None:
        vectors = [v for n in node.all_input_nodes if isinstance(v := self.values.get(n), Vector)]
        vec = vectors[0]
        if any(v.origin is not vec.origin for v in vectors):
            origins = sorted({v.origin.name for v in vectors})
            raise self.fail(node, callee, (
                f"it combines vectors from separate branches ({', '.join(origins)}); a map of scores needs "
                "one path from the features to the classifier"))
        follow = lambda: replace(vec, source=node)  # noqa: E731
        shape_out = shape_of(node)

        if is_linear(callee):
            if node.args[0] not in self.values:
                raise self.fail(node, callee, "its weight, not its input, comes from the features")
            if len(shape_of(node.args[0])) != 2:
                raise self.fail(node, callee, f"its input has shape {shape_of(node.args[0])}, not N×features")
            op, _, out_features = linear_op(node, callee)
            if vec.mean and not vec.is_plain:
                raise self.fail(node, callee, "it is not fed by a global average pool")
            kernel = vec.fold_from or vec.kernel
            rule = "1×1 conv" if all(k == 1 for k in kernel) else "global conv"
            if vec.fold_from:
                rule += " (pool folded)"
            self.actions[node] = LinearToConv(node.args[0], vec.channels, vec.kernel, vec.fold_from)
            self.values[node] = Vector(node, out_features, (1,) * len(kernel), origin=vec.origin, mean=vec.mean)
            self.decisions.append(Decision(self.layer(node), op, rule, kernel, vec.channels, out_features))
            return
        if is_reshape(callee) and shape_out is not None and node.args[0] in self.values:
            size = vec.channels * math.prod(vec.kernel)
            if vec.is_plain and not vec.mean and shape_out[1:] == (vec.channels, *vec.kernel):
                self.actions[node] = Alias(vec.source)  # back to a 1×1 map: the kept map is that map
                return
            if int(torch.Size(shape_out[1:]).numel()) == size and shape_out[0] == shape_of(node.args[0])[0]:
                self.actions[node] = Alias(node.args[0])  # the same vectors, reshaped
                self.values[node] = vec
                return
        if is_batch_size(node) or (vec.is_plain and (shape_of(node.args[0]) or (0, 0))[1] == vec.channels
                                   and is_batch_and_channels(node)):
            return  # the batch size is the same in the map, and so are a pooled vector's channels
        if is_op(callee, IDENTITY_MODULES, IDENTITY_FUNCTIONS, IDENTITY_METHODS):
            self.values[node] = follow()
            return
        if is_op(callee, POINTWISE_MODULES, POINTWISE_FUNCTIONS, POINTWISE_METHODS):
            if vec.fold_from:
                raise self.fail(node, callee, "it sits between an adaptive average pool and a Linear, so the "
                                              "pool cannot be folded into the Linear; use mode='global'")
            if vec.mean:
                raise self.fail(node, callee, "it is not linear, so class maps would not average to the logits")
            self.values[node] = follow()
            return
        if is_op(callee, (), BINARY_FUNCTIONS, BINARY_METHODS):
            others = [a for a in node.args if isinstance(a, fx.Node) and a not in self.values]
            layouts = {(v.channels, v.kernel, v.fold_from) for v in vectors}
            if others and any(shape_of(a) not in ((), None) for a in others):
                raise self.fail(node, callee, "it combines the head's vectors with a tensor from the features")
            if len(layouts) != 1 or vec.fold_from:
                raise self.fail(node, callee, "it combines vectors of different layouts")
            if vec.mean and (callee not in LINEAR_IN_MEAN and len(vectors) > 1):
                raise self.fail(node, callee, "it is not linear, so class maps would not average to the logits")
            self.values[node] = follow()
            return
        if is_op(callee, (), CONCAT_FUNCTIONS):
            parts = arg(node, 0, "tensors")
            if len(shape_out or ()) != 2 or arg(node, 1, "dim", 0) not in (1, -1):
                raise self.fail(node, callee, "it concatenates the head's vectors along the batch")
            if not all(isinstance(self.values.get(n), Vector) for n in parts):
                raise self.fail(node, callee, "it concatenates the head's vectors with a tensor from elsewhere")
            if any(not v.is_plain or v.mean != vec.mean for v in vectors):
                raise self.fail(node, callee, "it concatenates flattened maps, not pooled vectors")
            self.actions[node] = ConcatOverChannels(tuple(parts))
            self.values[node] = Vector(node, sum(self.values[n].channels for n in parts), vec.kernel,
                                       origin=vec.origin, mean=vec.mean)
            return
        if isinstance(callee, nn.BatchNorm1d) and vec.is_plain and len(shape_of(node.args[0])) == 2:
            self.actions[node] = BatchNormToMaps(node.args[0], len(vec.kernel))
            self.values[node] = follow()
            self.decisions.append(Decision(self.layer(node), "BatchNorm1d", f"BatchNorm{len(vec.kernel)}d",
                                           vec.kernel, vec.channels, vec.channels, "same statistics"))
            return
        if vec.mean:
            raise self.fail(node, callee, "it is not linear, so class maps would not average to the logits")
        if isinstance(callee, nn.LayerNorm) and vec.is_plain and tuple(callee.normalized_shape) == (vec.channels,):
            self.actions[node] = LayerNormToChannels(node.args[0])
            self.values[node] = follow()
            self.decisions.append(Decision(self.layer(node), "LayerNorm", "channel LayerNorm", vec.kernel,
                                           vec.channels, vec.channels))
            return
        softmax_log = softmax_kind(callee)
        over_classes = softmax_log is not None and softmax_dim(node, callee) in (1, -1)
        if over_classes and vec.is_plain and len(shape_out or ()) == 2:
            self.actions[node] = SoftmaxOverChannels(node.args[0], softmax_log)
            self.values[node] = follow()
            return
        raise self.fail(node, callee, f"fc2conv does not know how to apply it to the head's vectors ({vec.describe()})")
