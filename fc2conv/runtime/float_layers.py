"""Which layers of an int8 model stay in float, so that its scores stay within a drift budget: the fewest that do.

`fc2conv quantize` holds an int8 file to a budget: the best class of each held-out cell agrees with float32's on at
least `min_agreement` of the cells. `--float-layers` names the layers to keep in float ("none", "first", "last",
"first+last"), and the file is written only if it meets the budget; "auto" searches:

1. Every layer int8. Within the budget: done.
2. Otherwise each layer's sensitivity is measured, as onnxruntime's QDQ debugging tools do, from the activations it
   reads and writes in int8, on a held-out input cropped to at most
   `SENSITIVITY_SIDE` per side: how many quantization steps each channel of the float activation varies over (the
   median over channels of its standard deviation, in steps of the tensor's scale). A tensor whose range one outlier
   channel sets leaves every other channel a fraction of a step. (onnxruntime's own measure, the tensor's
   signal-to-quantization-noise ratio as a whole, misses exactly that: the outlier holds most of the power, and on
   maps of mostly blank input every tensor's ratio is a few dB, outliers or not.)
3. The most sensitive 1, 2, 4, … layers are kept in float until the budget is met, then the fewest that meet it are
   found by bisection between the last two counts (NNCF's accuracy-aware quantization works the same way, ranking
   by the drop each layer causes). With every layer in float there is no int8 model left: no mix meets the budget.

numpy, onnx and onnxruntime; no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .drift import Drift

__all__ = ["CHOICES", "SENSITIVITY_SIDE", "Attempt", "chosen_layers", "compute_layers", "rank_by_sensitivity",
           "search"]

CHOICES = ("auto", "none", "first", "last", "first+last")
SENSITIVITY_SIDE = 256  # pixels per side of the input the sensitivities are measured on (all activations are kept)
_COMPUTE = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_DEQUANTIZED = "_DequantizeLinear_Output"
_RENAMED = "_QuantizeLinear_Input"


@dataclass(frozen=True)
class Attempt:
    """One int8 model tried: the layers (node names) kept in float, the file, and its drift on the held-out inputs."""

    nodes: tuple[str, ...]
    path: Path
    drift: Drift

    def to_dict(self) -> dict[str, Any]:
        return {"float_layers": list(self.nodes), "drift": self.drift.to_dict()}


@dataclass
class Search:
    """The attempts of `search`, in order, and the chosen one (None when none met the budget)."""

    tried: list[Attempt] = field(default_factory=list)
    chosen: Attempt | None = None

    @property
    def best(self) -> Attempt:
        """The attempt with the highest agreement (then the smallest probability change)."""
        return max(self.tried, key=lambda a: (a.drift.argmax_agreement, -a.drift.max_abs_probability))


def compute_layers(graph) -> list[str]:
    """The names of the model's convolutions and matrix products, in graph order."""
    return [node.name for node in graph.graph.node if node.op_type in _COMPUTE]


def chosen_layers(graph, choice: str) -> list[str]:
    """The node names `choice` ("none", "first", "last", "first+last") keeps in float."""
    compute = compute_layers(graph)
    first, last = compute[:1], compute[-1:]
    nodes = {"none": [], "first": first, "last": last, "first+last": sorted(set(first + last), key=compute.index)}
    if choice not in nodes:
        raise InputError(f"float_layers= must be one of {', '.join(CHOICES)}; got {choice!r}")
    if any(not name for name in nodes[choice]):
        raise InputError("the model's first or last convolution has no node name, so it cannot be kept in "
                         "float; use float_layers='none'")
    return nodes[choice]


