"""Models `fc2conv.convert` refuses, each with a clear ConversionError that says what to do, leaving the caller's
model untouched: untraceable control flow (and the two fixes the message suggests), Linears on sequences or tokens,
input shapes that do not fit, a Linear fed by two branches; and a model in training mode, converted as it behaves in
eval mode, with a warning. (The same refusals through the command: tests/test_cli_refusals.py.)
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, assert_unchanged, randn, snapshot
from strategies import SMALL_ARCH, build_generated
from torch import nn

import fc2conv
from fc2conv import ConversionError

SHAPE = SMALL_ARCH.input_shape


class Gate(nn.Module):
    """Data-dependent control flow: fx cannot trace an `if` on a tensor's value."""

    def forward(self, x):
        return x if x.mean() > 0 else -x


class GatedCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = build_generated(SMALL_ARCH)
        self.gate = Gate()

    def forward(self, x, flip: bool = False):
        if flip:  # a Python-level flag: fixed by concrete_args
            x = x.flip(-1)
        return self.body.classify(self.gate(self.body.features(x)))


class GRUHead(nn.Module):
    """Conv features read column by column by a GRU; the Linear sees its last hidden state."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.rnn = nn.GRU(4 * 15, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.conv(x).permute(0, 3, 1, 2).flatten(2)  # N × W' × (C·H')
        return self.fc(self.rnn(x)[0][:, -1])


class TinyViT(nn.Module):
    """Patch embedding, one transformer layer, a class token: the Linear reads a token, not a map."""

    def __init__(self, per_token: bool = False):
        super().__init__()
        self.per_token = per_token
        self.patches = nn.Conv2d(3, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.encoder = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = self.encoder(torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1))
        return self.fc(tokens) if self.per_token else self.fc(tokens[:, 0])


class TwoMapBranches(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.body = build_generated(SMALL_ARCH)
        self.fc = nn.Linear(12, 4)
        self.fc_a, self.fc_b = nn.Linear(6, 4), nn.Linear(6, 4)

    def forward(self, x):
        # Pools of two maps at different resolutions (the first conv's 15×15, the features' 3×3): their
        # windows slide on different grids. (Pools of one map may mix; tests/test_convert.py.)
        f, early = self.body.features(x), self.body.features[0](x)
        if self.how == "cat":
            return self.fc(torch.cat([f.mean((2, 3)), early.amax((2, 3))], 1))
        if self.how == "sum":
            return self.fc_a(f.mean((2, 3))) + self.fc_b(F.adaptive_max_pool2d(early, 1).flatten(1))
        return self.fc_a(f.mean((2, 3)) * early.amax((2, 3)))  # "mul"


REFUSED = {
    "untraceable": (GatedCNN, SHAPE, r"(?s)torch\.fx could not trace GatedCNN.*leaf_modules=\[.*concrete_args="),
    "rnn head": (GRUHead, (3, 17, 17), r"'fc' \(Linear\).*sequences or tokens"),
    "vit class token": (TinyViT, (3, 16, 16), r"'fc' \(Linear\).*sequences or tokens"),
    "vit per token": (lambda: TinyViT(per_token=True), (3, 16, 16), r"output .* not a vector of class scores"),
    "two branches cat": (lambda: TwoMapBranches("cat"), SHAPE, r"separate branches"),
    "two branches sum": (lambda: TwoMapBranches("sum"), SHAPE, r"separate branches"),
    "two branches mul": (lambda: TwoMapBranches("mul"), SHAPE, r"separate branches"),
    "too small": (lambda: build_generated(SMALL_ARCH), (3, 4, 4), r"does not run on input_shape=\(3, 4, 4\)"),
    "wrong channels": (lambda: build_generated(SMALL_ARCH), (1, 17, 17), r"does not run on input_shape=\(1, 17, 17\)"),
    "flatten size differs": (lambda: build_generated(SMALL_ARCH), (3, 21, 21),
                             r"does not run on input_shape=\(3, 21, 21\)"),
}


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_models_get_a_clear_error_and_stay_untouched(case, inplace):
    factory, shape, message = REFUSED[case]
    torch.manual_seed(0)
    model = factory().train()  # training mode too: the flag must come back unchanged
    before = snapshot(model)
    with warnings.catch_warnings(), pytest.raises(ConversionError, match=message):
        warnings.simplefilter("ignore")  # the training-mode warning, tested below
        fc2conv.convert(model, shape, inplace=inplace)
    assert_unchanged(model, before)


def test_the_untraceable_hints_work():
    """The two fixes the message suggests: keep the branching module whole, and fix the Python flag."""
    model = GatedCNN().eval()
    x = randn(2, *SHAPE)
    converted = fc2conv.convert(model, SHAPE, leaf_modules=[Gate], concrete_args={"flip": False})
    with torch.no_grad():
        for sign in (1, -1):  # both sides of the data-dependent branch
            assert_close(converted(sign * x).flatten(1), model(sign * x))
    with pytest.raises(ConversionError, match="could not trace"):  # either fix alone is not enough
        fc2conv.convert(model, SHAPE, leaf_modules=[Gate])


def test_geometry_and_verify_after_the_leaf_module_hint():
    model = GatedCNN().eval()
    converted = fc2conv.convert(model, SHAPE, leaf_modules=[Gate], concrete_args={"flip": False})
    assert fc2conv.geometry(converted).stride == (SMALL_ARCH.stride, SMALL_ARCH.stride)
    assert fc2conv.verify(model, converted).ok


@pytest.mark.parametrize("shape", [(17, 17), (1, 3, 17, 17), (3, 0, 17), (3, -17, 17), (3, 17.0, 17), "3x17x17"])
def test_malformed_input_shapes_are_value_errors(shape):
    with pytest.raises(ValueError, match="input_shape"):
        fc2conv.convert(build_generated(SMALL_ARCH), shape)


@pytest.mark.parametrize("inplace", [False, True])
def test_training_mode_converts_the_eval_behaviour_and_says_so(inplace):
    model = build_generated(SMALL_ARCH).train()
    before = snapshot(model)
    expected = copy.deepcopy(model).eval()
    with pytest.warns(UserWarning, match="training mode.*eval behaviour"):
        converted = fc2conv.convert(model, SHAPE, inplace=inplace)
    assert not converted.training
    x = randn(4, *SHAPE)
    with torch.no_grad():
        assert_close(converted(x).flatten(1), expected(x))  # dropout off, running statistics used
        training = copy.deepcopy(model).train()(x)  # on a copy: a training pass updates the statistics
        assert (training - expected(x)).abs().max() > 1e-3, "training and eval behaviour must differ here"
    # No forward pass in training mode happened: running statistics and batch counters are as they were.
    if inplace:
        assert not model.training  # documented: inplace=True leaves the model in eval mode
        model.train()
    assert_unchanged(model, before)
