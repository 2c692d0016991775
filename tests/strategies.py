"""Random CNN classifiers for property tests: a readable specification (`Arch`) and its model (`build_generated`).

`architectures()` is a hypothesis strategy of `Arch` values: 1–4 conv stages (kernel 1–5, stride 1–2, no
padding or `kernel // 2`, sometimes grouped or depthwise, optional BatchNorm, ReLU/GELU/Hardswish, optional
2×2 max or average pool), a head that reaches the Linears through `torch.flatten`, `view`, `reshape`,
`nn.Flatten`, an adaptive average pool (module or functional) of 1 or k×k', or `mean((2, 3))`, then 1–3
Linears with activations, Dropout or BatchNorm1d between them, on odd and non-square inputs of at most
`MAX_SIDE` pixels. Models are built from the spec, so a failing example shrinks to a printable
architecture that `build_generated` turns back into the same model (weights come from `Arch.seed`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

__all__ = ["ACTIVATIONS", "FLATTENS", "POOLS", "SMALL_ARCH", "Arch", "Generated", "Hidden", "Stage", "architectures",
           "build_generated"]

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "hardswish": nn.Hardswish}  # simplest first
FLATTENS = ("torch.flatten", "view", "reshape", "nn.Flatten")
POOLS = (None, "adaptive", "F.adaptive", "mean")  # how the features are pooled before the flatten
MAX_SIDE = 40
MAX_CHANNELS = 8


@dataclass(frozen=True)
class Stage:
    """Conv(kernel, stride, padding, groups) → [BatchNorm2d] → activation → [2×2 pool, stride 2]."""

    channels: int
    kernel: int
    stride: int = 1
    padding: int = 0  # 0 or kernel // 2 ("same" for an odd kernel at stride 1)
    groups: int = 1
    batchnorm: bool = False
    activation: str = "relu"
    pool: str | None = None  # "max" or "avg"

    def output_size(self, size: int) -> int:
        size = (size + 2 * self.padding - self.kernel) // self.stride + 1
        return size // 2 if self.pool else size


@dataclass(frozen=True)
class Hidden:
    """Linear(·, features) → [BatchNorm1d] → [activation] → [Dropout]: every Linear but the last."""

    features: int
    batchnorm: bool = False
    activation: str | None = "relu"
    dropout: bool = False


@dataclass(frozen=True)
class Arch:
    """A CNN classifier: input C×H×W, conv stages, pool and flatten spelling, hidden Linears, classes."""

    input_shape: tuple[int, int, int]
    stages: tuple[Stage, ...]
    pool: str | None = None  # one of POOLS
    pool_size: tuple[int, int] = (1, 1)  # output size of the adaptive pool
    flatten: str = "torch.flatten"  # one of FLATTENS (unused after mean((2, 3)))
    hidden: tuple[Hidden, ...] = ()
    classes: int = 3
    seed: int = 0

    @property
    def features(self) -> tuple[int, int, int]:
        """C×h×w of the last stage's output at the reference input."""
        _, h, w = self.input_shape
        for stage in self.stages:
            h, w = stage.output_size(h), stage.output_size(w)
        return self.stages[-1].channels, h, w

    @property
    def stride(self) -> int:
        """Input pixels per cell of the dense map: the product of conv strides and pool strides, but for a covering
        pool's, which slides with stride 1 as the global pool it is."""
        strides = [s.stride * (2 if s.pool and i != self.covering_stage else 1) for i, s in enumerate(self.stages)]
        return math.prod(strides)

    @property
    def padded(self) -> bool:
        return any(s.padding for s in self.stages)

    @property
    def global_average(self) -> bool:
        """The head starts with a global average pool (mean, or an adaptive pool to 1×1)."""
        return self.pool == "mean" or (self.pool is not None and self.pool_size == (1, 1))

    @property
    def covering_stage(self) -> int | None:
        """The stage whose 2×2 pool covers the whole 2×2 map at the reference size, when no pool comes after the
        stages: fc2conv takes that pool for the model's global pool and slides it with stride 1 (the stages after
        it, on its 1×1 map, are part of the head). None when there is no such stage."""
        if self.pool is not None:
            return None
        _, h, w = self.input_shape
        for i, stage in enumerate(self.stages):
            conv = replace(stage, pool=None)
            h, w = conv.output_size(h), conv.output_size(w)
            if stage.pool and (h, w) == (2, 2):
                return i  # its output is 1×1: no later stage can pool it
            h, w = (h // 2, w // 2) if stage.pool else (h, w)
        return None

    @property
    def covering_pool(self) -> bool:
        """Some stage's pool covers the whole map (see `covering_stage`)."""
        return self.covering_stage is not None

    @property
    def covering_average(self) -> bool:
        """The last stage's pool covers the whole map and averages it: the model's global average pool."""
        return self.covering_stage == len(self.stages) - 1 and self.stages[-1].pool == "avg"

    @property
    def map_before_covering_pool(self) -> tuple[int, int]:
        """The map a covering pool pools at the reference size."""
        return (2, 2)

    @property
    def cam(self) -> bool:
        """mode='cam' applies: the logits are linear in a global average pool of the features."""
        return (self.global_average or self.covering_average) and all(h.activation is None for h in self.hidden)


class Generated(nn.Module):
    """The model an `Arch` describes; `features` then `classify`, which is the head on a feature map."""

    def __init__(self, arch: Arch):
        super().__init__()
        self.arch = arch
        channels = arch.input_shape[0]
        layers: list[nn.Module] = []
        for s in arch.stages:
            layers.append(nn.Conv2d(channels, s.channels, s.kernel, s.stride, s.padding, groups=s.groups))
            layers += [nn.BatchNorm2d(s.channels)] if s.batchnorm else []
            layers.append(ACTIVATIONS[s.activation]())
            layers += [{"max": nn.MaxPool2d, "avg": nn.AvgPool2d}[s.pool](2)] if s.pool else []
            channels = s.channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(arch.pool_size)
        self.flatten = nn.Flatten()
        c, h, w = arch.features
        width = c if arch.pool == "mean" else c * math.prod(arch.pool_size if arch.pool else (h, w))
        head: list[nn.Module] = []
        for hidden in arch.hidden:
            head.append(nn.Linear(width, hidden.features))
            head += [nn.BatchNorm1d(hidden.features)] if hidden.batchnorm else []
            head += [ACTIVATIONS[hidden.activation]()] if hidden.activation else []
            head += [nn.Dropout(0.5)] if hidden.dropout else []
            width = hidden.features
        self.head = nn.Sequential(*head, nn.Linear(width, arch.classes))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        a = self.arch
        if a.pool == "mean":
            return self.head(x.mean((2, 3)))
        if a.pool == "adaptive":
            x = self.pool(x)
        elif a.pool == "F.adaptive":
            x = F.adaptive_avg_pool2d(x, a.pool_size)
        if a.flatten == "torch.flatten":
            x = torch.flatten(x, 1)
        elif a.flatten == "view":
            x = x.view(x.size(0), -1)
        elif a.flatten == "reshape":
            x = x.reshape(x.shape[0], -1)
        else:
            x = self.flatten(x)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


def build_generated(arch: Arch, dtype: torch.dtype = torch.float32) -> Generated:
    """`arch`'s model in eval mode, with weights and non-trivial batch-norm statistics from `arch.seed`."""
    torch.manual_seed(arch.seed)
    model = Generated(arch)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):  # so that batch norm is not the identity
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return model.to(dtype).eval()


