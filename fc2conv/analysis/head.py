"""The head carried as maps: how each op applies to the head's vectors (`Vector` values), one rule per op family
(`fc2conv.analysis.state.Rule`), tried in `VECTOR_RULES` order by a mixin of the analyzer
(`fc2conv.analysis.analyzer`); channels-last tensors are `channels_last.py`'s.

Each rule matches an op family, says why it must refuse what it cannot carry exactly, and otherwise records what
the node becomes. Once the head computes a spatial mean (cam mode), only linear ops may follow: `MeanIsLinearOnly`
refuses the rest before the norms and softmaxes that are not linear are tried.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

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
    layer_norm_size,
    linear_op,
    shape_of,
    softmax_dim,
    softmax_kind,
)
from .plan import Decision
from .state import AnalyzerState, At, Rule, apply_first
from .values import (
    Alias,
    BatchNormToMaps,
    ConcatOverChannels,
    LayerNormToChannels,
    LinearToConv,
    SoftmaxOverChannels,
    Vector,
)

__all__ = ["VECTOR_RULES", "HeadVisits", "VectorAt"]

_NOT_LINEAR = "it is not linear, so class maps would not average to the logits"


@dataclass(frozen=True)
class VectorAt(At):
    """A node that reads the head's vectors: `vectors` are its inputs' (`vector` the first), `shape` its output's."""

    vectors: tuple[Vector, ...]
    shape: tuple[int, ...] | None

    @property
    def vector(self) -> Vector:
        return self.vectors[0]

    def follow(self) -> None:
        """The node gives the same vectors as its input, now its own."""
        self.state.values[self.node] = replace(self.vector, source=self.node)


class SeparateBranches(Rule[VectorAt]):
    def match(self, at: VectorAt) -> bool:
        return any(v.origin is not at.vector.origin for v in at.vectors)

    def check(self, at: VectorAt) -> str | None:
        origins = sorted({v.origin.name for v in at.vectors})
        return (f"it combines vectors from separate branches ({', '.join(origins)}); a map of scores needs one path "
                "from the features to the classifier")


class LinearAsConv(Rule[VectorAt]):
    """A Linear on flattened features is a global conv (kernel h×w); on pooled vectors, a 1×1 conv."""

    def match(self, at: VectorAt) -> bool:
        return is_linear(at.callee)

    def check(self, at: VectorAt) -> str | None:
        source = at.node.args[0]
        if source not in at.state.values:
            return "its weight, not its input, comes from the features"
        if len(shape_of(source)) != 2:
            return f"its input has shape {shape_of(source)}, not N×features"
        if at.vector.mean and not at.vector.is_plain:
            return "it is not fed by a global average pool"
        return None

    def rewrite(self, at: VectorAt) -> None:
        vec, state = at.vector, at.state
        op, _, out_features = linear_op(at.node, at.callee)
        kernel = vec.fold_from or vec.kernel
        rule = "1×1 conv" if all(k == 1 for k in kernel) else "global conv"
        if vec.fold_from:
            rule += " (pool folded)"
        state.actions[at.node] = LinearToConv(at.node.args[0], vec.channels, vec.kernel, vec.fold_from)
        state.values[at.node] = Vector(at.node, out_features, (1,) * len(kernel), origin=vec.origin, mean=vec.mean)
        state.decisions.append(Decision(state.layer(at.node), op, rule, kernel, vec.channels, out_features))


def _reshapes_vectors(at: VectorAt) -> bool:
    return is_reshape(at.callee) and at.shape is not None and at.node.args[0] in at.state.values


class ReshapeBackToMap(Rule[VectorAt]):
    """Pooled vectors viewed as the N×C×1×1 map they came from: the kept map is that map."""

    def match(self, at: VectorAt) -> bool:
        vec = at.vector
        return (_reshapes_vectors(at) and vec.is_plain and not vec.mean
                and at.shape[1:] == (vec.channels, *vec.kernel))

    def rewrite(self, at: VectorAt) -> None:
        at.state.actions[at.node] = Alias(at.vector.source)


