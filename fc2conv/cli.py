"""The `fc2conv` command: inspect, convert and verify saved checkpoints, and run converted ONNX models.

Exit codes: 0 success, 1 verification failed (nothing is written), 2 bad usage or input (the message on
stderr names the file or flag at fault). Outputs are written atomically and an existing file is replaced
only with --force. Checkpoints are read without unpickling code unless --trust-pickle is given;
--model-def FILE.py:FACTORY imports and runs that Python file, which is the user's explicit choice.
torch is imported inside the commands that need it, so `fc2conv run` works where only onnxruntime is installed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import typer

from .errors import ConversionError
from .files import refuse_existing

__all__ = ["app", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

app = typer.Typer(
    name="fc2conv",
    help="Turn the Linear heads of PyTorch CNN classifiers into convolutions, prove it, and run the result.",
    epilog=(
        "Examples:\n\n"
        "  fc2conv inspect resnet18.pth --arch resnet18\n\n"
        "  fc2conv convert resnet18.pth --arch resnet18 -o out/resnet18.pt2 --onnx out/resnet18.onnx\n\n"
        "  fc2conv verify resnet18.pth out/resnet18.safetensors\n\n"
        "  fc2conv run out/resnet18.onnx photo.jpg --heatmap out/heat.png\n\n"
        "Exit codes: 0 ok, 1 verification failed, 2 bad usage or input."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Options shared by the commands that build the original model.
CHECKPOINT = typer.Argument(..., help="Weights: a state dict or training checkpoint (.pt/.pth/.bin) or .safetensors.",
                            show_default=False)
ARCH = typer.Option(None, "--arch", help="A torchvision classifier name (resnet18, r3d_18) or timm:NAME.")
MODEL_DEF = typer.Option(None, "--model-def", metavar="FILE.py:FACTORY",
                         help="Import FILE.py and call FACTORY() to build the model (runs that file's code).")
NUM_CLASSES = typer.Option(None, "--num-classes", min=1, help="Classes of a resized head (passed to the factory).")
INPUT_SHAPE = typer.Option(None, "--input-shape", metavar="C,H,W",
                           help="Reference input without batch: C,H,W (image), C,L (signal), C,D,H,W (volume, "
                                "video) or D (MLP) (default: the arch's crop, else 3,224,224).")
MODEL_ARG = typer.Option([], "--model-arg", metavar="ARG",
                         help="An argument for the --model-def factory, repeatable: VALUE (in order), NAME=VALUE, "
                              "or a JSON object of them; values are JSON (18, 0.5, true) or text.")
MODE = typer.Option("dense", "--mode", help="dense (map of windows), global (same function), cam, or pool (the "
                                             "dense map reduced: one prediction from every window).")
DENSITY = typer.Option(1, "--density", min=1, help="dense mode: r times more cells per axis (stride S/r), by filter "
                                                   "rarefaction; r a product of the network's last strides.")
REDUCE = typer.Option("avg", "--reduce", help="pool mode: avg, max or avgmax (their mean) over the dense map.")
CHANNELS_LAST = typer.Option(False, "--channels-last-linears", help="Also convert Linears on NHWC maps (ConvNeXt).")
TRUST_PICKLE = typer.Option(False, "--trust-pickle",
                            help="Fully unpickle the checkpoint (and a .pt2 artifact); it can run code: only for "
                                 "files you trust.")
QUIET = typer.Option(False, "--quiet", "-q", help="Print nothing but errors.")
JSON = typer.Option(False, "--json", help="Print one machine-readable JSON object on stdout.")
FORCE = typer.Option(False, "--force", help="Replace existing output files.")


class _Output:
    """Where a command's text goes: human text, JSON on stdout, or nothing (--quiet); errors always on stderr."""

    def __init__(self, *, quiet: bool, as_json: bool):
        self.quiet, self.as_json = quiet, as_json

    def say(self, text: str = "") -> None:
        if not (self.quiet or self.as_json):
            typer.echo(text)

    def result(self, data: dict) -> None:
        if self.as_json and not self.quiet:
            typer.echo(json.dumps(data, indent=2, default=str))

    @contextmanager
    def steps(self, total: int) -> Iterator:
        """A progress bar on stderr over the named steps of a long command."""
        from tqdm import tqdm

        # disable=None: no bar when stderr is not a terminal (logs, pipes, tests).
        with tqdm(total=total, file=sys.stderr, disable=True if self.quiet else None, leave=False,
                  bar_format="{desc:<34} {bar:20} {n_fmt}/{total_fmt} [{elapsed}]") as bar:

            started = []

            def step(description: str) -> None:
                if started:
                    bar.update(1)
                started.append(description)
                bar.set_description_str(description)

            yield step
            bar.update(total - len(started) + 1)


