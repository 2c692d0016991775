"""The library's refusals name its keywords (`tile=`, `mask=PATH`, `resume=True`), since a Python caller set them;
a command shows the same refusal naming the flag that set the keyword (`--tile`, `--mask PATH`, `--resume`). One
table per command, keyword → flag, read off its typer options; `flags_named` translates what a command's library
call raises."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import Fc2convError

__all__ = ["QUANTIZE", "RECIPE", "RUN", "SCAN", "VIEW", "Flags", "as_flags", "flags_named"]


@dataclass(frozen=True)
class Flags:
    """A command's flags by the keyword each sets, and whole phrases to replace first (a keyword pair that one flag
    sets)."""

    flags: Mapping[str, str]
    phrases: tuple[tuple[str, str], ...] = ()
    _pattern: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = "|".join(sorted(self.flags, key=len, reverse=True))
        # Not inside a longer name (`retile=`), a path (`/tmp/tile=3`) or `==`. Then: `=True` (a switch), a quoted
        # value (a repr: `'dense'`), nothing, or the start of a bare value (a number or a path) to keep after a space.
        pattern = rf"(?<![\w/\\.=-])({names})=(?!=)(?:(True)\b|'([^']*)'|\"([^\"]*)\"|((?=[\w/.~\\-])))?"
        object.__setattr__(self, "_pattern", re.compile(pattern))

    def __call__(self, message: str) -> str:
        for keywords, flags in self.phrases:
            message = message.replace(keywords, flags)
        # `--force (force=True)`: a message for both kinds of caller already names the flag beside the keyword.
        message = re.sub(r"(--[\w-]+) \((\w+)=True\)",
                         lambda m: m[1] if self.flags.get(m[2]) == m[1] else m[0], message)
        return self._pattern.sub(self._flag, message)

    def _flag(self, m: re.Match) -> str:
        flag = self.flags[m[1]]
        if m[2] is not None:
            return flag
        value = m[3] if m[3] is not None else m[4]
        if value is not None:
            return f"{flag} {value}"
        return f"{flag} " if m[5] is not None else flag  # a bare value follows: keep it apart from the flag


def _dashed(*keywords: str, **renamed: str) -> dict[str, str]:
    """Each keyword's flag: `--` and the keyword with dashes for underscores, unless `renamed` says otherwise."""
    return {**{k: "--" + k.replace("_", "-") for k in keywords}, **renamed}


# Read off the typer options of `fc2conv convert`/`inspect` (cli/recipe_flags.py), run and scan (cli/deployed.py),
# quantize (cli/precision.py) and view (cli/view.py).
RECIPE = Flags(_dashed("arch", "model_def", "num_classes", "input_shape", "mode", "density", "reduce"),
               phrases=(("model_args= and model_kwargs= pass", "--model-arg passes"),
                        ("model_args= and model_kwargs= values", "--model-arg values")))
RUN = Flags(_dashed("max_pixels", "mean", "std", "backend", "precision", "force"))
SCAN = Flags(_dashed("model", "out", "tile", "workers", "scheduler", "level", "mpp", "reader", "classes", "overview",
                     "detections", "ome_tiff", "mask", "threshold", "iou", "resume", "dtype", "approximate",
                     "context", "threads", "max_pixels", "backend", "precision", "force"))
QUANTIZE = Flags(_dashed("calibration", "method", "float_layers", "min_agreement", "max_pixels", "force",
                         out="--output"))
VIEW = Flags(_dashed("slide", "classes", "detections", "region", "screenshot", "size", "force"))


def as_flags(message: str, flags: Flags) -> str:
    """`message` with the keywords of `flags` as the command's flags: `tile=` → `--tile`, `mode='dense'` →
    `--mode dense`, `mask=/a/b.json` → `--mask /a/b.json`, `resume=True` → `--resume`."""
    return flags(message)


@contextmanager
def flags_named(flags: Flags) -> Iterator[None]:
    """A refusal of the library, named by the command's flags instead of the keywords (the same class, its message
    translated)."""
    try:
        yield
    except Fc2convError as e:
        raise type(e)(as_flags(str(e), flags)) from None
