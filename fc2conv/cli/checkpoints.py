"""The commands on saved checkpoints, which need PyTorch (imported inside them): inspect, convert, verify."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer

from ..errors import ConversionError, InputError
from ..shapes import times
from .app import (
    CHECKPOINT,
    EXIT_FAILED,
    FORCE,
    JSON,
    QUIET,
    TRUST_PICKLE,
    Output,
    app,
    check_outputs,
    parse_floats,
    usage_errors,
)
from .originals import blame_for, named_by, original
from .recipe_flags import RecipeFlags, takes_recipe_flags

__all__ = ["convert", "inspect", "verify"]


def _describe_model(model, recipe, checkpoint: Path) -> str:
    count = sum(p.numel() for p in model.parameters())
    shape = times(recipe.input_shape)
    return f"{recipe.source} ({count:,} parameters) from {checkpoint}, input {shape}, mode {recipe.mode}"


def _describe_geometry(converted) -> tuple[str, dict | None]:
    from ..conversion.geometry import geometry
    from ..shapes import sizes_taken, times

    if converted.fc2conv.mode in ("global", "pool"):
        return f"output: one score vector per input at every input size (mode {converted.fc2conv.mode})", None
    try:
        geo = geometry(converted)
    except ConversionError as e:  # the model is converted; only its cells cannot be placed
        return (f"output: a map of score vectors with no geometry, so ONNX export, run and scan refuse it: {e}",
                None)
    text = f"output: a map of score vectors, one per {times(geo.window)} window every {times(geo.stride)} pixels"
    if geo.sizes is not None:
        text += f", at the input sizes it takes only: {sizes_taken(geo.sizes, geo.window)}"
    if geo.exact is False:
        text += f" (not exact windows: {geo.context})"
    elif geo.exact is None:
        text += f" (exact windows not proven: {geo.context})"
    elif geo.receptive_field is not None and any(map(any, geo.receptive_field)):
        margins = [f"{b} pixels before and {a} after" for b, a in geo.receptive_field]
        text += ("; each cell also sees " + (f"{margins[0]} its window" if len(set(margins)) == 1 else
                                             "; ".join(f"{m} along axis {k}" for k, m in enumerate(margins))))
    return text, geo.to_dict()


def _onnx_metadata(checkpoint: Path, recipe, labels: str | None, mean: str | None, std: str | None) -> dict:
    """Labels and input normalisation for the ONNX metadata: the flags, else what the checkpoint carries: a
    .safetensors file under the same `fc2conv.*` keys, a save_pretrained directory in its config.json (id2label) and
    preprocessor_config.json (image_mean, image_std), else what a torchvision architecture's weights enum says
    offline (its categories, when the classes are as many, and its transforms' mean and std) (the normalisation as a
    pair: --mean or --std replaces both). `sources` says where each came from, for the output."""
    from ..metadata import decode_hints
    from ..storage import huggingface
    from ..storage.architectures import weights_hints
    from ..storage.checkpoint import read_metadata

    if recipe.hf_config is not None:
        carried, origin = huggingface.hints(checkpoint, recipe.hf_config), f"{checkpoint}"
    elif checkpoint.suffix == ".safetensors":
        carried = decode_hints(read_metadata(checkpoint), source=str(checkpoint), channels=recipe.input_shape[0])
        origin = f"{checkpoint}"
    else:
        carried, origin = {}, ""
    known = weights_hints(recipe.arch, recipe.num_classes)
    given = _parse_labels(labels)
    chosen: dict = {"labels": given, "sources": {}}
    if given is not None:
        chosen["sources"]["labels"] = "--labels"
    else:
        chosen["labels"], chosen["sources"]["labels"] = _first(("labels", carried, origin), ("labels", known,
                                                                                               known.get("source")))
    if mean is None and std is None:
        pair = ("mean", carried, origin) if carried.get("mean") is not None else ("mean", known, known.get("source"))
        chosen.update(mean=pair[1].get("mean"), std=pair[1].get("std"))
        chosen["sources"]["normalisation"] = pair[2] if pair[1].get("mean") is not None else None
    else:
        chosen.update(mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"))
        chosen["sources"]["normalisation"] = "--mean/--std"
    return chosen


def _first(*candidates: tuple[str, dict, str | None]) -> tuple:
    """(value, source) of the first candidate (key, hints, source) whose hints hold the key, else (None, None)."""
    for key, hints, source in candidates:
        if hints.get(key) is not None:
            return hints[key], source
    return None, None


def _describe_hints(options: dict) -> str:
    """Where the ONNX file's labels and normalisation came from, in a line."""
    labels, sources = options.get("labels"), options["sources"]
    said = [f"labels: {len(labels)} from {sources['labels']}" if labels else "labels: none (class indices)"]
    if options.get("mean") is not None:
        said.append(f"mean {options['mean']} and std {options['std']} from {sources['normalisation']}")
    else:
        said.append("normalisation: none (samples scaled to [0, 1] only)")
    return "ONNX metadata: " + "; ".join(said)


