"""A mutable view of an ONNX graph for the rewrite rules: who produces and who consumes each tensor, constant
values, reference shapes, and the edits the rules need (replace, alias, prune).

Only `onnx`, `onnxruntime` and `numpy`: this module must stay importable without PyTorch.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

__all__ = ["Graph", "Shape", "attribute", "describe", "infer_shapes", "topological_order"]

Shape = tuple[int | None, ...]

# Node types whose output carries a tensor's shape, never its values.
_SHAPE_OPS = frozenset({"Shape", "Size"})
# Initializers above this many elements are weights, never shape data; shape inference does not need them.
_SKELETON_MAX_ELEMENTS = 64


def attribute(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """The value of `node`'s attribute `name`, or `default` when it is not set."""
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def describe(node: onnx.NodeProto) -> str:
    """How error messages name a node: its op_type and its name (or its first output when unnamed)."""
    if node.name:
        return f"{node.op_type} node {node.name!r}"
    return f"unnamed {node.op_type} node producing {node.output[0]!r}"


def topological_order(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """`graph.node` sorted so that every node comes after the producers of its inputs (stable otherwise)."""
    produced = {out for node in graph.node for out in node.output}
    ready: set[str] = set()
    pending = list(graph.node)
    order: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(i not in produced or i in ready for i in node.input):
                order.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"the graph has a cycle through {describe(rest[0])}")
        pending = rest
    return order


def infer_shapes(model: onnx.ModelProto, input_shape: Shape) -> dict[str, Shape]:
    """Static shapes of every tensor when the single graph input has `input_shape`.

    Runs ONNX shape inference with data propagation on a skeleton of the model whose weights are replaced by
    graph inputs of the same type, so that large models are not copied. Tensors it leaves unknown (shapes the
    graph computes with ops data propagation does not cover, e.g. a channel shuffle's Reshape) are measured
    by one onnxruntime run on zeros of `input_shape`.
    """
    skeleton = _skeleton(model)
    graph = skeleton.graph
    image = next(inp for inp in graph.input if inp.name not in {init.name for init in model.graph.initializer})
    image.type.tensor_type.shape.Clear()
    image.type.tensor_type.shape.dim.extend(onnx.TensorShapeProto.Dimension(dim_value=d) for d in input_shape)
    for out in graph.output:  # inferred afresh at this input size
        out.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
    shapes: dict[str, Shape] = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = info.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[info.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
            )
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    unknown = [out for node in model.graph.node for out in node.output
               if out and (out not in shapes or None in shapes[out])]
    if unknown:
        shapes.update(_measured_shapes(model, image.name, input_shape, unknown))
    return shapes


def _measured_shapes(model: onnx.ModelProto, image: str, input_shape: Shape, names: list[str]) -> dict[str, Shape]:
    """The shapes of tensors `names` in one onnxruntime run of `model` with zeros of `input_shape` as `image`."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    elem_type = next(i for i in model.graph.input if i.name == image).type.tensor_type.elem_type
    x = np.zeros(input_shape, dtype=helper.tensor_dtype_to_np_dtype(elem_type))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return {name: tuple(value.shape) for name, value in zip(names, session.run(names, {image: x}), strict=True)}


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose initializers larger than shape data are typed graph inputs instead."""
    heavy = [init for init in model.graph.initializer if int(np.prod(init.dims)) > _SKELETON_MAX_ELEMENTS]
    heavy_names = {init.name for init in heavy}
    graph = helper.make_graph(
        list(model.graph.node),
        model.graph.name,
        [inp for inp in model.graph.input if inp.name not in heavy_names]
        + [helper.make_tensor_value_info(w.name, w.data_type, list(w.dims)) for w in heavy],
        list(model.graph.output),
        [init for init in model.graph.initializer if init.name not in heavy_names],
    )
    skeleton = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    skeleton.functions.extend(model.functions)
    return skeleton