class ReshapeSameVectors(Rule[VectorAt]):
    """The same vectors, reshaped (N×D to N×D or N×D×1): nothing moves between examples or features."""

    def match(self, at: VectorAt) -> bool:
        size = at.vector.channels * math.prod(at.vector.kernel)
        return (_reshapes_vectors(at) and int(torch.Size(at.shape[1:]).numel()) == size
                and at.shape[0] == shape_of(at.node.args[0])[0])

    def rewrite(self, at: VectorAt) -> None:
        at.state.actions[at.node] = Alias(at.node.args[0])
        at.state.values[at.node] = at.vector


class SizesTheMapKeeps(Rule[VectorAt]):
    """`x.size(0)` of the head's vectors, or the batch and channels of pooled ones: the same in the map."""

    def match(self, at: VectorAt) -> bool:
        vec = at.vector
        channels = (shape_of(at.node.args[0]) or (0, 0))[1] if at.node.args else None
        return is_batch_size(at.node) or (vec.is_plain and channels == vec.channels
                                          and is_batch_and_channels(at.node))

    def rewrite(self, at: VectorAt) -> None:
        pass


class Identity(Rule[VectorAt]):
    def match(self, at: VectorAt) -> bool:
        return is_op(at.callee, IDENTITY_MODULES, IDENTITY_FUNCTIONS, IDENTITY_METHODS)

    def rewrite(self, at: VectorAt) -> None:
        at.follow()


class Pointwise(Rule[VectorAt]):
    """Activations and other element-wise ops give the same values on a 1×1 map."""

    def match(self, at: VectorAt) -> bool:
        return is_op(at.callee, POINTWISE_MODULES, POINTWISE_FUNCTIONS, POINTWISE_METHODS)

    def check(self, at: VectorAt) -> str | None:
        if at.vector.fold_from:
            return ("it sits between an adaptive average pool and a Linear, so the pool cannot be folded into the "
                    "Linear; use mode='global'")
        return _NOT_LINEAR if at.vector.mean else None

    def rewrite(self, at: VectorAt) -> None:
        at.follow()


class Binary(Rule[VectorAt]):
    """Sums, products and their kin of the head's vectors with each other or with constants."""

    def match(self, at: VectorAt) -> bool:
        return is_op(at.callee, (), BINARY_FUNCTIONS, BINARY_METHODS)

    def check(self, at: VectorAt) -> str | None:
        others = [a for a in at.node.args if isinstance(a, fx.Node) and a not in at.state.values]
        if others and any(shape_of(a) not in ((), None) for a in others):
            return "it combines the head's vectors with a tensor from the features"
        if len({(v.channels, v.kernel, v.fold_from) for v in at.vectors}) != 1 or at.vector.fold_from:
            return "it combines vectors of different layouts"
        if at.vector.mean and at.callee not in LINEAR_IN_MEAN and len(at.vectors) > 1:
            return _NOT_LINEAR
        return None

    def rewrite(self, at: VectorAt) -> None:
        at.follow()


class ConcatFeatures(Rule[VectorAt]):
    """Pooled vectors concatenated along the features: maps concatenated along the channels."""

    def match(self, at: VectorAt) -> bool:
        return is_op(at.callee, (), CONCAT_FUNCTIONS)

    def check(self, at: VectorAt) -> str | None:
        if len(at.shape or ()) != 2 or arg(at.node, 1, "dim", 0) not in (1, -1):
            return "it concatenates the head's vectors along the batch"
        if not all(isinstance(at.state.values.get(n), Vector) for n in arg(at.node, 0, "tensors")):
            return "it concatenates the head's vectors with a tensor from elsewhere"
        if any(not v.is_plain or v.mean != at.vector.mean for v in at.vectors):
            return "it concatenates flattened maps, not pooled vectors"
        return None

    def rewrite(self, at: VectorAt) -> None:
        parts, state = tuple(arg(at.node, 0, "tensors")), at.state
        state.actions[at.node] = ConcatOverChannels(parts)
        state.values[at.node] = Vector(at.node, sum(state.values[n].channels for n in parts), at.vector.kernel,
                                       origin=at.vector.origin, mean=at.vector.mean)


