"""`convert_onnx`: ONNX classifier in, fully convolutional ONNX model out, with `onnx`, `onnxruntime`, `numpy`.

The driver loads and validates the model, infers static shapes at a reference input size, applies the rules
of `rules.py` until none matches, makes batch, height and width dynamic, checks the result and saves it.
"""

from __future__ import annotations

import os

import onnx
import onnxruntime as ort

from ...errors import ConversionError, InputError, reported, translated
from ...metadata import MODES, axis_names
from ...shapes import as_map, is_vector_input, map_size, spatial_axes, times
from ..files.atomic import atomic_output, refuse_existing
from .check import assert_same_scores, input_dtype, probe, random_input, session
from .graph import Graph, Shape, describe, infer_shapes, topological_order
from .rules import Rule, rules_for

__all__ = ["ONNX_MODES", "convert_onnx"]

# The modes of fc2conv.metadata.MODES that convert_onnx writes: a graph has no pools to move a head before.
ONNX_MODES = tuple(mode for mode in MODES if mode in ("dense", "global"))
# The probe input is this many pixels taller and wider than the reference, enough for any stride-32 network
# to grow its last feature map; a map that does not grow has the reference size baked in.
_PROBE_GROWTH = 32
_PROTOBUF_LIMIT = 2**31 - 1


@reported("converting the ONNX model")
def convert_onnx(
    src: str | os.PathLike | onnx.ModelProto,
    dst: str | os.PathLike | None = None,
    input_shape: tuple[int, ...] | None = None,
    *,
    mode: str = "dense",
    force: bool = False,
) -> onnx.ModelProto:
    """Rewrite the fully connected head of the single-input classifier `src` as convolutions.

    `src` is a path or a ModelProto (not modified). `input_shape` is the reference input shape without the
    batch, (C, H, W), (C, L), (C, D, H, W) or (D,), needed when the model's input has symbolic dims; it must
    agree with static ones. With mode="dense", global pools that feed the head become stride-1 window pools of
    the size they covered at the reference size, so larger inputs give a map of scores; mode="global" keeps
    them global.

    Guarantees of the returned model: it passes `onnx.checker.check_model(full_check=True)`; its input keeps
    its name and its rank (N×D×H×W for a vector input, with H = W = 1 at the reference), with a dynamic batch
    and dynamic spatial sizes; outputs keep their names, and each output that was N×K becomes N×K×(spatial),
    1×…×1 at the reference size where `out.reshape(N, -1)` equals the original output up to float rounding.
    No Gemm, and no MatMul by a constant matrix on vectors, is left. Before anything is returned or written,
    the source and the result run in onnxruntime: they must agree at the reference size (batch 2 where the
    source allows it), and the result must run at a larger size with batch 2. If `dst` is given the model is
    written there atomically (temporary file in the same directory, then `os.replace`); an existing `dst`, or
    one that is `src` itself, is refused unless `force` (and always when it is `src`).

    Raises InputError naming the file for an unreadable or invalid model, ConversionError naming the file or the
    ONNX node and the reason for one onnxruntime cannot run and for any pattern it cannot convert exactly; then no
    file is written.
    """
    if mode not in ONNX_MODES:
        raise InputError(f"mode must be one of {ONNX_MODES}, not {mode!r}")
    if dst is not None:
        refuse_existing(dst, force=force)  # before the work; atomic_output checks again
        if not isinstance(src, onnx.ModelProto) and all(map(os.path.exists, (src, dst))) and os.path.samefile(src, dst):
            raise InputError(f"{os.fspath(dst)} is the source model; writing it would destroy the source, "
                             "even with force=True: name another file")
    model, label = _load(src)
    source = session(model, label)  # before the work: what cannot run cannot be checked
    image = _image_input(model, label)
    reference = _reference_shape(image, input_shape, label)
    # onnx raises several unrelated types here
    with translated(ConversionError, f"{label}: ONNX shape inference failed at input shape {reference}: "):
        shapes = infer_shapes(model, reference)
    spatial = spatial_axes(reference[1:])
    graph = Graph(model, shapes, _probe_shapes(model, reference) if mode == "dense" else {}, spatial)
    ordered = topological_order(model.graph)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    graph.prune()
    if is_vector_input(reference[1:]):  # an MLP becomes 1×1 convolutions over N×D×H×W maps
        graph.lifted.add(image.name)
        graph.shapes[image.name] = (reference[0], reference[1], *map_size(reference[1:]))
    _rewrite(graph, rules_for(mode), label)
    _make_dynamic(graph, image.name)
    _validate(model, label)
    _check(source, session(model, label, what="the converted model"), reference, mode, label)
    if dst is not None:
        with atomic_output(dst, force=force) as tmp:
            tmp.write_bytes(model.SerializeToString())
    return model


