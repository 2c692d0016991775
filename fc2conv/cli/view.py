"""`fc2conv view`: a finished scan in napari, over its slide (without PyTorch; napari is the `view` extra)."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import FORCE, QUIET, Output, app, usage_errors
from .keywords import VIEW, flags_named

__all__ = ["view"]


@app.command(epilog=(
    "Examples:\n\n"
    "  fc2conv view out/slide.zarr\n\n"
    "  fc2conv view out/slide.zarr --slide /data/slide.tif --classes tumour,stroma\n\n"
    "  xvfb-run fc2conv view out/slide.zarr --region 3000,3500,3600,4300 --screenshot out/view.png"
))
def view(
    store: Path = typer.Argument(..., metavar="OUT.zarr", show_default=False,
                                 help="The store of a finished `fc2conv scan`."),
    slide: Path | None = typer.Option(None, "--slide", metavar="IMG",
                                      help="The scanned slide [default: the file the scan read, if it is there]."),
    classes: str | None = typer.Option(None, "--classes", metavar="A,B,...",
                                       help="Labels or indices to show as heatmaps, at most 32 [default: the "
                                            "classes that occur, at most 10: those with the most detections, else "
                                            "the most probable over the most cells; background left out]."),
    detections: Path | None = typer.Option(None, "--detections", metavar="FOUND.geojson",
                                           help="Detections to draw, GeoJSON or CSV of `fc2conv scan` [default: the "
                                                "GeoJSON the scan wrote, if it is there]."),
    region: str | None = typer.Option(None, "--region", metavar="TOP,LEFT,BOTTOM,RIGHT",
                                      help="Frame this box of level-0 pixels [default: everything]."),
    screenshot: Path | None = typer.Option(None, "--screenshot", metavar="OUT.png",
                                           help="Save the canvas to a PNG and exit, without a window (needs a "
                                                "display: xvfb-run on a headless machine)."),
    size: str = typer.Option("800,1200", "--size", metavar="H,W", help="The canvas size of --screenshot, in pixels."),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Show a scan in napari: the slide at every level, each class's probabilities as a heatmap, the detections."""
    out = Output(quiet=quiet, as_json=False)
    with usage_errors():
        box = _numbers(region, "--region", 4) if region else None
        canvas = _numbers(size, "--size", 2)
        from ..runtime.viewer import (
            show,  # checks the keywords, the store, the slide, the detections and the screenshot's path first
        )

        chosen = None if classes is None else classes.split(",")
        with flags_named(VIEW):
            written = show(store, slide=slide, classes=chosen, detections=detections, screenshot=screenshot,
                           region=box, size=canvas, force=force, say=None if quiet else _note)
    if written is not None:
        out.say(f"wrote {written}")


def _note(text: str) -> None:
    typer.echo(f"note: {text}", err=True)


def _numbers(text: str, flag: str, count: int) -> tuple[int, ...]:
    from ..errors import InputError

    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:  # the ranges are checked by fc2conv.viewer, for the Python API too
        raise InputError(f"{flag} takes {count} comma-separated whole numbers; got {text!r}")
    return values
