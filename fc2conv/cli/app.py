"""The `fc2conv` application: its options, where its text goes, and the checks every command shares (exit codes,
usage errors, outputs that may be written). Commands live in `checkpoints.py` and `deployed.py`."""


from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from ..errors import ConversionError
from ..storage.atomic import refuse_existing

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "Output", "app", "check_outputs", "parse_floats",
           "usage_errors"]

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
BACKEND = typer.Option("onnxruntime", "--backend",
                       help="onnxruntime, or openvino (pip install 'fc2conv[openvino]'), in every worker too.")
PRECISION = typer.Option("fp32", "--precision",
                         help="fp32 (exact); bf16 or fp16 with --backend openvino (approximate, recorded as "
                              "exact: false). An int8 file from `fc2conv quantize` runs on either backend.")


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
    """ConversionError and file errors → message on stderr, exit 2."""
    try:
        yield
    except (ConversionError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_USAGE) from None



def check_outputs(paths: list[Path], force: bool, inputs: list[Path | None] = ()) -> None:
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


def parse_floats(value: str | None, flag: str) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise ConversionError(f"{flag} must be comma-separated numbers, e.g. 0.485,0.456,0.406; "
                              f"got {value!r}") from None
