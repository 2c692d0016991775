"""fc2conv.compat: each private PyTorch API fc2conv relies on still does what it is used for, on the installed torch."""

from __future__ import annotations

import torch
from torch import fx, nn

from fc2conv import compat


def test_the_installed_torch_is_one_compat_was_checked_on():
    # A new torch may move a private name: read compat.py's uses against it, then add it to CHECKED_TORCH.
    assert torch.__version__.split("+")[0] in compat.CHECKED_TORCH


def test_tensor_metadata_is_what_shape_propagation_stores():
    meta = compat.tensor_metadata(torch.zeros(2, 3, 5, dtype=torch.float64))
    assert tuple(meta.shape) == (2, 3, 5) and meta.dtype == torch.float64


def test_fx_tracing_is_seen_inside_a_trace_only():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(compat.is_fx_tracing())
            return x + 1

    fx.symbolic_trace(Probe())
    assert seen == [True] and not compat.is_fx_tracing()


def test_original_module_methods_are_the_unpatched_ones():
    call, getattr_ = compat.original_module_methods()
    assert (call, getattr_) == (nn.Module.__call__, nn.Module.__getattr__)  # outside a trace, nothing is patched
    patched = []

    class Probe(nn.Module):
        def forward(self, x):
            patched.append(nn.Module.__call__ is not call)
            return x

    fx.symbolic_trace(Probe())
    assert patched == [True]


def test_private_bases_cover_every_public_subclass():
    assert all(issubclass(k, compat.BatchNormBase) for k in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
                                                              nn.SyncBatchNorm))
    instance_norms = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
    assert all(issubclass(k, compat.InstanceNormBase) for k in instance_norms)
    assert all(issubclass(k, compat.DropoutBase) for k in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d))
    assert not issubclass(nn.LayerNorm, compat.BatchNormBase)


def test_size_oblivious_export_exports_a_map_that_is_one_cell_at_the_reference_size():
    class Head(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3), keepdim=True).expand(-1, -1, x.shape[2], x.shape[3]) + x

    dims = {"x": {2: torch.export.Dim("h", min=1), 3: torch.export.Dim("w", min=1)}}
    with compat.size_oblivious_export():
        program = torch.export.export(Head(), (torch.randn(1, 2, 1, 1),), dynamic_shapes=dims)
    x = torch.randn(1, 2, 3, 4)
    assert torch.equal(program.module()(x), Head()(x))
