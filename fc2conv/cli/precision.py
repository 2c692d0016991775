"""The `quantize` command: an exported float32 model as int8, calibrated on images, with its drift measured (no
torch; `fc2conv.runtime.quantization`)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..shapes import times
from .app import FORCE, JSON, QUIET, Output, app, check_outputs, usage_errors

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
                                     help="Layers kept in float: auto (only if int8 drifts too far), none, first, "
                                          "last or first+last."),
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
        from ..runtime.images import MAX_PIXELS
        from ..runtime.quantization import quantize as quantize_model

        done = quantize_model(model, output, calibration, method=method, float_layers=float_layers, force=force,
                              max_pixels=max_pixels or MAX_PIXELS)
    summary = done.calibration
    picked = (f" of {summary['found']:,} found (at most {MAX_INPUTS} used, evenly spaced in name order)"
              if summary["found"] > summary["images"] + summary["held_out"] else "")
    out.say(f"calibrated on {summary['images']} image(s){picked} ({summary['method']}), sizes "
            f"{', '.join(times(s) for s in summary['sizes'])}; drift measured on "
            + (f"{summary['held_out']} held-out image(s)" if summary["held_out"] else "the calibration image itself "
               "(one image: none to hold out)")
            + (f" and {summary['mosaics']} 2×2 mosaic(s) of them (larger inputs)" if summary.get("mosaics") else ""))
    for attempt in done.tried:
        kept = ", ".join(attempt["nodes"]) or "none"
        out.say(f"  tried float layers {attempt['float_layers']} ({kept}): argmax agreement "
                f"{attempt['drift']['argmax_agreement']:.3%}, max |Δprobability| "
                f"{attempt['drift']['max_abs_probability']:.4f}")
    out.say(f"drift from float32: {done.drift}")
    out.say(f"kept in float: {', '.join(done.float_layers) or 'nothing (every quantizable layer is int8)'}")
    out.say(f"wrote {done.path} (int8, not exact: its scores are approximate, by the drift above)")
    out.result({"model": str(model), **done.to_dict()})
