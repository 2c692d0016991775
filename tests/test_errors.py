"""How fc2conv words what goes wrong: the first line of a library's message, memory that a size does not fit in, and
what the guard of the public functions makes of exceptions it did not foresee."""

from __future__ import annotations

import pytest
import torch
from helpers import invoke
from torch import nn

import fc2conv
from fc2conv.cli import EXIT_USAGE
from fc2conv.errors import ConversionError, first_line, reported
from fc2conv.tracing.trace import available_memory


@pytest.mark.parametrize(("error", "named", "expected"), [
    (RuntimeError(""), False, ""),
    (RuntimeError(""), True, "RuntimeError"),
    (RuntimeError("   \n\n  "), True, "RuntimeError"),
    (ValueError("\n  first line.\nsecond line\n"), False, "first line"),
    (KeyError("x"), True, "KeyError: 'x'"),
    ("plain text\nmore", False, "plain text"),
])
def test_first_line(error, named, expected):
    assert first_line(error, named=named) == expected


def test_first_line_is_bounded():
    line = first_line(RuntimeError("x" * 1000), limit=50)
    assert len(line) == 50 and line.endswith("…")


def test_an_unforeseen_empty_exception_is_reported_without_crashing():
    @reported("doing something")
    def fails():
        raise RuntimeError()

    with pytest.raises(ConversionError, match=r"failed while doing something: RuntimeError\. This model"):
        fails()


def test_running_out_of_memory_names_the_input_shape():
    @reported("converting the model")
    def fails():
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 80000000000 bytes.\nmore C++ context")

    with pytest.raises(ConversionError, match=r"ran out of memory .* input_shape \(--input-shape\) do not fit") as e:
        fails()
    assert "\n" not in str(e.value)


@pytest.mark.skipif(available_memory() is None, reason="the available memory cannot be read on this system")
def test_an_input_shape_beyond_memory_is_refused_before_anything_is_allocated(tmp_path):
    """The CLI exits 2 naming --input-shape, writes nothing, and does not even try to allocate the batch."""
    side = int((available_memory() / 4) ** 0.5) + 1  # one float32 image of this side is more than is available
    done = invoke("convert", "models/digits_cnn.safetensors", "--model-def", "models/digits_cnn.py:DigitsCNN",
                  "--input-shape", f"1,{side},{side}", "-o", tmp_path / "digits.pt2")
    assert done.exit_code == EXIT_USAGE
    assert "--input-shape" in done.output and "does not fit in memory" in done.output
    assert len(done.output.strip().splitlines()) <= 5
    assert list(tmp_path.iterdir()) == []


def test_a_failure_on_meta_tensors_that_is_not_the_models_propagates(monkeypatch):
    """The shapes-only run falls back to a real run only when a node of the model fails there: a failure of fc2conv's
    own code is reported as such, not hidden by the fallback."""
    import fc2conv.tracing.trace as trace_module

    def broken(*args, **kwargs):
        raise KeyError("fc2conv's own bug")

    monkeypatch.setattr(trace_module, "meta_state", broken)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    with pytest.raises(ConversionError, match="fc2conv failed while converting the model: KeyError"):
        fc2conv.convert(model, (1, 8, 8))


class _ScaledByItsPeak(nn.Module):
    """Reads a value from its input (`.item()`), which meta tensors cannot give: kept whole as a leaf module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / max(x.abs().amax().item(), 1.0)


def test_a_model_that_meta_tensors_cannot_run_is_traced_on_real_ones():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), _ScaledByItsPeak(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    converted = fc2conv.convert(model, (1, 8, 8), leaf_modules=[_ScaledByItsPeak])
    with torch.no_grad():
        x = torch.randn(2, 1, 8, 8)
        assert torch.allclose(converted(x).flatten(1), model(x))
    assert fc2conv.geometry(converted).stride == (1, 1)  # measured on real zeros, as meta tensors cannot run it
