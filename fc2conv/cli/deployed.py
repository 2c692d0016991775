"""The commands on exported models, without PyTorch: run (one pass over an image, a signal or a volume) and scan
(an image of any size, tile by tile)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import InputError
from ..shapes import VECTOR_MAP, times
from .app import (
    BACKEND,
    FORCE,
    JSON,
    PRECISION,
    QUIET,
    SCAN_BACKEND,
    Output,
    app,
    check_outputs,
    parse_floats,
    usage_errors,
)
from .keywords import RUN, SCAN, as_flags, flags_named

__all__ = ["run", "scan"]


@app.command(epilog=(
    "Examples:\n\n"
    "  fc2conv run out/digits.onnx canvas.png --topk 3\n\n"
    "  fc2conv run out/digits.onnx canvas.png --class 7 --heatmap out/sevens.png --json\n\n"
    "  fc2conv run out/digits.onnx canvas.png --backend openvino --precision bf16"
))
def run(
    model: Path = typer.Argument(..., help="An ONNX model written by `fc2conv convert --onnx`.", show_default=False),
    image: Path = typer.Argument(..., help="An image file (PNG, JPEG, ...), or a .npy array (C×L signal, C×D×H×W "
                                           "volume) for a 1-D or 3-D model.", show_default=False),
    topk: int = typer.Option(5, "--topk", min=1, help="How many classes to list, ranked by their best window."),
    heatmap: Path | None = typer.Option(None, "--heatmap", metavar="OUT.png",
                                        help="Write the probability map of one class over the image."),
    class_: str | None = typer.Option(None, "--class", metavar="C",
                                      help="The heatmap's class, an index or a label [default: the top class]."),
    max_pixels: int | None = typer.Option(
        None, "--max-pixels", min=1, show_default=False,
        help="Refuse larger images before decoding them [default: 33554432, 2^25]; scan larger ones in tiles."),
    mean: str | None = typer.Option(None, "--mean", help="Per-channel input mean, instead of the model's metadata."),
    std: str | None = typer.Option(None, "--std", help="Per-channel input std, instead of the model's metadata."),
    backend: str = BACKEND,
    precision: str = PRECISION,
    force: bool = FORCE,
    quiet: bool = QUIET,
    as_json: bool = JSON,
) -> None:
    """Run a converted ONNX model over an image: where each class scores best, and a heatmap (no torch needed)."""
    out = Output(quiet=quiet, as_json=as_json)
    with usage_errors(), flags_named(RUN):
        if heatmap is not None:
            check_outputs({"--heatmap": heatmap}, force, inputs={"MODEL": model, "IMAGE": image})
        from ..runtime import DenseModel
        from ..runtime import heatmap as write_heatmap
        from ..runtime.images import MAX_PIXELS

        _say_what_runs(backend, precision, quiet)
        dense = DenseModel(model, mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"),
                           backend=backend, precision=precision)
        if dense.caution and not quiet:
            typer.echo(f"warning: {as_flags(dense.caution, RUN)}", err=True)
        read_as_image = image.suffix != ".npy"  # arrays go in as they are; image files are scaled to [0, 1]
        if read_as_image and not ({"mean", "std"} & set(dense.metadata) or quiet):
            typer.echo(f"warning: neither {model}'s metadata nor --mean/--std give an input normalisation, so inputs "
                       "go in as values in [0, 1]; right only if the model was trained on such inputs", err=True)
        result = dense.run(image, max_pixels=max_pixels or MAX_PIXELS)
        top = result.top_classes(topk)
        written = None
        if heatmap is not None:
            index = _class_index(class_, result, top)
            written = write_heatmap(image, result, index, heatmap, force=force)
    classes, *cells = result.scores.shape
    out.say(f"{model} on {image}: {classes} classes, {_what_was_scored(dense, result)}{_numerics(dense.numerics)}")
    box = "(top, left, bottom, right)" if len(cells) == 2 else "(first positions, then ends)"
    out.say(f"{'rank':<5} {'class':<16} {'probability':>11}  {'cell':<10} box {box}")
    for rank, p in enumerate(top, 1):
        out.say(f"{rank:<5} {p.label:<16} {p.score:>11.4f}  {tuple(p.cell)!s:<10} {tuple(p.box)}")
    if written is not None:
        out.say(f"wrote {written}")
    out.result({"model": str(model), "image": str(image), "result": result.to_dict(),
                "top_classes": [_prediction(p) for p in top], "heatmap": str(written) if written else None})


def _say_what_runs(backend: str, precision: str, quiet: bool) -> None:
    """One line on stderr, before the work, when this CPU runs the precision asked for as another (bf16 as fp32)."""
    from ..runtime.cpu import detect

    cpu = detect()
    runs = cpu.runs(precision) if backend == "openvino" else precision
    if runs != precision and not quiet:
        typer.echo(f"note: this CPU ({cpu.kind}) has no {precision} units: OpenVINO runs {precision} as {runs}"
                   + (", exact and no faster than fp32" if runs == "fp32" else "") + " (fc2conv doctor says more)",
                   err=True)


def _numerics(record: dict) -> str:
    """Nothing for the exact default; else the backend and the precision that ran, which are not exact."""
    if record["backend"] == "onnxruntime" and record["precision"] == "fp32" and "chosen_by" not in record:
        return ""
    asked = f", asked for {record['requested_precision']}" if "requested_precision" in record else ""
    exact = "" if record["precision"] == "fp32" else ", not exact: scores drift from float32"
    auto = ""
    if record.get("chosen_by") == "auto":
        timed = len(record.get("timings_ms", {}))
        auto = (f", chosen by --precision auto: the fastest of {timed} path{'s' if timed != 1 else ''}"
                + (" (cached)" if record.get("cached") else ""))
    return f" ({record['backend']}, {record['precision']}{asked}{exact}{auto})"


def _what_was_scored(dense, result) -> str:
    cells = times(result.scores.shape[1:])
    if not dense.takes_vectors:
        return f"a {cells} map of windows"
    return "one vector" if result.input_size == VECTOR_MAP else f"a {cells} map of vectors"


def _prediction(p) -> dict:
    return {"class_index": int(p.class_index), "label": str(p.label), "score": float(p.score),
            "cell": [int(v) for v in p.cell], "box": [int(v) for v in p.box]}


def _class_index(value: str | None, result, top) -> int:
    """--class as an index or a label; the top class when not given."""
    count = result.scores.shape[0]
    if value is None:
        return int(top[0].class_index)
    if value.lstrip("-").isdigit():
        index = int(value)
    else:
        labels = {p.label: p.class_index for p in result.top_classes(count)}
        if value not in labels:
            raise InputError(f"--class {value!r} is not a class of this model; it has {', '.join(labels)}")
        index = int(labels[value])
    if not 0 <= index < count:
        raise InputError(f"--class {index} is out of range: the model has classes 0..{count - 1}")
    return index


def _mask_shown(found: dict, given: str | None) -> str:
    """The mask as the scan's output names it: `auto` with what it found, or the file."""
    if found.get("kind", "").startswith("auto"):
        return f"{given} ({found['polarity']} foreground on a {'×'.join(map(str, found['thumbnail']))} thumbnail)"
    return str(given)