class BatchNormOfVectors(Rule[VectorAt]):
    """BatchNorm1d of N×C vectors: the same statistics, per channel, on N×C×1×1 maps."""

    def match(self, at: VectorAt) -> bool:
        return (isinstance(at.callee, nn.BatchNorm1d) and at.vector.is_plain
                and len(shape_of(at.node.args[0])) == 2)

    def rewrite(self, at: VectorAt) -> None:
        vec, state = at.vector, at.state
        state.actions[at.node] = BatchNormToMaps(at.node.args[0], len(vec.kernel))
        at.follow()
        state.decisions.append(Decision(state.layer(at.node), "BatchNorm1d", f"BatchNorm{len(vec.kernel)}d",
                                        vec.kernel, vec.channels, vec.channels, "same statistics"))


class MeanIsLinearOnly(Rule[VectorAt]):
    """cam: the class maps average to the logits only through linear ops; what is left is not."""

    def match(self, at: VectorAt) -> bool:
        return at.vector.mean

    def check(self, at: VectorAt) -> str | None:
        return _NOT_LINEAR


class LayerNormOfVectors(Rule[VectorAt]):
    """LayerNorm over the features of N×C vectors: a LayerNorm over the channels of each cell."""

    def match(self, at: VectorAt) -> bool:
        return at.vector.is_plain and layer_norm_size(at.node, at.callee) == at.vector.channels

    def rewrite(self, at: VectorAt) -> None:
        vec, state = at.vector, at.state
        state.actions[at.node] = LayerNormToChannels(at.node.args[0])
        at.follow()
        state.decisions.append(Decision(state.layer(at.node), "LayerNorm", "channel LayerNorm", vec.kernel,
                                        vec.channels, vec.channels))


class SoftmaxOverClasses(Rule[VectorAt]):
    """(Log-)softmax over the classes of N×K scores: over the channels of each cell."""

    def match(self, at: VectorAt) -> bool:
        over_classes = softmax_kind(at.callee) is not None and softmax_dim(at.node, at.callee) in (1, -1)
        return over_classes and at.vector.is_plain and len(at.shape or ()) == 2

    def rewrite(self, at: VectorAt) -> None:
        at.state.actions[at.node] = SoftmaxOverChannels(at.node.args[0], softmax_kind(at.callee))
        at.follow()


class Unknown(Rule[VectorAt]):
    def match(self, at: VectorAt) -> bool:
        return True

    def check(self, at: VectorAt) -> str | None:
        return f"fc2conv does not know how to apply it to the head's vectors ({at.vector.describe()})"


# In order: the first rule that matches decides.
VECTOR_RULES: tuple[Rule[VectorAt], ...] = (
    SeparateBranches(), LinearAsConv(), ReshapeBackToMap(), ReshapeSameVectors(), SizesTheMapKeeps(), Identity(),
    Pointwise(), Binary(), ConcatFeatures(), BatchNormOfVectors(), MeanIsLinearOnly(), LayerNormOfVectors(),
    SoftmaxOverClasses(), Unknown(),
)


class HeadVisits(AnalyzerState):
    """The analyzer's visits to nodes that read the head's vectors."""

    def visit_vector(self, node: fx.Node, callee: object) -> None:
        vectors = tuple(v for n in node.all_input_nodes if isinstance(v := self.values.get(n), Vector))
        apply_first(VECTOR_RULES, VectorAt(self, node, callee, vectors, shape_of(node)))
