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


# -- the classes: named for what failed, one base to catch (issue 30, part 3)

def test_every_error_is_an_fc2conv_error_and_for_now_a_conversion_error():
    from fc2conv.errors import BackendError, Fc2convError, InputError, ScanError
    from fc2conv.runtime.quantization import BudgetError
    from fc2conv.scan.samples import BadInput

    assert issubclass(Fc2convError, ValueError) and issubclass(ConversionError, Fc2convError)
    for kind in (InputError, ScanError, BackendError, BadInput, BudgetError):
        assert issubclass(kind, Fc2convError) and issubclass(kind, ConversionError)  # compatible this release
    assert issubclass(BadInput, InputError)
    for name in ("Fc2convError", "ConversionError", "InputError", "ScanError", "BackendError"):
        assert name in fc2conv.__all__ and getattr(fc2conv, name) is getattr(fc2conv.errors, name)


def test_translated_names_the_failure_with_the_first_line_and_hides_the_foreign_traceback():
    from fc2conv.errors import InputError, translated

    with pytest.raises(InputError, match=r"^file\.x: cannot read it \(KeyError: 'a'\)$") as caught, \
            translated(InputError, "file.x: cannot read it (", end=")", named=True):
        {}["a"]
    error = caught.value
    assert error.__cause__ is None and error.__suppress_context__  # `from None`, always
    assert isinstance(error.__context__, KeyError)  # still there for a debugger

    with pytest.raises(InputError, match=r"^x: first$"), translated(InputError, "x: "):
        raise RuntimeError("first.\nsecond line of context")


def test_translated_lets_fc2conv_errors_and_other_types_through():
    from fc2conv.errors import BackendError, ScanError, translated

    own = ScanError("named already")
    with pytest.raises(ScanError) as caught, translated(BackendError, "x: "):
        raise own
    assert caught.value is own
    with pytest.raises(KeyError), translated(BackendError, "x: ", OSError):
        raise KeyError("not an OSError")
    with pytest.raises(BackendError, match=r"^x: disk$"), translated(BackendError, "x: ", OSError):
        raise OSError("disk")


def test_representative_sites_raise_the_class_of_what_failed(tmp_path):
    from fc2conv.errors import BackendError, InputError, ScanError
    from fc2conv.runtime.arrays import open_npy
    from fc2conv.runtime.backends import OnnxRuntimeSession
    from fc2conv.runtime.model import DenseModel
    from fc2conv.storage.recipe import Recipe
    from fc2conv.viewer.store import open_scan

    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00not a file of any kind" * 10)
    with pytest.raises(InputError, match="no such model file"):
        DenseModel(tmp_path / "missing.onnx")
    with pytest.raises(InputError, match=r"garbage\.bin: cannot read it as a \.npy array"):
        open_npy(garbage)
    with pytest.raises(BackendError, match="onnxruntime cannot load it as an ONNX model"):
        OnnxRuntimeSession(garbage)
    with pytest.raises(ScanError, match="not a scan"):
        open_scan(tmp_path)
    with pytest.raises(InputError, match=r"^density= must be a positive integer, with mode='dense'"):
        Recipe(arch="resnet18", density=2, mode="global")


@pytest.mark.parametrize(("args", "message"), [
    (["--arch", "resnet18", "--mode", "global", "--density", "2"],
     "--density must be a positive integer, with --mode dense; got 2 with --mode global"),
    (["--arch", "resnet18", "--reduce", "median"], "--reduce must be one of"),
    (["--arch", "resnet18", "--model-def", "models/small_cnn.py:SmallCNN"],
     "exactly one of --arch NAME, --model-def FILE.py:FACTORY, or a Hugging Face save_pretrained directory"),
    (["--arch", "resnet18", "--model-arg", "3"], "--model-arg passes arguments to a --model-def factory; --arch "
                                                 "models take --num-classes only"),
])
def test_the_cli_names_the_flags_of_a_recipe_it_refuses(tmp_path, args, message):
    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"unused: the recipe is refused first")
    result = invoke("inspect", checkpoint, *args)
    assert result.exit_code == EXIT_USAGE
    assert message in result.stderr and "=" not in result.stderr.split("got")[0]


def test_the_cli_exits_2_for_every_kind(tmp_path):
    for args, said in ((["run", tmp_path / "missing.onnx", tmp_path / "image.png"], "no such model file"),  # input
                       (["view", tmp_path, "--screenshot", tmp_path / "shot.png"], "is not a scan written by")):  # scan
        result = invoke(*args)
        assert result.exit_code == EXIT_USAGE and result.stderr.startswith("error: ") and said in result.stderr
