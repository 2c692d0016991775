"""The `quantize` command: an exported float32 model as int8, calibrated on images, with its drift measured (no
torch; `fc2conv.runtime.quantization`)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..shapes import times
from .app import EXIT_FAILED, FORCE, JSON, QUIET, Output, app, check_outputs, usage_errors
from .keywords import QUANTIZE, flags_named

__all__ = ["quantize"]


@app.command(epilog=(
    "Examples:\n\n"
    "  fc2conv quantize out/digits.onnx --calibration calibration/ -o out/digits_int8.onnx\n\n"
    "  fc2conv run out/digits_int8.onnx canvas.png --backend openvino"
))
def quantize(
    model: Path = typer.Argument(..., help="A float32 ONNX model written by fc2conv (export or convert --onnx).",
                                 show_default=False),
    calibration: Path = typer.Option(..., "--calibration", metavar="DATA", show_default=False,
                                     help="A directory of images, one image, or a .npy batch (N×C×H×W), read as "
                                          "`fc2conv run` reads them, at any sizes; at most 300 are used, evenly "
                                          "spaced by name, and every fourth is held out to measure the drift."),
    output: Path = typer.Option(..., "--output", "-o", metavar="OUT.onnx", show_default=False,
                                help="The int8 model to write."),
    method: str = typer.Option("minmax", "--method", help="Calibration: minmax, entropy or percentile."),
    float_layers: str = typer.Option("auto", "--float-layers",
                                     help="Layers kept in float: auto (the fewest that meet --min-agreement, most "
                                          "sensitive first), none, first, last or first+last."),
    min_agreement: float = typer.Option(0.99, "--min-agreement", metavar="SHARE",
                                        help="The budget: the share of held-out cells whose best class must be "
                                             "float32's, in (0, 1]; below it nothing is written (exit 1)."),
    max_pixels: int | None = typer.Option(None, "--max-pixels", min=1, show_default=False,
                                          help="Refuse larger calibration images (default: 2^25 pixels)."),
    force: bool = FORCE,
    quiet: bool = QUIET,
    as_json: bool = JSON,
) -> None:
    """Quantize a converted ONNX model to int8 (QDQ, per-channel weights), keeping its dynamic sizes and metadata, and
    measure how far its scores drift from float32 on held-out images."""
    out = Output(quiet=quiet, as_json=as_json)
    with usage_errors():
        # A calibration folder may hold the output beside the images: only a calibration file is one to keep apart.
        check_outputs({"-o": output}, force, inputs={"MODEL": model,
                                                     "--calibration": calibration if calibration.is_file() else None})
        from ..runtime.calibration import MAX_INPUTS
        from ..runtime.cpu import detect
        from ..runtime.images import MAX_PIXELS
        from ..runtime.quantization import BudgetError
        from ..runtime.quantization import quantize as quantize_model

        cpu = detect()
        out.say(f"weights in {8 if cpu.exact_int8_sums else 7} bits: this CPU ({cpu.kind}) sums int8 products "
                + ("exactly (VNNI or AMX)" if cpu.exact_int8_sums else "in 16 bits in onnxruntime, which 8 bits "
                   "could saturate"))
        try:
            with flags_named(QUANTIZE):
                done = quantize_model(model, output, calibration, method=method, float_layers=float_layers,
                                      min_agreement=min_agreement, force=force, max_pixels=max_pixels or MAX_PIXELS)
        except BudgetError as e:  # a result that fails its check, as a failed verification: exit 1
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(EXIT_FAILED) from None
    summary = done.calibration
    picked = (f" of {summary['found']:,} found (at most {MAX_INPUTS} used, evenly spaced in name order)"
              if summary["found"] > summary["images"] + summary["held_out"] else "")
    out.say(f"calibrated on {summary['images']} image(s){picked} ({summary['method']}), sizes "
            f"{', '.join(times(s) for s in summary['sizes'])}; drift measured on "
            + (f"{summary['held_out']} held-out image(s)" if summary["held_out"] else "the calibration image itself "
               "(one image: none to hold out)")
            + (f" and {summary['mosaics']} 2×2 mosaic(s) of them (larger inputs)" if summary.get("mosaics") else ""))
    for attempt in done.tried:
        out.say(f"  tried {_layers(attempt['float_layers'])} in float: argmax agreement "
                f"{attempt['drift']['argmax_agreement']:.3%}, max |Δprobability| "
                f"{attempt['drift']['max_abs_probability']:.4f}")
    out.say(f"drift from float32: {done.drift} (budget: {done.min_agreement:.2%} agreement)")
    out.say(f"kept in float: {_layers(done.float_layers, 8) if done.float_layers else 'nothing (every layer is int8)'}"
            + (" (all of them in --json and the file's fc2conv.float_layers)" if len(done.float_layers) > 8 else ""))
    if done.cost:
        cost = done.cost
        out.say(f"  on a held-out image it runs in {cost['chosen_ms']:.1f} ms, against {cost['int8_ms']:.1f} ms with "
                f"every layer in int8 and {cost['fp32_ms']:.1f} ms in float32"
                + ("" if cost["chosen_ms"] < cost["fp32_ms"] else ": no faster than float32, which is exact"))
    out.say(f"wrote {done.path} (int8, not exact: its scores are approximate, by the drift above)")
    out.result({"model": str(model), **done.to_dict()})


def _layers(nodes: list[str], shown: int = 3) -> str:
    """`nodes` kept in float, for a line of text: none, or how many and the first `shown`."""
    if not nodes:
        return "no layer"
    shown = ", ".join(nodes[:shown]) + (", …" if len(nodes) > shown else "")
    return f"{len(nodes)} layer{'s' if len(nodes) > 1 else ''} ({shown})"


@app.command(epilog="Example: fc2conv doctor --json")
def doctor(as_json: bool = JSON) -> None:
    """Say what this CPU will do with each precision before anything runs: its units, the backends installed, and for
    each path what it runs as and the speed-up measured on a CPU of its class (no torch needed)."""
    out = Output(quiet=False, as_json=as_json)
    with usage_errors():
        from ..runtime.doctor import report

        found = report()
    cpu = found["cpu"]
    out.say(f"CPU: {cpu['name'] or 'unknown'}, class {cpu['class']} (from {cpu['source']})")
    out.say("  " + "   ".join(f"{unit} {'yes' if present else 'no'}" for unit, present in cpu["units"].items()))
    out.say("backends: " + ", ".join(f"{name} {version}" if version else
                                     f"{name} not installed (pip install 'fc2conv[{name}]')"
                                     for name, version in found["backends"].items()))
    out.say(f"{'path':<24} {'runs as':<8} {'speed-up':>8}  notes")
    for path in found["paths"]:
        what = f"{path['backend']} {path['precision']}" + (" file" if path["precision"] == "int8" else "")
        speedup = f"{path['speedup']:.1f}×" if path["speedup"] else "?"
        notes = "; ".join(filter(None, ["exact" if path["exact"] and path["backend"] == "onnxruntime" else "",
                                        path["why"], "" if path["installed"] else "not installed"]))
        out.say(f"{what:<24} {path['runs']:<8} {speedup:>8}  {notes}".rstrip())
    out.say("speed-up: dense ResNet50 at 896², 2 threads, over onnxruntime fp32, measured on "
            + (found["measured_on"] or f"no CPU of class {cpu['class']} yet (? above): scripts/bench.py --precision "
               "measures this one"))
    bits = found["quantize"]["weight_bits"]
    out.say(f"fc2conv quantize here: weights in {bits} bits"
            + (" (int8 sums are exact)" if bits == 8 else " (int8 sums are 16-bit: 8 bits could saturate them)"))
    out.result(found)