def _load(src: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """A private copy of the model and how messages name it."""
    if isinstance(src, onnx.ModelProto):
        model, label = onnx.ModelProto(), "the ONNX model"
        model.CopyFrom(src)
    else:
        label = os.fspath(src)
        # protobuf, OS and external-data errors alike mean "not a model we can read"
        with translated(InputError, f"{label}: not a readable ONNX model (", end=")"):
            model = onnx.load(label)
    # the checker raises ValidationError, or ValueError for oversized models
    with translated(InputError, f"{label}: not a valid ONNX model (", end=")"):
        onnx.checker.check_model(model)
    return model, label


def _image_input(model: onnx.ModelProto, label: str) -> onnx.ValueInfoProto:
    initializers = {init.name for init in model.graph.initializer}
    inputs = [inp for inp in model.graph.input if inp.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(repr(inp.name) for inp in inputs)
        raise ConversionError(f"{label}: fc2conv converts single-input classifiers; this one has inputs {names}")
    rank = len(inputs[0].type.tensor_type.shape.dim)
    if not 2 <= rank <= 5:
        raise ConversionError(
            f"{label}: input {inputs[0].name!r} has rank {rank}; fc2conv takes N×C×L signals, N×C×H×W images, "
            "N×C×D×H×W volumes or N×D vectors"
        )
    return inputs[0]


def _reference_shape(image: onnx.ValueInfoProto, input_shape: tuple[int, ...] | None, label: str) -> Shape:
    """The static input shape used for shape inference: the model's, completed by `input_shape`, batch 1
    when symbolic."""
    dims = [d.dim_value if d.HasField("dim_value") else None for d in image.type.tensor_type.shape.dim]
    declared = ", ".join("?" if d is None else str(d) for d in dims)
    if input_shape is not None:
        given = tuple(int(d) for d in input_shape)
        if len(given) != len(dims) - 1 or any(d is not None and d != s for d, s in zip(dims[1:], given, strict=True)):
            raise ConversionError(
                f"{label}: input_shape={given} does not fit input {image.name!r} of shape ({declared}); give "
                "the shape without the batch dimension"
            )
        dims[1:] = given
    if None in dims[1:]:
        raise ConversionError(
            f"{label}: input {image.name!r} has symbolic dims ({declared}); pass input_shape=(C, H, W) (or (C, L), "
            "(C, D, H, W), (D,))"
        )
    return (dims[0] or 1, *dims[1:])


def _probe_shapes(model: onnx.ModelProto, reference: Shape) -> dict[str, Shape]:
    """Shapes at a larger input, to tell feature maps that grow from ones with the size baked in."""
    if is_vector_input(reference[1:]):  # an MLP's vectors: nothing grows
        return {}
    try:
        return infer_shapes(model, (*reference[:2], *(s + _PROBE_GROWTH for s in reference[2:])))
    except Exception:  # a graph that only infers at its export size: the growth checks are skipped
        return {}


def _rewrite(graph: Graph, rules: list[Rule], label: str) -> None:
    """Apply the first matching rule at the first node where one matches, until no rule matches anywhere.

    Nodes are visited in topological order, so a rule sees the inputs of its node already rewritten.
    """
    while True:
        for node in graph.graph.node:
            rule = next((r for r in rules if r.match(graph, node)), None)
            if rule is not None:
                reason = rule.check(graph, node)
                if reason is not None:
                    raise ConversionError(f"{label}: {describe(node)}: {reason}")
                rule.rewrite(graph, node)
                break
        else:
            return


def _make_dynamic(graph: Graph, image: str) -> None:
    """Dynamic batch and spatial sizes on the input; N×K×(spatial) on the outputs that were N×K vectors."""
    axes = axis_names(graph.spatial)
    for inp in graph.graph.input:
        if inp.name == image:
            _set_dims(inp, ["batch", graph.shapes[image][1], *axes])
    for out in graph.graph.output:
        if out.name in graph.lifted:
            _set_dims(out, ["batch", graph.shapes[out.name][1], *(f"out_{axis}" for axis in axes)])
        else:  # a non-head output keeps its rank; only its batch is known
            rank = len(out.type.tensor_type.shape.dim)
            _set_dims(out, ["batch", *[None] * (rank - 1)])
    del graph.graph.value_info[:]  # inferred for the old graph; stale now


def _check(source: ort.InferenceSession, converted: ort.InferenceSession, reference: Shape, mode: str,
           label: str) -> None:
    """The conversion equals its source at the reference size (batch 2 when the source allows it), and runs at a
    larger size with batch 2: no size was baked into the written graph."""
    batch = reference[0] if isinstance(source.get_inputs()[0].shape[0], int) else 2
    x = random_input((batch, *reference[1:]), input_dtype(source))
    lifted = as_map(x)
    name = converted.get_inputs()[0].name
    assert_same_scores(source.run(None, {source.get_inputs()[0].name: x}), converted.run(None, {name: lifted}),
                       label, f"at the reference input {times(x.shape)}")
    grow = 3 if x.ndim != lifted.ndim else _PROBE_GROWTH  # an MLP's map of vectors may have any size
    larger = random_input((2, lifted.shape[1], *(s + grow for s in lifted.shape[2:])), lifted.dtype, seed=1)
    probe(converted, [larger], label, f"a layer has the reference size baked in; mode={mode!r} cannot hold")


def _set_dims(info: onnx.ValueInfoProto, dims: list[int | str | None]) -> None:
    shape = info.type.tensor_type.shape
    shape.Clear()
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        elif d is not None:
            dim.dim_value = d


def _validate(model: onnx.ModelProto, label: str) -> None:
    if model.ByteSize() > _PROTOBUF_LIMIT:
        raise ConversionError(f"{label}: the converted model exceeds protobuf's 2 GB limit")
    with translated(ConversionError, f"{label}: the converted model fails the ONNX checker (a bug in fc2conv): "):
        onnx.checker.check_model(model, full_check=True)