class Graph:
    """The graph of `model` being rewritten, with lookup maps kept current by its editing methods.

    `shapes` holds each tensor's static shape at the reference input size; `probe` the same at a larger
    input (empty when unknown). `spatial` is the number of spatial axes of the maps (2 for an MLP's input,
    which becomes N×D×H×W). `lifted` names the tensors that were N×D vectors in the original graph and now
    hold N×D×(spatial) maps (N×D×1×…×1 at the reference size); their `shapes` entries already have that rank.
    `sliding_pools` names the outputs of global pools already rewritten as window pools.
    """

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, Shape], probe: dict[str, Shape],
                 spatial: int) -> None:
        self.model = model
        self.graph = model.graph
        self.shapes = shapes
        self.probe = probe
        self.spatial = spatial
        self.lifted: set[str] = set()
        self.sliding_pools: set[str] = set()
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.refresh()

    # -- lookups ---------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Rebuild the producer, consumer and initializer maps after the node list changed."""
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                self.consumers.setdefault(inp, []).append(node)
        self.initializers = {init.name: init for init in self.graph.initializer}
        self.outputs = {out.name for out in self.graph.output}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of `name` when it is an initializer or a Constant node's output (through Identity nodes),
        else None."""
        node = self.producer.get(name)
        while node is not None and node.op_type == "Identity":
            name = node.input[0]
            node = self.producer.get(name)
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        if node is None or node.op_type != "Constant":
            return None
        attr = node.attribute[0]
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_float", "value_floats"):
            return np.asarray(helper.get_attribute_value(attr), dtype=np.float32)
        if attr.name in ("value_int", "value_ints"):
            return np.asarray(helper.get_attribute_value(attr), dtype=np.int64)
        return None

    def is_constant(self, name: str) -> bool:
        """Whether `name` is an initializer or a Constant node's output (through Identity nodes)."""
        producer = self.producer.get(name)
        while producer is not None and producer.op_type == "Identity":
            name = producer.input[0]
            producer = self.producer.get(name)
        return name in self.initializers or (producer is not None and producer.op_type == "Constant")

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def value_dependent(self) -> set[str]:
        """Tensors whose values depend on the values of a graph input (shape-only paths excluded)."""
        dependent = {inp.name for inp in self.graph.input if inp.name not in self.initializers}
        for node in self.graph.node:
            if node.op_type not in _SHAPE_OPS and any(i in dependent for i in node.input):
                dependent.update(node.output)
        return dependent

    # -- edits -----------------------------------------------------------------------------------------

    def unique_name(self, hint: str) -> str:
        taken = set(self.producer) | set(self.initializers) | {inp.name for inp in self.graph.input}
        name, k = hint, 0
        while name in taken:
            k += 1
            name = f"{hint}_{k}"
        return name

    def add_initializer(self, array: np.ndarray, hint: str) -> str:
        name = self.unique_name(hint)
        self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        self.initializers[name] = self.graph.initializer[-1]
        self.shapes[name] = tuple(array.shape)
        return name

    def replace(self, node: onnx.NodeProto, new_nodes: Iterable[onnx.NodeProto]) -> None:
        """Put `new_nodes` where `node` was (keeping topological order), then prune and refresh."""
        nodes = list(self.graph.node)
        at = next(i for i, n in enumerate(nodes) if n is node)
        nodes[at : at + 1] = list(new_nodes)
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        self.prune()

    def alias(self, node: onnx.NodeProto) -> None:
        """Remove `node`, a reshape that is the identity on its data, making its output its input's value.

        The producer of the input is renamed to write the output directly when nothing else reads the
        input; otherwise an Identity node takes the place of `node`.
        """
        source, target = node.input[0], node.output[0]
        producer = self.producer.get(source)
        sole_reader = len(self.consumers.get(source, [])) == 1 and source not in self.outputs
        if producer is None or not sole_reader:
            self.replace(node, [helper.make_node("Identity", [source], [target], name=node.name)])
            return
        producer.output[list(producer.output).index(source)] = target
        self.lifted.discard(source)  # the name is gone
        self.replace(node, [])

    def prune(self) -> None:
        """Drop nodes whose outputs nobody reads and initializers nobody uses; refresh the maps."""
        self.refresh()
        while True:
            live = [
                n for n in self.graph.node
                if any(out in self.consumers or out in self.outputs for out in n.output)
            ]
            if len(live) == len(self.graph.node):
                break
            del self.graph.node[:]
            self.graph.node.extend(live)
            self.refresh()
        used = set(self.consumers) | self.outputs
        for init in [init for init in self.graph.initializer if init.name not in used]:
            self.graph.initializer.remove(init)
        for inp in [inp for inp in self.graph.input if inp.name in self.initializers and inp.name not in used]:
            self.graph.input.remove(inp)
        self.refresh()
