"""The `fc2conv` application: its options, where its text goes, and the checks every command shares (exit codes,
usage errors, outputs that may be written). Commands live in `checkpoints.py` and `deployed.py`."""


from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from ..errors import Fc2convError, InputError
from ..runtime.files.atomic import refuse_existing
from ..runtime.files.paths import check_apart

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "Output", "app", "check_outputs", "parse_floats",
           "usage_errors"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_NONE: Mapping[str, Path | None] = MappingProxyType({})
# Characters of one error message at most: a refusal stays a few lines, whatever the arguments were (a shell glob can
# pass 100,000 paths, and click would list them all). fc2conv's own messages are one line; click's are shown under
# two lines of usage, so they get one of their own.
MAX_MESSAGE, MAX_USAGE_MESSAGE = 700, 160


def shortened(message: str, limit: int = MAX_MESSAGE) -> str:
    """`message` cut to about `limit` characters in its middle, saying how much was left out: its start says what
    is wrong and its end, often, what to do."""
    if len(message) <= limit:
        return message
    head, tail = limit * 2 // 3, limit // 3
    return f"{message[:head]} … ({len(message) - head - tail:,} characters) … {message[-tail:]}"


# click's exceptions: typer 0.29 carries its own copy of click, older typers use click itself.
_USAGE_ERROR = next(kind for kind in typer.BadParameter.__mro__ if kind.__name__ == "UsageError")
_CLICK_ERROR = next(kind for kind in typer.BadParameter.__mro__ if kind.__name__ == "ClickException")


class _ShortUsage:
    """click's usage errors (extra arguments, bad values) cut short: they quote what was given."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _USAGE_ERROR as e:
            e.message = shortened(e.message, MAX_USAGE_MESSAGE)
            raise


class _Command(_ShortUsage, TyperCommand):
    pass


class _Group(_ShortUsage, TyperGroup):
    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """As click's `main`, but a usage error is shown in click's plain form, three lines and the message,
        rather than typer's box, which takes six lines before the message."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _CLICK_ERROR as e:
            e.show()
            sys.exit(e.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


class _Typer(typer.Typer):
    """Commands registered with `@app.command(...)` refuse bad usage in a few lines (`_ShortUsage`)."""

    def command(self, *args, cls: type[TyperCommand] | None = None, **kwargs):
        return super().command(*args, cls=cls or _Command, **kwargs)


app = _Typer(
    cls=_Group,
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
    rich_markup_mode=None,  # help is plain text: rich markup would eat "[default: …]" and "fc2conv[openvino]"
)

# Options shared by the commands that build the original model.
CHECKPOINT = typer.Argument(..., help="Weights: a state dict or training checkpoint (.pt/.pth/.bin) or .safetensors, "
                                       "or a Hugging Face save_pretrained directory (config.json + model.safetensors; "
                                       "no --arch needed).", show_default=False)
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
# Options of the commands that run an exported model (run, scan): where and at which precision
# (fc2conv.runtime.backends).
BACKEND = typer.Option("onnxruntime", "--backend", help="onnxruntime, or openvino (pip install 'fc2conv[openvino]').")
SCAN_BACKEND = typer.Option("onnxruntime", "--backend",
                            help="onnxruntime, or openvino (pip install 'fc2conv[openvino]'), the same in every "
                                 "worker.")
PRECISION = typer.Option("fp32", "--precision",
                         help="fp32 (exact); bf16 or fp16 with --backend openvino (approximate, recorded as "
                              "exact: false); auto: the fastest path on this CPU whose best classes agree with "
                              "float32's on 99% of cells, timed in a few seconds and cached (with --backend openvino, "
                              "among OpenVINO's). An int8 file from `fc2conv quantize` runs on either backend.")


class Output:
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
def usage_errors() -> Iterator[None]:
    """fc2conv's errors (`Fc2convError`: conversion, input, scan, backend) and file errors → message on stderr,
    exit 2."""
    try:
        yield
    except (Fc2convError, OSError) as e:
        typer.echo(f"error: {shortened(str(e))}", err=True)
        raise typer.Exit(EXIT_USAGE) from None



def check_outputs(outputs: Mapping[str, Path], force: bool, inputs: Mapping[str, Path | None] = _NONE) -> None:
    """Refuse, before any slow work, outputs ({flag: path}) that would be overwritten (unless `force`), cannot be
    written, or are not apart from each other and from the command's `inputs` ({flag: path}; None for one not given):
    the same file under any name, one inside another (`fc2conv.runtime.files.paths`), even with `force`."""
    check_apart(dict(outputs), {flag: path for flag, path in inputs.items() if path is not None})
    for flag, path in outputs.items():
        if path.is_dir():
            raise InputError(f"{flag} {path} is a directory; give a file name to write")
        refuse_existing(path, force=force)
        parent = path.parent
        if not parent.is_dir():
            raise InputError(f"cannot write {flag} {path}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(f"cannot write {flag} {path}: directory {parent} is not writable")


def parse_floats(value: str | None, flag: str) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise InputError(f"{flag} must be comma-separated numbers, e.g. 0.485,0.456,0.406; "
                         f"got {value!r}") from None
