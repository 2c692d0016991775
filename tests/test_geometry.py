"""A cell's two boxes: its window (`Geometry.box`, the input the cell stands for) and its influence
(`Geometry.influence`, every input position that can change it: the window widened by the receptive field), and what
`exact` promises: with padding the cell is the original's output for its window in the context of the whole
image, not the original run on the window's crop, and pixels up to the influence box change it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import build_torchvision, randn
from scan_helpers import noise
from torch import nn

import fc2conv
from fc2conv.onnx import export_onnx
from fc2conv.runtime import DenseModel


def _padded_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 5)).eval().double()


def _changed(dense: nn.Module, image: torch.Tensor, cell: tuple[int, int], pixels: list[tuple[int, int]]
             ) -> list[bool]:
    """Whether setting each of `pixels` (every channel) to a large value changes `cell`: one batch, the image first."""
    batch = image.repeat(len(pixels) + 1, 1, 1, 1)
    for k, pixel in enumerate(pixels, start=1):
        batch[(k, slice(None), *pixel)] = 1e3
    with torch.no_grad():
        scores = dense(batch)[(slice(None), slice(None), *cell)]
    return [not torch.equal(scores[k], scores[0]) for k in range(1, len(scores))]


@pytest.mark.parametrize("name", ["padded cnn", "resnet18"])
def test_a_pixel_inside_the_influence_box_changes_the_cell_one_outside_does_not(name):
    model, shape = ((_padded_cnn(), (3, 16, 16)) if name == "padded cnn"
                    else (build_torchvision("resnet18"), (3, 32, 32)))
    dense = fc2conv.convert(model, shape)
    geo = fc2conv.geometry(dense)
    assert geo.exact and all(before > 0 and after > 0 for before, after in geo.receptive_field)
    (before, after), stride, window = geo.receptive_field[0], geo.stride[0], geo.window[0]
    cell = (-(-before // stride) + 1,) * 2  # its influence box lies inside the image
    size = cell[0] * stride + window + after + 2 * stride
    image = randn(1, 3, size, size, seed=1, dtype=next(model.parameters()).dtype)
    top, left, bottom, right = geo.influence(*cell)
    assert (top, left, bottom, right) == geo.influence(*cell, size=(size, size))  # inside: clipping changes nothing
    wtop, wleft, wbottom, wright = geo.box(*cell)
    assert ((wtop - top, bottom - wbottom), (wleft - left, right - wright)) == geo.receptive_field
    middle, wmiddle = (top + bottom) // 2, (left + right) // 2
    # Just outside, just inside (both ends of each axis), and, where padding reaches beyond the window, a pixel
    # outside the window but inside the influence box: it changes the cell, so the cell is not the original run
    # on the window's crop.
    pixels = {(top - 1, wmiddle): False, (top, wmiddle): True, (bottom - 1, wmiddle): True, (bottom, wmiddle): False,
              (middle, left - 1): False, (middle, left): True, (middle, right - 1): True, (middle, right): False,
              (wtop - 1, wmiddle): True}
    assert dict(zip(pixels, _changed(dense, image, cell, list(pixels)), strict=True)) == pixels
    with torch.no_grad():
        crop = model(image[:, :, wtop:wbottom, wleft:wright])[0]
        assert not torch.allclose(dense(image)[(0, slice(None), *cell)], crop)


def test_without_padding_the_influence_box_is_the_window_and_the_crop_is_the_cell():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 7 * 7, 5)).eval().double()
    dense = fc2conv.convert(model, (3, 16, 16))
    geo = fc2conv.geometry(dense)
    assert geo.exact and geo.receptive_field == ((0, 0), (0, 0))
    image = randn(1, 3, 24, 24, seed=1, dtype=torch.float64)
    top, left, bottom, right = geo.influence(1, 2)
    assert (top, left, bottom, right) == geo.box(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(dense(image)[0, :, 1, 2], model(image[:, :, top:bottom, left:right])[0])


class Squeezed(nn.Module):
    """A squeeze-excitation gate in the backbone: every cell sees the whole input."""

    def __init__(self):
        super().__init__()
        self.conv, self.gate, self.fc = nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(4, 4, 1), nn.Linear(4 * 7 * 7, 5)

    def forward(self, x):
        x = self.conv(x)
        x = x * torch.sigmoid(self.gate(x.mean((2, 3), keepdim=True)))
        return self.fc(torch.flatten(x, 1))


def test_influence_is_clipped_to_the_input_and_is_all_of_it_with_global_context():
    dense = fc2conv.convert(_padded_cnn(), (3, 16, 16))
    geo = fc2conv.geometry(dense)
    (before, after), _ = geo.receptive_field
    assert geo.influence(0, 0) == (-before, -before, 16 + after, 16 + after)
    assert geo.influence(0, 0, size=(20, 18)) == (0, 0, min(16 + after, 20), min(16 + after, 18))
    with pytest.raises(ValueError, match="2 indices"):
        geo.influence(0)
    squeeze = fc2conv.geometry(fc2conv.convert(Squeezed().eval(), (3, 16, 16)))
    assert squeeze.exact is False
    assert squeeze.influence(1, 0, size=(96, 80)) == (0, 0, 96, 80)
    with pytest.raises(ValueError, match="give the input's size"):
        squeeze.influence(1, 0)


def test_the_runtime_gives_the_same_influence_clipped_to_its_input(tmp_path):
    torch.manual_seed(0)
    converted = fc2conv.convert(_padded_cnn().float(), (3, 16, 16))
    path = export_onnx(converted, tmp_path / "padded.onnx")
    result = DenseModel(path).run(noise(40, 29))
    geo = fc2conv.geometry(converted)
    cells = result.scores.shape[1:]
    for i in range(cells[0]):
        for j in range(cells[1]):
            assert result.box(i, j) == geo.box(i, j)
            assert result.influence(i, j) == geo.influence(i, j, size=(40, 29))
    assert np.any([result.influence(i, 0) != result.box(i, 0) for i in range(cells[0])])