def _divisors(n: int) -> list[int]:
    return [d for d in range(2, n + 1) if n % d == 0]


@st.composite
def stages(draw, channels: int, height: int, width: int, count: int) -> tuple[Stage, ...]:
    """`count` stages that keep the feature map at least 1×1."""
    result = []
    for _ in range(count):
        padded = draw(st.booleans())
        kernel = draw(st.integers(1, 5 if padded else min(5, height, width)))
        grouping = draw(st.sampled_from(["none", "grouped", "depthwise"]))
        if grouping == "depthwise":
            out, groups = channels, channels
        else:
            out = draw(st.integers(1, MAX_CHANNELS))
            common = [d for d in _divisors(channels) if out % d == 0]
            groups = draw(st.sampled_from(common)) if grouping == "grouped" and common else 1
        stage = Stage(out, kernel, draw(st.integers(1, 2)), kernel // 2 if padded else 0, groups,
                      draw(st.booleans()), draw(st.sampled_from(list(ACTIVATIONS))))
        conv = (stage.output_size(height), stage.output_size(width))
        if min(conv) >= 2:
            stage = replace(stage, pool=draw(st.sampled_from([None, "max", "avg"])))
        result.append(stage)
        channels, height, width = out, stage.output_size(height), stage.output_size(width)
    return tuple(result)


@st.composite
def architectures(draw, max_side: int = MAX_SIDE) -> Arch:
    """Random CNN classifiers (see the module docstring); inputs at most `max_side` pixels a side."""
    channels = draw(st.sampled_from([3, 1, 2, 4]))
    height, width = draw(st.integers(5, max_side)), draw(st.integers(5, max_side))
    body = draw(stages(channels, height, width, draw(st.integers(1, 4))))
    pool = draw(st.sampled_from(POOLS))
    pool_size = (1, 1)
    if pool in ("adaptive", "F.adaptive") and draw(st.booleans()):  # of k×k' rather than of 1
        pool_size = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    hidden = draw(st.lists(st.builds(
        Hidden, st.integers(1, 17), st.booleans(), st.sampled_from([None, *ACTIVATIONS]), st.booleans(),
    ), max_size=2))
    return Arch((channels, height, width), body, pool, pool_size, draw(st.sampled_from(FLATTENS)),
                tuple(hidden), draw(st.integers(1, 7)), draw(st.integers(0, 2**16)))


# A padding-free classifier on 3×17×17: features 6×3×3, then flatten and two Linears. The model of the refusal,
# checkpoint and write tests (tests/test_refusals.py, tests/test_corrupt_checkpoints.py, tests/test_writes.py).
SMALL_ARCH = Arch((3, 17, 17), (Stage(6, 3, pool="max"), Stage(6, 3, 2, batchnorm=True)),
                  hidden=(Hidden(8, batchnorm=True, dropout=True),), classes=4, seed=1)