def _seam_shown(seam: dict) -> str:
    """The seams an approximate scan measured (`fc2conv.scan.seams`), and how to make them smaller."""
    if seam.get("value") is None:
        return f"seams: not measured ({seam.get('reason')})"
    rows, cols, percent = *seam["tiles"], seam["value"] * 100
    return (f"seams: stitched cells differ from one pass over a {rows}×{cols}-tile region by up to "
            f"{f'{percent:.0f}' if percent >= 10 else f'{percent:.2g}'}% of the largest score; a wider --context "
            "makes them smaller")


@app.command(epilog=(
    "Examples:\n\n"
    "  fc2conv scan slide.tif --model out/model.onnx --out out/slide.zarr --mask auto --workers 2\n\n"
    "  fc2conv scan slide.tif --model out/model.onnx --out out/slide.zarr --workers 2 --overview out/slide.png\n\n"
    "  fc2conv scan canvas.tif --model out/digits.onnx --out out/canvas.zarr --detections out/found.csv --resume\n\n"
    "  fc2conv scan slide.tif --model out/model.onnx --out out/slide.zarr --detections out/found.csv "
    "--ome-tiff out/map.ome.tif\n\n"
    "  fc2conv scan slide.tif --model out/model.onnx --out out/slide.zarr --backend openvino --precision bf16"
))
def scan(
    image: Path = typer.Argument(..., show_default=False,
                                 help="A TIFF or BigTIFF (tiled, pyramidal), a zarr array or OME-Zarr group, a "
                                      "whole-slide file OpenSlide reads, or a PNG/JPEG."),
    model: Path = typer.Option(..., "--model", metavar="MODEL.onnx", show_default=False,
                               help="An ONNX model written by `fc2conv convert --onnx` (dense mode)."),
    out: Path = typer.Option(..., "--out", metavar="OUT.zarr", show_default=False,
                             help="The zarr store for the score map (classes × rows × columns)."),
    tile: int = typer.Option(2048, "--tile", min=1, help="Input pixels per tile side, without the halo."),
    workers: int | None = typer.Option(None, "--workers", min=1,
                                       help="Start a local Dask cluster of N processes, one thread each."),
    scheduler: str | None = typer.Option(None, "--scheduler", metavar="tcp://HOST:PORT",
                                         help="Join a running Dask cluster (workers must see the same files)."),
    level: int | None = typer.Option(None, "--level", min=0, help="The pyramid level to scan [default: 0]."),
    mpp: float | None = typer.Option(None, "--mpp", help="Scan the level with this pixel size in µm (within 10%)."),
    reader: str = typer.Option("auto", "--reader", help="auto, tiff, zarr, openslide or image."),
    classes: str | None = typer.Option(None, "--classes", metavar="A,B,...",
                                       help="Labels or indices for the overview and detections [default: every "
                                            "class but background]."),
    overview: Path | None = typer.Option(None, "--overview", metavar="OUT.png",
                                         help="Write a heatmap of the chosen classes over the whole image."),
    detections: Path | None = typer.Option(None, "--detections", metavar="OUT.csv",
                                           help="Write peaks of the chosen classes (and OUT.geojson beside it, "
                                                "QuPath objects in level-0 pixels)."),
    ome_tiff: Path | None = typer.Option(None, "--ome-tiff", metavar="OUT.ome.tif",
                                         help="Write the chosen classes' probabilities as a pyramidal OME-TIFF on the "
                                              "slide's level-0 pixel grid, for QuPath."),
    mask: str | None = typer.Option(None, "--mask", metavar="auto|FILE",
                                    help="Scan only the foreground: auto (or auto-dark, auto-bright) finds it on a "
                                         "thumbnail; or a GeoJSON of regions (QuPath annotations), a binary image or "
                                         "a zarr label image. Cells outside are missing."),
    threshold: float = typer.Option(0.5, "--threshold", help="Smallest probability of a detection."),
    iou: float = typer.Option(0.3, "--iou", help="Drop a detection whose window overlaps a better one more."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted scan of OUT, skipping done tiles."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 (exact) or float16 (half the size)."),
    approximate: bool = typer.Option(False, "--approximate",
                                     help="Scan a model whose cells see the whole input; marked approximate, its "
                                          "seams measured."),
    context: int | None = typer.Option(None, "--context", min=0, metavar="PIXELS", show_default=False,
                                       help="With --approximate: widen each tile's halo of one window by this many "
                                            "pixels a side, making the seams smaller [default: 0]."),
    threads: int | None = typer.Option(None, "--threads", min=1,
                                       help="The backend's threads per process [default: all here; on workers, "
                                            "each machine's cores over its workers]."),
    max_pixels: int | None = typer.Option(None, "--max-pixels", min=1, show_default=False,
                                          help="Budget for PNG/JPEG inputs, decoded whole [default: 2^25]."),
    backend: str = SCAN_BACKEND,
    precision: str = PRECISION,
    force: bool = FORCE,
    quiet: bool = QUIET,
    as_json: bool = JSON,
) -> None:
    """Scan an image of any size in tiles: the same dense map as one pass, in a zarr store that is also an OME-Zarr
    image placed on the slide (no torch needed)."""
    shown = Output(quiet=quiet, as_json=as_json)
    from ..runtime.cpu import PrecisionWarning
    from ..runtime.scanning import SampleRangeWarning
    from ..runtime.scanning.quiet import quiet_libraries

    # The libraries' logs and warnings stay back (pages of them on failure paths): the error says what matters.
    with usage_errors(), quiet_libraries() as caught, flags_named(SCAN):
        # Every output is checked by the scan itself, against the others and the inputs, before any work.
        from ..runtime.images import MAX_PIXELS
        from ..runtime.scanning.driver import ScanOptions, scan_with

        options = ScanOptions(tile=tile, workers=workers, scheduler=scheduler, level=level, mpp=mpp, reader=reader,
                              classes=classes and classes.split(","), overview=overview, detections=detections,
                              threshold=threshold, iou=iou, resume=resume, force=force, dtype=dtype,
                              approximate=approximate, threads=threads, progress=False if quiet or as_json else None,
                              max_pixels=max_pixels or MAX_PIXELS, backend=backend, precision=precision,
                              ome_tiff=ome_tiff, mask=mask, context=context)
        _say_what_runs(options.backend, options.precision, quiet or as_json)
        result = scan_with(image, model, out, options)
    for warning in caught:
        if issubclass(warning.category, SampleRangeWarning | PrecisionWarning) and not quiet:
            typer.echo(f"warning: {as_flags(str(warning.message), SCAN)}", err=True)
    meta = result.metadata
    classes_count, rows, cols = meta["classes"], *result.map_size
    source = meta["source"]
    shown.say(f"{image} (level {source['level']}, {result.image_size[0]}×{result.image_size[1]}) with {model}: a "
              f"{classes_count}×{rows}×{cols} map in {out}" + (" (approximate)" if meta["approximate"] else "")
              + (_numerics(meta) if "backend" in meta else ""))
    before = result.tiles - result.computed - result.skipped
    if "mask" in meta:
        shown.say(f"mask {_mask_shown(meta['mask'], mask)}: {meta['mask']['cell_fraction']:.1%} of the map's cells; "
                  f"{result.skipped} of {result.tiles} tiles skipped (never read or computed)")
    if result.computed:
        shown.say(f"{result.tiles} tiles, {result.computed} computed ({before} already done), "
                  f"{result.megapixels:.1f} MP in {result.seconds:.1f} s, {result.megapixels_per_second:.2f} MP/s")
    else:  # --resume of a finished scan: no rate to give
        shown.say(f"{result.tiles} tiles, 0 computed ({before} already done): nothing was left to compute; "
                  f"{result.seconds:.1f} s in all, for the outputs")
    if result.seam is not None:
        shown.say(_seam_shown(result.seam))
    if result.overview:
        shown.say(f"wrote {result.overview}")
    if result.detections:
        shown.say(f"wrote {result.found} detections to {result.detections} and {result.geojson}")
    if result.ome_tiff:
        shown.say(f"wrote {result.ome_tiff}")
    shown.result(result.to_dict())