def _checkpoint_files(checkpoint: Path) -> list[Path]:
    """The files of a save_pretrained directory that fc2conv reads (none for a checkpoint file)."""
    from ..storage import huggingface

    return huggingface.input_files(checkpoint) if huggingface.is_pretrained_dir(checkpoint) else []


def _inputs(checkpoint: Path, model_def: str | None, labels: str | None) -> dict[str, Path | None]:
    """The files `convert` reads, by flag: the checkpoint (the files fc2conv reads of a save_pretrained directory,
    which may hold outputs beside them), the --model-def file, the --labels file."""
    files = _checkpoint_files(checkpoint)
    return {**({f"CHECKPOINT's {path.name}": path for path in files} if files else {"CHECKPOINT": checkpoint}),
            "--model-def": Path(model_def.rpartition(":")[0]) if model_def and ":" in model_def else None,
            "--labels": _labels_file(labels)}


def _parse_labels(value: str | None) -> list[str] | None:
    """A text file with one label per line, or a comma-separated list."""
    if value is None:
        return None
    path = _labels_file(value)
    labels = path.read_text().splitlines() if path is not None else value.split(",")
    return [label.strip() for label in labels if label.strip()]


def _labels_file(value: str | None) -> Path | None:
    """The file --labels names, or None when it is a list (a thousand names are no file name: the OS says so)."""
    if value is None:
        return None
    try:
        return Path(value) if Path(value).is_file() else None
    except OSError:  # a name too long for the file system
        return None


@app.command(epilog="Example: fc2conv inspect resnet18.pth --arch resnet18")
@takes_recipe_flags
def inspect(
    flags: RecipeFlags,
    trust_pickle: bool = TRUST_PICKLE,
    quiet: bool = QUIET,
    as_json: bool = JSON,
) -> None:
    """Print the conversion plan: every Linear and pool, the rule applied, kernel, channels, and why."""
    from ..conversion.density import allowed_densities

    out = Output(quiet=quiet, as_json=as_json)
    with usage_errors(), out.steps(3) as step:
        recipe = flags.recipe()
        blame = blame_for(recipe, flags.checkpoint, flags.input_shape)
        model = original(recipe, flags.checkpoint, trust_pickle, step, blame)
        step("converting")
        with named_by(blame, model):
            converted = recipe.convert(model)
        geometry_text, geometry = _describe_geometry(converted)
        densities = allowed_densities(converted) if recipe.mode == "dense" and recipe.density == 1 else None
    out.say(_describe_model(model, recipe, flags.checkpoint))
    out.say(str(converted.fc2conv.plan))
    out.say(geometry_text)
    if densities is not None:
        out.say(f"--density allows {', '.join(map(str, densities))} (a cell every stride/r pixels)" if densities
                else "--density allows none: the stride is 1, or fc2conv cannot follow the network's grid")
    out.result({"recipe": asdict(recipe), "plan": [asdict(d) for d in converted.fc2conv.plan],
                "notes": converted.fc2conv.plan.notes, "geometry": geometry, "densities": densities})


