"""Arguments by keyword: every op the analysis and the rewrite read converts alike whether its arguments come by
position or by keyword (issue: a head calling `F.linear(x, weight=…, bias=…)` failed with an IndexError)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close
from torch import nn

import fc2conv

# Each head: (positional spelling, keyword spelling) of the ops between the 8×4×4 features and the scores.
HEADS = {
    "F.linear": (lambda m, x: F.linear(torch.flatten(x, 1), m.w, m.b),
                 lambda m, x: F.linear(input=torch.flatten(x, 1), weight=m.w, bias=m.b)),
    "torch.flatten": (lambda m, x: m.fc(torch.flatten(x, 1)), lambda m, x: m.fc(torch.flatten(x, start_dim=1))),
    "Tensor.flatten": (lambda m, x: m.fc(x.flatten(1)), lambda m, x: m.fc(x.flatten(start_dim=1, end_dim=-1))),
    "Tensor.reshape": (lambda m, x: m.fc(x.reshape(x.shape[0], -1)),
                       lambda m, x: m.fc(x.reshape(shape=(x.shape[0], -1)))),
    "F.avg_pool2d": (lambda m, x: m.fc1(F.avg_pool2d(x, 4).flatten(1)),
                     lambda m, x: m.fc1(F.avg_pool2d(x, kernel_size=4).flatten(1))),
    "F.max_pool2d gap": (lambda m, x: m.fc1(F.max_pool2d(x, 4, None, 0, 1, False).flatten(1)),
                         lambda m, x: m.fc1(F.max_pool2d(x, kernel_size=4, ceil_mode=False).flatten(1))),
    "F.adaptive_avg_pool2d": (lambda m, x: m.fc1(F.adaptive_avg_pool2d(x, 1).flatten(1)),
                              lambda m, x: m.fc1(F.adaptive_avg_pool2d(x, output_size=1).flatten(1))),
    "Tensor.mean": (lambda m, x: m.fc1(x.mean((2, 3))), lambda m, x: m.fc1(x.mean(dim=(2, 3), keepdim=False))),
    "torch.mean": (lambda m, x: m.fc1(torch.mean(x, (2, 3))), lambda m, x: m.fc1(torch.mean(x, dim=(2, 3)))),
    "torch.amax": (lambda m, x: m.fc1(torch.amax(x, (2, 3))), lambda m, x: m.fc1(torch.amax(x, dim=(2, 3)))),
    "Tensor.permute": (lambda m, x: m.fc1(x.permute(0, 2, 3, 1)).mean((1, 2)),
                       lambda m, x: m.fc1(x.permute(dims=(0, 2, 3, 1))).mean(dim=(1, 2))),
    "F.softmax": (lambda m, x: F.softmax(m.fc(x.flatten(1)), 1),
                  lambda m, x: F.softmax(m.fc(x.flatten(1)), dim=1)),
    "F.dropout": (lambda m, x: m.fc(F.dropout(x.flatten(1), 0.5, False)),
                  lambda m, x: m.fc(F.dropout(x.flatten(1), p=0.5, training=False))),
    "module call": (lambda m, x: m.fc(x.flatten(1)), lambda m, x: m.fc(input=x.flatten(1))),
    "F.conv2d": (lambda m, x: m.fc(x.flatten(1)), lambda m, x: m.fc(x.flatten(1))),  # the backbone's spelling
}


class Net(nn.Module):
    """A small padded CNN (8×4×4 features at 16×16) whose head is one of `HEADS`; its first convolution is
    `F.conv2d`, by keyword when `keyword_conv`."""

    def __init__(self, head, keyword_conv: bool):
        super().__init__()
        torch.manual_seed(0)
        self.cw, self.cb = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3), nn.Parameter(torch.randn(8) * 0.1)
        self.conv = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc, self.fc1 = nn.Linear(8 * 4 * 4, 5), nn.Linear(8, 5)
        self.w, self.b = self.fc.weight, self.fc.bias
        self.head, self.keyword_conv = head, keyword_conv

    def forward(self, x):
        if self.keyword_conv:
            x = F.conv2d(input=x, weight=self.cw, bias=self.cb, stride=2, padding=1)
        else:
            x = F.conv2d(x, self.cw, self.cb, 2, 1)
        return self.head(self, torch.relu(self.conv(x)))


@pytest.mark.parametrize("name", HEADS)
def test_both_spellings_convert_alike(name):
    positional, keyword = (Net(head, keyword_conv=k and name == "F.conv2d").eval()
                           for head, k in zip(HEADS[name], (False, True), strict=True))
    dense = [fc2conv.convert(model, input_shape=(3, 16, 16)) for model in (positional, keyword)]
    assert str(dense[0].fc2conv.plan) == str(dense[1].fc2conv.plan)
    for model, converted in zip((positional, keyword), dense, strict=True):
        assert fc2conv.verify(model, converted).ok
    x = torch.randn(1, 3, 40, 36)
    with torch.no_grad():
        assert_close(dense[1](x), dense[0](x))
    assert fc2conv.geometry(dense[0]).to_dict() == fc2conv.geometry(dense[1]).to_dict()
