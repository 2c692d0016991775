"""`fc2conv quantize`: an exported float32 model as static int8 (QDQ, per-channel weights), calibrated on images
prepared as `fc2conv run` prepares them, with the drift from float32 measured on held-out images and stored in the
file. onnxruntime's quantization tools, onnx and numpy; no torch.

    from fc2conv.runtime.quantization import quantize
    done = quantize("digits.onnx", "digits_int8.onnx", "calibration/")   # a directory, an image, or a .npy batch
    print(done.drift)              # argmax agreement with float32 per cell, max |Δprobability|, on held-out images

How: the source's Identity nodes on constants (the exporter's way of sharing equal initializers, such as the zero
biases of folded batch norms) are folded first, since a weight or bias reached through an Identity keeps onnxruntime
from fusing its convolution into an int8 one (measured: ResNet18 at 896² ran its int8 file in 2.5 s with them, 0.5 s
without). The calibration images (`fc2conv.runtime.calibration`: at most `MAX_INPUTS` of a set of any size, evenly
spaced, every fourth held out) run once through onnxruntime's calibrator (`minmax`, `entropy` or `percentile`), one
image at a time, so their sizes may differ and memory holds one of them; the ranges quantize every Conv (and the
other ops onnxruntime quantizes) to QDQ with uint8 activations and int8 weights per output channel (u8×s8:
onnxruntime's fast path on x86, measured 2.3× faster than s8×s8 here; OpenVINO runs both). How many bits of the
weights are used depends on the CPU (`fc2conv.runtime.cpu`): with VNNI or AMX, int8 products are summed exactly and
all 8 bits are used; without them, onnxruntime sums u8×s8 pairs in 16 bits, which 8-bit weights can saturate (seen
on an emulated AVX2 CPU: the digits CNN's largest probability change went from 0.08 to 0.28, and two layers had to
stay in float), so the weights use 7 bits (onnxruntime's `reduce_range`: 2·255·64 < 2¹⁵), which cost accuracy
elsewhere (a random ResNet50's largest score change doubled, 2.0% to 4.4%). The file records which
(`calibration.weights`), and `DenseModel.caution` warns when an 8-bit file runs in onnxruntime on a CPU without
exact sums (OpenVINO's kernels do not saturate there: measured on the same emulated CPU).

The budget: the file is written only if the best class of each held-out cell agrees with float32's on at least
`min_agreement` of the cells (default `MIN_AGREEMENT`); else `BudgetError`, and nothing is written. `float_layers`
names the layers to keep in float ("none", "first", "last": the one whose output is the scores, "first+last"), or
"auto" finds the fewest that meet the budget, most sensitive first (`fc2conv.runtime.float_layers`), and reports what
they cost in speed against every layer in int8. The drift is measured on each held-out image and, for images of up to
`MOSAIC_PIXELS`, on its 2×2 mosaic too: a dense map runs at sizes larger than calibration, where scores can leave the
calibrated range of an int8 output (a random-weight ResNet18 calibrated at 224² kept 100% of its argmax at 224² and
0.2% at 896², until its last convolution stayed in float).

The output keeps dynamic batch and spatial axes and the source's `fc2conv.*` metadata, adds `precision: "int8"`,
`calibration` (method, inputs found, picked and held out, sizes, the weights' range, the CPU class it was measured
on, the budget), `drift` (`fc2conv.runtime.drift`, measured in onnxruntime) and `float_layers`, and is written
atomically; the source file is never modified. Refused (`InputError`): a model already quantized, an empty or
unreadable calibration set, inputs the model cannot take (their file named: wrong channels, smaller than the window,
NaN or infinite samples, a `.npy` header that does not match its file).
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConversionError, InputError
from .calibration import PICKED, CalibrationSet, read_calibration
from .cpu import detect
from .drift import BUDGET, Drift, measure
from .files.atomic import atomic_output, refuse_existing
from .float_layers import CHOICES, Attempt, Search, chosen_layers, rank_by_sensitivity, search
from .images import MAX_PIXELS
from .model import DenseModel
from .qdq import Reader, calibrate, check_dynamic, fold_identities, load, quiet, set_metadata, write_qdq

__all__ = ["METHODS", "MIN_AGREEMENT", "QUANTIZED_OPS", "BudgetError", "Quantized", "quantize"]

METHODS = ("minmax", "entropy", "percentile")
MIN_AGREEMENT = BUDGET  # the default budget: the best class of 99% of held-out cells is float32's
MOSAIC_PIXELS = 2**20  # held-out images up to this size are also measured as a 2×2 mosaic of themselves
# `calibration.weights` of the two kinds of file (the first is what files before 7-bit weights said too).
WEIGHTS_8, WEIGHTS_7 = "int8 per channel", "int8 per channel, 7-bit range (no 16-bit saturation without VNNI)"
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                 "ConvInteger", "MatMulInteger", "QLinearAdd", "QGemm"}
_TIMED_RUNS = 5  # alternating runs whose median latencies give the cost of the layers kept in float


class BudgetError(ConversionError):
    """No int8 model of the source meets the drift budget (or the layers asked for in float do not): nothing was
    written. The command line exits 1 for it, as for a failed verification."""


@dataclass(frozen=True)
class Quantized:
    """A quantized model written at `path`: its calibration summary, the held-out `drift`, the layers kept in float
    (node names), every int8 model tried (`tried`: float layers and drift) and, when "auto" kept layers in float,
    what they cost (`cost`: the median milliseconds of float32, every layer in int8 and this file on a held-out
    input)."""

    path: Path
    calibration: dict[str, Any]
    drift: Drift
    float_layers: list[str]
    tried: list[dict[str, Any]] = field(default_factory=list)
    min_agreement: float = MIN_AGREEMENT
    cost: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "precision": "int8", "exact": False, "calibration": self.calibration,
                "drift": self.drift.to_dict(), "min_agreement": self.min_agreement, "float_layers": self.float_layers,
                "tried": self.tried, "cost": self.cost}


def quantize(model: str | os.PathLike, out: str | os.PathLike, calibration: str | os.PathLike, *,
             method: str = "minmax", float_layers: str = "auto", min_agreement: float = MIN_AGREEMENT,
             force: bool = False, max_pixels: int | None = MAX_PIXELS) -> Quantized:
    """Write `model` (a float32 file of `fc2conv.export_onnx` or `convert_onnx`) quantized to int8 at `out`,
    calibrated on `calibration`, its best class agreeing with float32's on at least `min_agreement` of the held-out
    cells (see the module docstring and `fc2conv.runtime.float_layers`). `InputError` for bad arguments, a
    quantized model, a bad calibration set; `BudgetError` when no int8 model meets the budget. Nothing is written
    then."""
    model, out = Path(model), Path(out)
    if method not in METHODS:
        raise InputError(f"method= must be one of {', '.join(METHODS)}; got {method!r}")
    if float_layers not in CHOICES:
        raise InputError(f"float_layers= must be one of {', '.join(CHOICES)}; got {float_layers!r}")
    if not isinstance(min_agreement, int | float) or not 0 < min_agreement <= 1:
        raise InputError(f"min_agreement= must be a share of cells in (0, 1]; got {min_agreement!r}")
    if (out.exists() and model.exists() and os.path.samefile(out, model)) or out.resolve() == model.resolve():
        raise InputError(f"{out} is the input model; fc2conv never modifies its input: name another output")
    refuse_existing(out, force=force)
    source = DenseModel(model)
    graph = load(model)
    found = sorted({node.op_type for node in graph.graph.node} & QUANTIZED_OPS)
    if found or source.model_precision != "fp32":
        why = f"it has {', '.join(found)} nodes" if found else f"its metadata says precision {source.model_precision}"
        raise InputError(f"{model} is already quantized ({why}); quantize its float32 source instead")
    explicit = None if float_layers == "auto" else chosen_layers(graph, float_layers)
    inputs = read_calibration(calibration, source, max_pixels=max_pixels)
    full_range = detect().exact_int8_sums  # 8-bit weights where int8 products are summed exactly (module docstring)

    def meets(drift: Drift) -> bool:
        return drift.argmax_agreement >= min_agreement

    with tempfile.TemporaryDirectory(prefix="fc2conv-quantize-") as tmp, quiet():
        prepared = fold_identities(graph, model, Path(tmp))
        ranges = calibrate(prepared, source.input_name, inputs, method, Path(tmp))

        numbered = itertools.count()

        def attempt(nodes: tuple[str, ...]) -> Attempt:
            path = Path(tmp) / f"int8_{next(numbered)}.onnx"
            write_qdq(prepared, path, ranges, method, list(nodes), Reader(source.input_name, inputs.samples()),
                      full_range)
            return Attempt(nodes, path, _drift(path, source, inputs))

        def ranking(all_int8: Attempt) -> list[str]:
            first = next(inputs.held_out_samples()).x
            return rank_by_sensitivity(prepared, all_int8.path, [first], source.input_name)

        if explicit is None:
            searched = search(attempt, ranking, meets)
        else:
            searched = Search([attempt(tuple(explicit))])
            searched.chosen = searched.tried[0] if meets(searched.tried[0].drift) else None
        if searched.chosen is None:
            raise _over_budget(searched, min_agreement, float_layers)
        chosen = searched.chosen
        summary = {"method": method, "found": inputs.found, "images": len(inputs.calibrating),
                   "held_out": len(inputs.held_out) if inputs.held_separately else 0,
                   "mosaics": chosen.drift.images - len(inputs.held_out), "picked": PICKED,
                   "sizes": [list(size) for size in sorted(inputs.sizes)],
                   "activations": "uint8", "weights": WEIGHTS_8 if full_range else WEIGHTS_7, "cpu": detect().kind,
                   "min_agreement": min_agreement}
        cost = _cost(source, searched.tried[0].path, chosen.path, inputs) if chosen.nodes and explicit is None else None
        result = load(chosen.path)
        check_dynamic(graph, result, model)
        set_metadata(result, {"precision": "int8", "calibration": summary, "drift": chosen.drift.to_dict(),
                         "float_layers": list(chosen.nodes)})
        import onnx

        with atomic_output(out, force=force) as written:
            onnx.save(result, str(written))
    return Quantized(out, summary, chosen.drift, list(chosen.nodes), [a.to_dict() for a in searched.tried],
                     min_agreement, cost)


def _over_budget(searched: Search, min_agreement: float, float_layers: str) -> BudgetError:
    best = searched.best
    kept = f"{len(best.nodes)} layer(s) in float" if best.nodes else "every layer in int8"
    if float_layers != "auto":
        return BudgetError(f"float_layers={float_layers!r} gives {best.drift.argmax_agreement:.2%} argmax agreement "
                           f"on the held-out cells, below the budget of {min_agreement:.2%} (min_agreement=); "
                           "nothing written: try float_layers='auto', or a lower min_agreement=")
    return BudgetError(f"no int8 model meets the budget of {min_agreement:.2%} argmax agreement on the held-out cells "
                       f"(min_agreement=): the best of {len(searched.tried)} tried agrees on "
                       f"{best.drift.argmax_agreement:.2%} with {kept}; nothing written. This model does not keep "
                       "its classes in int8: run it in float32, or in bf16 with backend='openvino'")


def _drift(path: Path, source: DenseModel, inputs: CalibrationSet) -> Drift:
    """The drift of the quantized `path` from `source` on the held-out inputs and the mosaics of the small ones,
    read one at a time (the float32 scores are recomputed rather than kept: memory holds one input's)."""
    model = DenseModel(path)

    def measured() -> Iterator[np.ndarray]:
        for sample in inputs.held_out_samples():
            yield sample.x
            if sample.x[0, 0].size <= MOSAIC_PIXELS:
                yield _mosaic(sample.x)

    return measure((source.infer(x), model.infer(x)) for x in measured())


def _cost(source: DenseModel, all_int8: Path, chosen: Path, inputs: CalibrationSet) -> dict[str, float]:
    """What the layers kept in float cost: the median milliseconds of float32, of every layer in int8 and of the chosen
    file on the first held-out input, in alternating runs (so that the machine's noise hits all alike)."""
    x = next(inputs.held_out_samples()).x
    models = [source, DenseModel(all_int8), DenseModel(chosen)]
    for model in models:
        model.infer(x)  # warm-up
    times: list[list[float]] = [[] for _ in models]
    for _ in range(_TIMED_RUNS):
        for model, found in zip(models, times, strict=True):
            start = time.perf_counter()
            model.infer(x)
            found.append(1000 * (time.perf_counter() - start))
    fp32_ms, int8_ms, chosen_ms = (round(float(np.median(found)), 2) for found in times)
    return {"fp32_ms": fp32_ms, "int8_ms": int8_ms, "chosen_ms": chosen_ms}


def _mosaic(x: np.ndarray) -> np.ndarray:
    """The 1×C×(spatial) input `x` repeated twice along every spatial axis: a larger input of the same content."""
    return np.tile(x, (1, 1, *(2,) * (x.ndim - 2)))