def search(attempt: Callable[[tuple[str, ...]], Attempt], ranking: Callable[[Attempt], list[str]],
           meets: Callable[[Drift], bool]) -> Search:
    """The fewest of the most sensitive layers to keep in float so that `meets` (see the module docstring);
    `attempt(nodes)` quantizes with `nodes` in float, `ranking(all_int8)` orders the layers, most sensitive first."""
    found = Search()

    def tried(nodes: tuple[str, ...]) -> Attempt:
        done = attempt(nodes)
        found.tried.append(done)
        return done

    first = tried(())
    if meets(first.drift):
        found.chosen = first
        return found
    ranked = ranking(first)
    low, high, count = 0, None, 1
    while count < len(ranked):  # all of them in float is no int8 model
        done = tried(tuple(ranked[:count]))
        if meets(done.drift):
            high = done
            break
        low, count = count, min(count * 2, len(ranked) - 1) if count < len(ranked) - 1 else len(ranked)
    if high is None:
        return found
    while len(high.nodes) - low > 1:  # the fewest, assuming more layers in float drift no more
        middle = (low + len(high.nodes)) // 2
        done = tried(tuple(ranked[:middle]))
        if meets(done.drift):
            high = done
        else:
            low = middle
    found.chosen = high
    return found


def rank_by_sensitivity(float_model: Path, quantized: Path, inputs: list[np.ndarray], input_name: str) -> list[str]:
    """The nodes `quantized` computes in int8, most sensitive first (see the module docstring), measured on `inputs`
    (each cropped to `SENSITIVITY_SIDE`)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(quantized), load_external_data=False).graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    steps = {node.input[0]: float(numpy_helper.to_array(constants[node.input[1]]).max())
             for node in graph.node if node.op_type == "QuantizeLinear" and node.input[0] not in constants
             and node.input[1] in constants}
    found = _float_activations(float_model, [_in_float(name) for name in steps], inputs, input_name)
    readers: dict[str, list[str]] = {}
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            for name in node.input:
                if _DEQUANTIZED in name:
                    readers.setdefault(name.split(_DEQUANTIZED)[0], []).append(node.name)
    producers = {output: node.name for node in graph.node for output in node.output}
    scored: dict[str, float] = {}
    for tensor, step in steps.items():
        values = found.get(_in_float(tensor))
        if values is None or step <= 0:
            continue
        levels = _levels(values, step)
        # The layers reading it in int8, and the one writing it: its output is quantized because it runs in int8.
        nodes = [*readers.get(tensor, []), producers.get(tensor, "")]
        for node in filter(None, nodes):
            scored[node] = min(scored.get(node, np.inf), levels)
    return sorted(scored, key=lambda node: scored[node])


def _in_float(name: str) -> str:
    """The float model's name of a tensor the quantizer renamed (a graph output gets a `_QuantizeLinear_Input`)."""
    return name.removesuffix(_RENAMED)


def _float_activations(model: Path, names: list[str], inputs: list[np.ndarray], input_name: str
                       ) -> dict[str, list[np.ndarray]]:
    """The float model's values of the tensors `names` on each of `inputs` (cropped to `SENSITIVITY_SIDE`)."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(model))
    present = {output.name for output in proto.graph.output}
    for name in names:
        if name not in present:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor as the graph has it
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    wanted = [output.name for output in session.get_outputs()]
    found: dict[str, list[np.ndarray]] = {}
    for x in inputs:
        crop = np.ascontiguousarray(x[(..., *(slice(0, SENSITIVITY_SIDE),) * (x.ndim - 2))])
        for name, value in zip(wanted, session.run(None, {input_name: crop}), strict=True):
            found.setdefault(name, []).append(value)
    return found


def _levels(values: list[np.ndarray], step: float) -> float:
    """How many quantization steps a channel of the tensor varies over: the median over its channels of their
    standard deviation divided by the tensor's step. One outlier channel that sets the tensor's range leaves every
    other channel a fraction of a step; a channel that does not vary (dead) is not counted."""
    stacked = np.concatenate([np.asarray(v, np.float64).reshape(v.shape[0], v.shape[1] if v.ndim > 1 else 1, -1)
                              for v in values], axis=2)
    spread = stacked.transpose(1, 0, 2).reshape(stacked.shape[1], -1).std(axis=1)
    live = spread[spread > 0]
    return float(np.median(live) / step) if live.size else np.inf