@contextmanager
def _usage_errors() -> Iterator[None]:
    """ConversionError and file errors → message on stderr, exit 2."""
    try:
        yield
    except (ConversionError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


def _recipe(arch, model_def, model_arg, num_classes, input_shape, mode, channels_last_linears, density, reduce):
    from .recipe import Recipe, default_input_shape, parse_input_shape

    if arch is None and model_def is None:
        raise ConversionError("say which architecture the checkpoint is for: --arch NAME (a torchvision model, or "
                              "timm:NAME) or --model-def FILE.py:FACTORY")
    shape = parse_input_shape(input_shape) if input_shape is not None else None
    args, kwargs = _parse_model_args(model_arg)
    return Recipe(arch=arch, model_def=model_def, num_classes=num_classes,
                  input_shape=shape or default_input_shape(arch), model_args=args, model_kwargs=kwargs, mode=mode,
                  channels_last_linears=channels_last_linears, density=density, reduce=reduce)


def _parse_model_args(values: list[str]) -> tuple[list, dict]:
    """--model-arg values: a JSON object of keyword arguments, NAME=VALUE, or a positional VALUE."""
    args, kwargs = [], {}
    for value in values:
        if value.lstrip().startswith("{"):
            try:
                found = json.loads(value)
            except json.JSONDecodeError as e:
                raise ConversionError(f"--model-arg {value!r} is not a JSON object ({e})") from None
            kwargs.update(found)
        elif "=" in value and value.split("=", 1)[0].isidentifier():
            name, text = value.split("=", 1)
            kwargs[name] = _json_or_text(text)
        else:
            args.append(_json_or_text(value))
    return args, kwargs


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _original(recipe, checkpoint: Path, trust_pickle: bool, step):
    """The recipe's architecture holding the checkpoint's weights."""
    from .checkpoint import load_into, load_state_dict

    step(f"loading {checkpoint.name}")
    state_dict = load_state_dict(checkpoint, trust_pickle=trust_pickle)
    step(f"building {recipe.source}")
    model = recipe.build()
    try:
        load_into(model, state_dict, source=str(checkpoint))
    except ConversionError as e:
        classes = _head_size(model, state_dict)
        if classes is None:
            raise
        raise ConversionError(f"{e}\nHint: the file's head has {classes} outputs; "
                              f"pass --num-classes {classes}") from None
    return model


def _head_size(model, state_dict) -> int | None:
    """The file's output count when it differs from the model's only in the last layer's weight."""
    expected = model.state_dict()
    last = [k for k, v in expected.items() if k.endswith("weight") and v.dim() >= 2][-1:]
    if not last or last[0] not in state_dict or set(expected) != set(state_dict):
        return None
    found, wanted = state_dict[last[0]].shape, expected[last[0]].shape
    return int(found[0]) if found[0] != wanted[0] and found[1:] == wanted[1:] else None


def _describe_model(model, recipe, checkpoint: Path) -> str:
    count = sum(p.numel() for p in model.parameters())
    shape = "×".join(map(str, recipe.input_shape))
    return f"{recipe.source} ({count:,} parameters) from {checkpoint}, input {shape}, mode {recipe.mode}"


def _describe_geometry(converted) -> tuple[str, dict | None]:
    from .grid import geometry

    if converted.fc2conv.mode in ("global", "pool"):
        return f"output: one score vector per input at every input size (mode {converted.fc2conv.mode})", None
    geo = geometry(converted)
    times = lambda sizes: "×".join(map(str, sizes))  # noqa: E731
    text = f"output: a map of score vectors, one per {times(geo.window)} window every {times(geo.stride)} pixels"
    if geo.exact is False:
        text += f" (not exact windows: {geo.context})"
    elif geo.exact is None:
        text += f" (exact windows not proven: {geo.context})"
    elif geo.receptive_field is not None and any(map(any, geo.receptive_field)):
        margins = [f"{b} pixels before and {a} after" for b, a in geo.receptive_field]
        text += ("; each cell also sees " + (f"{margins[0]} its window" if len(set(margins)) == 1 else
                                             "; ".join(f"{m} along axis {k}" for k, m in enumerate(margins))))
    return text, geo.to_dict()


def _check_outputs(paths: list[Path], force: bool, inputs: list[Path | None] = ()) -> None:
    """Refuse outputs that would be overwritten or cannot be written, before any slow work; an output that is
    one of the command's `inputs` (the same file under any name) is refused even with --force."""
    seen = set()
    for path in paths:
        if path.resolve() in seen:
            raise ConversionError(f"{path} is given twice as an output")
        seen.add(path.resolve())
        source = next((i for i in inputs if i is not None and _same_file(path, i)), None)
        if source is not None:
            raise ConversionError(f"{path} is the input {source}; writing it would destroy that input, even with "
                                  "--force: name another output file")
        if path.is_dir():
            raise ConversionError(f"{path} is a directory; give a file name to write")
        refuse_existing(path, force=force)
        parent = path.parent
        if not parent.is_dir():
            raise ConversionError(f"cannot write {path}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConversionError(f"cannot write {path}: directory {parent} is not writable")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return a.resolve() == b.resolve()


def _parse_floats(value: str | None, flag: str) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise ConversionError(f"{flag} must be comma-separated numbers, e.g. 0.485,0.456,0.406; "
                              f"got {value!r}") from None


def _model_def_file(model_def: str | None) -> Path | None:
    return Path(model_def.rpartition(":")[0]) if model_def and ":" in model_def else None


def _labels_file(value: str | None) -> Path | None:
    return Path(value) if value is not None and Path(value).is_file() else None


def _parse_labels(value: str | None) -> list[str] | None:
    """A text file with one label per line, or a comma-separated list."""
    if value is None:
        return None
    path = Path(value)
    labels = path.read_text().splitlines() if path.is_file() else value.split(",")
    return [label.strip() for label in labels if label.strip()]


@app.command(epilog="Example: fc2conv inspect resnet18.pth --arch resnet18")
def inspect(
    checkpoint: Path = CHECKPOINT,
    arch: str | None = ARCH,
    model_def: str | None = MODEL_DEF,
    model_arg: list[str] = MODEL_ARG,
    num_classes: int | None = NUM_CLASSES,
    input_shape: str | None = INPUT_SHAPE,
    mode: str = MODE,
    density: int = DENSITY,
    reduce: str = REDUCE,
    channels_last_linears: bool = CHANNELS_LAST,
    trust_pickle: bool = TRUST_PICKLE,
    quiet: bool = QUIET,
    as_json: bool = JSON,
) -> None:
    """Print the conversion plan: every Linear and pool, the rule applied, kernel, channels, and why."""
    out = _Output(quiet=quiet, as_json=as_json)
    with _usage_errors(), out.steps(3) as step:
        recipe = _recipe(arch, model_def, model_arg, num_classes, input_shape, mode, channels_last_linears, density,
                         reduce)
        model = _original(recipe, checkpoint, trust_pickle, step)
        step("converting")
        converted = recipe.convert(model)
        geometry_text, geometry = _describe_geometry(converted)
    out.say(_describe_model(model, recipe, checkpoint))
    out.say(str(converted.fc2conv.plan))
    out.say(geometry_text)
    out.result({"recipe": asdict(recipe), "plan": [asdict(d) for d in converted.fc2conv.plan],
                "notes": converted.fc2conv.plan.notes, "geometry": geometry})


@app.command(epilog=(
    "Examples:\n\n"
    "  fc2conv convert resnet18.pth --arch resnet18 -o out/resnet18.pt2 -o out/resnet18.safetensors\n\n"
    "  fc2conv convert digits.safetensors --model-def models/digits_cnn.py:DigitsCNN --input-shape 1,32,32 "
    "-o out/digits.pt2 --onnx out/digits.onnx --labels 0,1,2,3,4,5,6,7,8,9,background"
))
def convert(
    checkpoint: Path = CHECKPOINT,
    arch: str | None = ARCH,
    model_def: str | None = MODEL_DEF,
    model_arg: list[str] = MODEL_ARG,
    num_classes: int | None = NUM_CLASSES,
    input_shape: str | None = INPUT_SHAPE,
    mode: str = MODE,
    density: int = DENSITY,
    reduce: str = REDUCE,
    channels_last_linears: bool = CHANNELS_LAST,
    output: list[Path] = typer.Option(
        [], "--output", "-o", metavar="OUT",
        help="OUT.pt2 (torch.export, dynamic N/H/W) or OUT.safetensors / OUT.pt (weights + recipe); repeatable."),
    onnx: Path | None = typer.Option(None, "--onnx", metavar="OUT.onnx", help="Also export ONNX (dynamic N/H/W)."),
    labels: str | None = typer.Option(None, "--labels", help="Class names for the ONNX metadata: a,b,c or a file."),
    mean: str | None = typer.Option(None, "--mean", help="Per-channel input mean for the ONNX metadata."),
    std: str | None = typer.Option(None, "--std", help="Per-channel input std for the ONNX metadata."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the numerical check (not recommended)."),
    force: bool = FORCE,
    trust_pickle: bool = TRUST_PICKLE,
    quiet: bool = QUIET,
    as_json: bool = JSON,
) -> None:
    """Convert a checkpoint, verify it (max error at the reference and a larger size), and write it.

    Nothing is written when verification fails (exit 1).
    """
    out = _Output(quiet=quiet, as_json=as_json)
    with _usage_errors():
        recipe = _recipe(arch, model_def, model_arg, num_classes, input_shape, mode, channels_last_linears, density,
                         reduce)
        targets = [*output, *([onnx] if onnx else [])]
        if not targets:
            raise ConversionError("give at least one output: -o OUT.pt2, -o OUT.safetensors or --onnx OUT.onnx")
        if onnx is not None and onnx.suffix != ".onnx":
            raise ConversionError(f"--onnx {onnx}: name the file .onnx")
        from .artifact import EXPORT_SUFFIX, STATE_SUFFIXES

        for path in output:
            if path.suffix not in (EXPORT_SUFFIX, *STATE_SUFFIXES):
                raise ConversionError(f"-o {path}: unknown output format; name it {EXPORT_SUFFIX} (torch.export), "
                                      f"{', '.join(STATE_SUFFIXES)} (weights + recipe), or use --onnx")
        _check_outputs(targets, force, inputs=[checkpoint, _model_def_file(model_def), _labels_file(labels)])
        onnx_options = {"labels": _parse_labels(labels), "mean": _parse_floats(mean, "--mean"),
                        "std": _parse_floats(std, "--std")}
        with out.steps(3 + (not no_verify) + len(targets)) as step:
            model = _original(recipe, checkpoint, trust_pickle, step)
            step("converting")
            converted = recipe.convert(model)
            report = None
            if not no_verify:
                step("verifying")
                from .verification import verify

                report = verify(model, converted)
            if report is None or report.ok:
                written = _write(converted, recipe, output, onnx, onnx_options, force, step)
        geometry_text, geometry = _describe_geometry(converted)
    ok = report is None or report.ok
    out.say(_describe_model(model, recipe, checkpoint))
    out.say(str(converted.fc2conv.plan))
    out.say(geometry_text)
    out.say(str(report) if report is not None else "verification skipped (--no-verify)")
    if ok:
        for path in written:
            out.say(f"wrote {path}")
    else:
        typer.echo("error: verification failed; nothing was written", err=True)
    out.result({"ok": ok, "recipe": asdict(recipe), "plan": [asdict(d) for d in converted.fc2conv.plan],
                "geometry": geometry, "verification": report.to_dict() if report is not None else None,
                "outputs": [str(p) for p in written] if ok else []})
    if not ok:
        raise typer.Exit(EXIT_FAILED)


def _write(converted, recipe, outputs, onnx, onnx_options, force, step) -> list[Path]:
    """Write every output or none: they are staged, and renamed into place only once all are written."""
    from .artifact import save
    from .files import staged_outputs

    targets = [*outputs, *([onnx] if onnx is not None else [])]
    with staged_outputs(targets, force=force) as staged:
        for path, stage in zip(outputs, staged[: len(outputs)], strict=True):
            step(f"writing {path.name}")
            save(converted, stage, recipe=recipe)
        if onnx is not None:
            step(f"exporting {onnx.name}")
            from .onnx.export import export_onnx

            export_onnx(converted, staged[-1], **onnx_options)
    return targets


@app.command(epilog="Example: fc2conv verify resnet18.pth out/resnet18.pt2")
def verify(
    checkpoint: Path = CHECKPOINT,
    artifact: Path = typer.Argument(..., help="What `fc2conv convert -o` wrote: .pt2, .safetensors or .pt.",
                                    show_default=False),
    model_def: str | None = typer.Option(
        None, "--model-def", metavar="FILE.py:FACTORY",
        help="Needed when the artifact was made with --model-def: runs that file (fc2conv never runs it on its own)."),
    trust_pickle: bool = TRUST_PICKLE,
    quiet: bool = QUIET,
    as_json: bool = JSON,
) -> None:
    """Compare an original checkpoint with a converted artifact and print the report (exit 1 if it differs).

    The architecture and options come from the recipe saved in the artifact.
    """
    out = _Output(quiet=quiet, as_json=as_json)
    with _usage_errors(), out.steps(6) as step:
        from .artifact import ExportedModule, load, read_recipe
        from .recipe import Recipe
        from .verification import _larger_size
        from .verification import verify as check

        step(f"reading {artifact.name}")
        recipe = read_recipe(artifact)
        if recipe.model_def is not None:
            if model_def is None:
                raise ConversionError(
                    f"{artifact} was converted from the model definition {recipe.model_def}; running it executes "
                    f"that file's code, so pass it explicitly: --model-def {recipe.model_def}")
            recipe = Recipe(**{**asdict(recipe), "model_def": model_def})
        model = _original(recipe, checkpoint, trust_pickle, step)
        step("converting the original")
        reference = recipe.convert(model)
        step(f"loading {artifact.name}")
        converted = load(artifact, model_def=model_def, trust_pickle=trust_pickle)
        if isinstance(converted, ExportedModule):  # a program knows no geometry: take the reference's
            converted.fc2conv = reference.fc2conv
        sizes = [_larger_size(reference, recipe.input_shape)]
        step("verifying")
        report = check(model, converted, sizes=sizes)
    out.say(_describe_model(model, recipe, checkpoint))
    out.say(f"against {artifact}")
    out.say(str(report))
    out.result({"ok": report.ok, "recipe": asdict(recipe), "verification": report.to_dict()})
    if not report.ok:
        if not as_json:
            typer.echo("error: the artifact does not match the checkpoint", err=True)
        raise typer.Exit(EXIT_FAILED)


@app.command(epilog=(
    "Examples:\n\n"
    "  fc2conv run out/digits.onnx canvas.png --topk 3\n\n"
    "  fc2conv run out/digits.onnx canvas.png --class 7 --heatmap out/sevens.png --json"
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
    force: bool = FORCE,
    quiet: bool = QUIET,
    as_json: bool = JSON,
) -> None:
    """Run a converted ONNX model over an image: where each class scores best, and a heatmap (no torch needed)."""
    out = _Output(quiet=quiet, as_json=as_json)
    with _usage_errors():
        if heatmap is not None:
            _check_outputs([heatmap], force, inputs=[model, image])
        from .images import MAX_PIXELS
        from .runtime import DenseModel
        from .runtime import heatmap as write_heatmap

        dense = DenseModel(model, mean=_parse_floats(mean, "--mean"), std=_parse_floats(std, "--std"))
        if not ({"mean", "std"} & set(dense.metadata) or quiet):
            typer.echo(f"warning: neither {model}'s metadata nor --mean/--std give an input normalisation, so inputs "
                       "go in as values in [0, 1]; right only if the model was trained on such inputs", err=True)
        result = dense.run(image, max_pixels=max_pixels or MAX_PIXELS)
        top = result.top_classes(topk)
        written = None
        if heatmap is not None:
            index = _class_index(class_, result, top)
            written = write_heatmap(image, result, index, heatmap, force=force)
    classes, *cells = result.scores.shape
    out.say(f"{model} on {image}: {classes} classes, a {'×'.join(map(str, cells))} map of windows")
    box = "(top, left, bottom, right)" if len(cells) == 2 else "(first positions, then ends)"
    out.say(f"{'rank':<5} {'class':<16} {'probability':>11}  {'cell':<10} box {box}")
    for rank, p in enumerate(top, 1):
        out.say(f"{rank:<5} {p.label:<16} {p.score:>11.4f}  {tuple(p.cell)!s:<10} {tuple(p.box)}")
    if written is not None:
        out.say(f"wrote {written}")
    out.result({"model": str(model), "image": str(image), "result": result.to_dict(),
                "top_classes": [_prediction(p) for p in top], "heatmap": str(written) if written else None})


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
            raise ConversionError(f"--class {value!r} is not a class of this model; it has {', '.join(labels)}")
        index = int(labels[value])
    if not 0 <= index < count:
        raise ConversionError(f"--class {index} is out of range: the model has classes 0..{count - 1}")
    return index


@app.command(epilog=(
    "Examples:\n\n"
    "  fc2conv scan slide.tif --model out/model.onnx --out out/slide.zarr --workers 2 --overview out/slide.png\n\n"
    "  fc2conv scan canvas.tif --model out/digits.onnx --out out/canvas.zarr --detections out/found.csv --resume"
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
                                           help="Write peaks of the chosen classes (and OUT.geojson beside it)."),
    threshold: float = typer.Option(0.5, "--threshold", help="Smallest probability of a detection."),
    iou: float = typer.Option(0.3, "--iou", help="Drop a detection whose window overlaps a better one more."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted scan of OUT, skipping done tiles."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 (exact) or float16 (half the size)."),
    approximate: bool = typer.Option(False, "--approximate",
                                     help="Scan a model whose cells see the whole input; marked approximate."),
    threads: int | None = typer.Option(None, "--threads", min=1,
                                       help="onnxruntime threads per process [default: all here, 1 per worker]."),
    max_pixels: int | None = typer.Option(None, "--max-pixels", min=1, show_default=False,
                                          help="Budget for PNG/JPEG inputs, decoded whole [default: 2^25]."),
    force: bool = FORCE,
    quiet: bool = QUIET,
    as_json: bool = JSON,
) -> None:
    """Scan an image of any size in tiles: the same dense map as one pass, in a zarr store (no torch needed)."""
    shown = _Output(quiet=quiet, as_json=as_json)
    with _usage_errors():
        extra = [p for p in (overview, detections, detections and detections.with_suffix(".geojson")) if p]
        _check_outputs(extra, force, inputs=[model, image])
        from .images import MAX_PIXELS
        from .runtime import scan as scan_image

        result = scan_image(image, model=model, out=out, tile=tile, workers=workers, scheduler=scheduler,
                            level=level, mpp=mpp, reader=reader, classes=classes and classes.split(","),
                            overview=overview, detections=detections, threshold=threshold, iou=iou, resume=resume,
                            force=force, dtype=dtype, approximate=approximate, threads=threads,
                            progress=False if quiet or as_json else None, max_pixels=max_pixels or MAX_PIXELS)
    meta = result.metadata
    classes_count, rows, cols = meta["classes"], *result.map_size
    source = meta["source"]
    shown.say(f"{image} (level {source['level']}, {result.image_size[0]}×{result.image_size[1]}) with {model}: a "
              f"{classes_count}×{rows}×{cols} map in {out}" + (" (approximate)" if meta["approximate"] else ""))
    shown.say(f"{result.tiles} tiles, {result.computed} computed ({result.tiles - result.computed} already done), "
              f"{result.megapixels:.1f} MP in {result.seconds:.1f} s, {result.megapixels_per_second:.2f} MP/s")
    if result.overview:
        shown.say(f"wrote {result.overview}")
    if result.detections:
        shown.say(f"wrote {result.found} detections to {result.detections} and {result.geojson}")
    shown.result(result.to_dict())


def main() -> None:
    """Console-script entry point. SIGTERM unwinds like Ctrl-C, so temporary and staged outputs are removed."""
    signal.signal(signal.SIGTERM, _terminated)
    app()


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    main()
