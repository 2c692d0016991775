"""Export a converted model to ONNX with dynamic batch and spatial sizes, and the metadata a deployer needs.

Converted layers are `LinearConv2d`, a plain `Conv2d` while an exporter runs, so every converted Linear
is one ONNX `Conv` and no `Gemm` or `MatMul` is left in the head. The file's `metadata_props` carry JSON
values under `fc2conv.*` keys (`fc2conv.metadata`): the geometry (stride, window and receptive field in input
pixels, null in global mode), the sizes the model runs at when it runs only at some, the reference input shape, the
mode, whether cells are exact windows, and the class labels and input normalisation when given. A dense or cam
model whose geometry cannot be measured (`fc2conv.geometry` says why) is refused: its cells could not be placed.
`fc2conv.runtime` reads them without PyTorch.

Exporters (torch 2.14): the TorchScript exporter (`exporter="torchscript"`, the default) exports every
torchvision CNN family with dynamic height and width in 1-20 s; the dynamo exporter
(`exporter="dynamo"`, `torch.export` + onnxscript) takes 15-90 s per model here and refuses GoogLeNet and
ConvNeXt (`torch.export` specialises height and width to 224…255 and batch to ≤ 2, a constraint violation).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from ..conversion.geometry import geometry
from ..conversion.verification import runs_on
from ..errors import ConversionError, InputError, first_line, reported, translated
from ..metadata import ONE_CELL, axis_names, encode, validate
from ..runtime.files.atomic import atomic_output, refuse_existing
from ..runtime.onnx.check import probe, session
from ..shapes import as_map, is_vector_input, map_size, times
from ..storage.artifact import dynamic_dims
from ..tolerance import max_errors, tolerance

__all__ = ["DEFAULT_OPSET", "EXPORTERS", "INPUT_NAME", "OUTPUT_NAME", "export_onnx"]

DEFAULT_OPSET = 18
EXPORTERS = ("torchscript", "dynamo")
# protobuf's limit on one serialized message, which a single-file ONNX model is: weights included.
PROTOBUF_LIMIT = 2**31
INPUT_NAME, OUTPUT_NAME = "input", "scores"


@reported("exporting to ONNX")
def export_onnx(
    converted: nn.Module,
    path: str | os.PathLike,
    input_shape: Sequence[int] | None = None,
    *,
    dynamic: bool = True,
    opset: int | None = None,
    labels: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    force: bool = False,
    exporter: str = "torchscript",
) -> Path:
    """Write `converted` (from `fc2conv.convert`) to `path` as ONNX and return the path.

    `input_shape` ((C, H, W), (C, L), (C, D, H, W), or (D,) for an MLP) is the example the exporter traces,
    by default the reference shape; with `dynamic=True` (default) the batch and every spatial axis are dynamic,
    so the file runs at any size the converted model accepts. `labels` (one per class), `mean` and `std` (one per
    input channel, or one for all, applied to inputs scaled to [0, 1]) go into the metadata for
    `fc2conv.runtime`.

    Guarantees: the written model passes `onnx.checker.check_model(full_check=True)`; its input is named
    "input" (N×C×spatial) and its output "scores" (N×K×spatial′). Before it is written it is run in
    onnxruntime at batch 2 at the reference size and a larger one (and a smaller one in global mode, where the
    model runs there) and must equal the PyTorch model within `tolerance(dtype, across_runtimes=True)`, so a
    size the exporter baked into the graph is refused. The file appears atomically and an existing file is
    refused unless `force`. `InputError` for a model not made by `fc2conv.convert` and bad arguments (named),
    `ConversionError` for export or check failures, and for a dense or cam model without a geometry
    (`fc2conv.geometry` says why) or an `input_shape` of a size the model does not take; then no file is written.
    """
    info = getattr(converted, "fc2conv", None)
    if info is None:
        raise InputError("export_onnx needs a model returned by fc2conv.convert (it has no .fc2conv)")
    if exporter not in EXPORTERS:
        raise InputError(f"exporter must be one of {EXPORTERS}, not {exporter!r}")
    path = Path(path)
    refuse_existing(path, force=force)  # before the slow export; atomic_output checks again when writing
    _refuse_beyond_protobuf(converted)
    shape = tuple(int(d) for d in (input_shape or info.input_shape))
    if len(shape) != len(info.input_shape):
        raise InputError(f"input_shape={shape} does not match the reference shape {info.input_shape}")
    if info.mode not in ONE_CELL:  # no file for a map whose cells cannot be placed, nor at a size the model refuses
        refused = geometry(converted).refusal(map_size(shape))
        if refused:
            raise InputError(f"input_shape={shape}: {refused}")
    parameter = next(converted.parameters(), None)
    example = as_map(torch.zeros(1, *shape, dtype=torch.float32 if parameter is None else parameter.dtype))
    checks = _check_inputs(converted, example) if dynamic else [example]
    was_training = converted.training
    converted.eval()
    try:
        with torch.no_grad(), translated(ConversionError, f"the model does not run at input_shape={shape}: "):
            classes = converted(example).shape[1]
        metadata = _metadata(converted, classes=classes, labels=labels, mean=mean, std=std)
        proto = _export(converted, example, dynamic=dynamic, opset=opset or DEFAULT_OPSET, exporter=exporter)
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
        # ValidationError or shape-inference errors alike
        with translated(ConversionError, "the exported model fails the ONNX checker (a bug in fc2conv): "):
            onnx.checker.check_model(proto, full_check=True)
        _check_in_onnxruntime(proto, converted, checks, str(path))
    finally:
        converted.train(was_training)
    with atomic_output(path, force=force) as tmp:
        onnx.save(proto, tmp)
    return path


def _metadata(converted: nn.Module, *, classes: int, labels, mean, std) -> dict[str, str]:
    """The `fc2conv.*` metadata, JSON-encoded; arguments are checked against the model (`fc2conv.metadata`)."""
    info = converted.fc2conv
    grid = None if info.mode in ONE_CELL else geometry(converted)
    values: dict[str, object] = {
        "stride": grid and list(grid.stride),
        "window": grid and list(grid.window),
        "receptive_field": grid and grid.receptive_field and [list(pair) for pair in grid.receptive_field],
        "input_shape": list(info.input_shape),
        "mode": info.mode,
        "exact": grid.exact if grid else True,  # null: not proven
        "context": grid.context if grid else "",
    }
    if grid and grid.sizes:  # only for a model that runs only at some sizes: other files are as they were
        values["sizes"] = [s and s.to_json() for s in grid.sizes]
    if labels is not None:
        values["labels"] = [str(label) for label in labels]
    for name, given in (("mean", mean), ("std", std)):
        if given is not None:
            values[name] = [float(v) for v in given]
    validate(values, source="export_onnx", classes=classes)
    return encode(values)


def _check_inputs(converted: nn.Module, example: torch.Tensor) -> list[torch.Tensor]:
    """Batches of 2 at the reference size and a larger one, and, where the PyTorch model runs, one pixel larger
    along every axis (a size of another parity at every layer: padding computed from the size, such as TensorFlow's
    SAME, must follow it) and, in global mode, a smaller one."""
    info = converted.fc2conv
    reference = tuple(example.shape[2:])
    step = geometry(converted).stride if info.mode not in ONE_CELL else tuple(max(r // 4, 1) for r in reference)
    larger = (reference[0] + 2 * step[0], *(r + s for r, s in zip(reference[1:], step[1:], strict=True)))
    sizes = [reference, geometry(converted).taken(larger) if info.mode not in ONE_CELL else larger]
    if not is_vector_input(info.input_shape):
        sizes.append(tuple(r + 1 for r in reference))
    if info.mode == "global" and not is_vector_input(info.input_shape):
        sizes.append(tuple(max(r - s, 1) for r, s in zip(reference, step, strict=True)))
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, example.shape[1], *size, generator=generator, dtype=example.dtype) for size in sizes]
    with torch.no_grad():
        return [x for k, x in enumerate(inputs) if k < 2 or runs_on(converted, x)]


def _check_in_onnxruntime(proto: onnx.ModelProto, converted: nn.Module, inputs: list[torch.Tensor], label: str) -> None:
    """The exported model runs in onnxruntime on every input and equals the PyTorch model there."""
    runner = session(proto, label, what="the exported model")
    why = ("the exporter baked a size into the graph (a size read as a Python number, such as int(x.size(1)) or "
           "x.data.size()); write sizes as x.size(i) so they stay symbolic")
    with torch.no_grad():
        expected = [converted(x).numpy() for x in inputs]
    actual = probe(runner, [x.numpy() for x in inputs], label, why)
    for x, want, (got,) in zip(inputs, expected, actual, strict=True):
        where = f"on a {times(x.shape)} input"
        if got.shape != want.shape:
            raise ConversionError(f"{label}: the exported model gives {got.shape} {where}, PyTorch {want.shape}; {why}")
        _, max_rel = max_errors(got, want)
        if max_rel > tolerance(want.dtype, across_runtimes=True):
            raise ConversionError(f"{label}: onnxruntime differs from PyTorch {where} (max rel error {max_rel:.1e}); "
                                  f"not written. If it agrees at the reference size, {why}")


def _export(model: nn.Module, example: torch.Tensor, *, dynamic: bool, opset: int, exporter: str) -> onnx.ModelProto:
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    axes = axis_names(example.dim() - 2)
    try:
        if exporter == "dynamo":
            program = torch.onnx.export(model, (example,), dynamo=True, verbose=False,
                                        dynamic_shapes=(dynamic_dims(tuple(example.shape[2:])),) if dynamic else None,
                                        **names)
            return program.model_proto
        buffer = io.BytesIO()
        axes = {INPUT_NAME: {0: "batch", **{2 + a: name for a, name in enumerate(axes)}},
                OUTPUT_NAME: {0: "batch", **{2 + a: f"out_{name}" for a, name in enumerate(axes)}}}
        with warnings.catch_warnings():
            # Chosen on purpose (see the module docstring); its deprecation notice is not the user's concern.
            warnings.simplefilter("ignore", DeprecationWarning)
            # F.pad's pads are reversed by a Slice of step −1, which the constant folder notes it cannot fold.
            warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
            # Modules the converted model calls whole keep their Python checks (`if num_channels !=
            # self.num_channels`), which the tracer warns it fixes; what it fixes wrongly, the runs below catch.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(model, (example,), buffer, dynamo=False, dynamic_axes=axes if dynamic else None,
                              **names)
        return onnx.load_from_string(buffer.getvalue())
    except Exception as e:  # the exporters fail in many types; the hint depends on which one ran
        raise ConversionError(
            f"the {exporter} ONNX exporter failed at input {tuple(example.shape)}: {first_line(e, named=True)}"
            + ("; try exporter='torchscript'" if exporter == "dynamo" else "")
        ) from e


def _refuse_beyond_protobuf(converted: nn.Module) -> None:
    """Refuse, before exporting, a model whose weights alone exceed protobuf's 2 GiB: the exporter would fail
    after minutes (regnet_y_128gf holds 2.6 GB)."""
    weights = sum(t.numel() * t.element_size() for t in (*converted.parameters(), *converted.buffers()))
    if weights >= PROTOBUF_LIMIT:
        raise ConversionError(f"the model holds {weights / 2**30:.1f} GiB of weights, and an ONNX file is limited to "
                              "2 GiB by protobuf: export_onnx writes single-file models only; save it with "
                              "fc2conv.save (.pt2 or .safetensors) instead")