@app.command(epilog=(
    "Examples:\n\n"
    "  fc2conv convert resnet18.pth --arch resnet18 -o out/resnet18.pt2 -o out/resnet18.safetensors\n\n"
    "  fc2conv convert digits.safetensors --model-def models/digits_cnn.py:DigitsCNN --input-shape 1,32,32 "
    "-o out/digits.pt2 --onnx out/digits.onnx --labels 0,1,2,3,4,5,6,7,8,9,background\n\n"
    "  fc2conv convert my-finetuned-resnet/ -o out/resnet.safetensors --onnx out/resnet.onnx   "
    "(a save_pretrained directory: labels and normalisation from its config)"
))
@takes_recipe_flags
def convert(
    flags: RecipeFlags,
    output: list[Path] = typer.Option(
        [], "--output", "-o", metavar="OUT",
        help="OUT.pt2 (torch.export, dynamic N/H/W) or OUT.safetensors / OUT.pt (weights + recipe); repeatable."),
    onnx: Path | None = typer.Option(None, "--onnx", metavar="OUT.onnx", help="Also export ONNX (dynamic N/H/W)."),
    labels: str | None = typer.Option(None, "--labels",
                                      help="Class names for the ONNX metadata, in class-index order: a,b,c, or a text "
                                           "file with one name per line (UTF-8; blank lines skipped) [default: what "
                                           "the checkpoint carries, or torchvision's names for its weights]."),
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
    out = Output(quiet=quiet, as_json=as_json)
    with usage_errors():
        recipe = flags.recipe()
        targets = [*output, *([onnx] if onnx else [])]
        if not targets:
            raise InputError("give at least one output: -o OUT.pt2, -o OUT.safetensors or --onnx OUT.onnx")
        if onnx is not None and onnx.suffix != ".onnx":
            raise InputError(f"--onnx {onnx}: name the file .onnx")
        from ..storage.artifact import EXPORT_SUFFIX, STATE_SUFFIXES

        for path in output:
            if path.suffix not in (EXPORT_SUFFIX, *STATE_SUFFIXES):
                raise InputError(f"-o {path}: unknown output format; name it {EXPORT_SUFFIX} (torch.export), "
                                 f"{', '.join(STATE_SUFFIXES)} (weights + recipe), or use --onnx")
        named = {("-o" if len(output) == 1 else f"-o #{k + 1}"): path for k, path in enumerate(output)}
        check_outputs({**named, **({"--onnx": onnx} if onnx else {})}, force,
                      inputs=_inputs(flags.checkpoint, flags.model_def, labels))
        with out.steps(3 + (not no_verify) + len(targets)) as step:
            blame = blame_for(recipe, flags.checkpoint, flags.input_shape)
            model = original(recipe, flags.checkpoint, trust_pickle, step, blame)
            # The checkpoint was read, so it is sound.
            onnx_options = _onnx_metadata(flags.checkpoint, recipe, labels, mean, std)
            step("converting")
            with named_by(blame, model):
                converted = recipe.convert(model)
            report = None
            if not no_verify:
                step("verifying")
                from ..conversion.verification import verify

                with named_by(blame, model):
                    report = verify(model, converted)
            if report is None or report.ok:
                written = _write(converted, recipe, output, onnx, onnx_options, force, step)
        geometry_text, geometry = _describe_geometry(converted)
    ok = report is None or report.ok
    out.say(_describe_model(model, recipe, flags.checkpoint))
    out.say(str(converted.fc2conv.plan))
    out.say(geometry_text)
    out.say(str(report) if report is not None else "verification skipped (--no-verify)")
    if ok:
        if onnx is not None:
            out.say(_describe_hints(onnx_options))
        for path in written:
            out.say(f"wrote {path}")
    else:
        typer.echo("error: verification failed; nothing was written", err=True)
    out.result({"ok": ok, "recipe": asdict(recipe), "plan": [asdict(d) for d in converted.fc2conv.plan],
                "geometry": geometry, "verification": report.to_dict() if report is not None else None,
                "outputs": [str(p) for p in written] if ok else [],
                "onnx_metadata_from": onnx_options["sources"] if onnx is not None else None})
    if not ok:
        raise typer.Exit(EXIT_FAILED)


def _write(converted, recipe, outputs, onnx, onnx_options, force, step) -> list[Path]:
    """Write every output or none: they are staged, and renamed into place only once all are written."""
    from ..runtime.files.atomic import staged_outputs
    from ..storage.artifact import save

    targets = [*outputs, *([onnx] if onnx is not None else [])]
    with staged_outputs(targets, force=force) as staged:
        for path, stage in zip(outputs, staged[: len(outputs)], strict=True):
            step(f"writing {path.name}")
            save(converted, stage, recipe=recipe)
        if onnx is not None:
            step(f"exporting {onnx.name}")
            from ..onnx.export import export_onnx

            export_onnx(converted, staged[-1], **{k: v for k, v in onnx_options.items() if k != "sources"})
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
    out = Output(quiet=quiet, as_json=as_json)
    with usage_errors(), out.steps(6) as step:
        from ..conversion.verification import larger_size
        from ..conversion.verification import verify as check
        from ..storage.artifact import ExportedModule, load, read_recipe
        from ..storage.recipe import Recipe

        step(f"reading {artifact.name}")
        recipe = read_recipe(artifact)
        if recipe.model_def is not None:
            if model_def is None:
                raise InputError(
                    f"{artifact} was converted from the model definition {recipe.model_def}; running it executes "
                    f"that file's code, so pass it explicitly: --model-def {recipe.model_def}")
            recipe = Recipe(**{**asdict(recipe), "model_def": model_def})
        blame = blame_for(recipe, checkpoint, None, artifact=artifact)
        model = original(recipe, checkpoint, trust_pickle, step, blame)
        step("converting the original")
        with named_by(blame, model):
            reference = recipe.convert(model)
        step(f"loading {artifact.name}")
        converted = load(artifact, model_def=model_def, trust_pickle=trust_pickle)
        if isinstance(converted, ExportedModule):  # a program knows no geometry: take the reference's
            converted.fc2conv = reference.fc2conv
        sizes = [larger_size(reference, recipe.input_shape)]
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
