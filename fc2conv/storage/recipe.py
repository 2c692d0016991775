"""How to rebuild a model: its architecture (torchvision or timm name, or a user's factory with its arguments) and
the conversion options.

    recipe = Recipe(arch="resnet18", num_classes=10, input_shape=(3, 224, 224))
    model = recipe.build()                 # the original architecture, random weights, eval mode
    dense = recipe.convert(model)          # fc2conv.convert with the recorded mode and options
    Recipe.from_json(recipe.to_json()) == recipe

A recipe holds no weights; saved artifacts store it next to the converted weights so `fc2conv.load` can
rebuild the converted network. `model_def="FILE.py:FACTORY"` imports and runs the user's own Python file:
the caller chooses to run that code, fc2conv never does it on its own. `hf_config` is a Hugging Face model's
config.json itself (a JSON object): transformers builds its own class for it, and no code from elsewhere runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..conversion.options import ConversionOptions
from ..errors import InputError
from ..metadata import MODES
from . import huggingface
from .architectures import DEFAULT_INPUT_SHAPE, build, build_from_file, default_input_shape

__all__ = ["MODES", "Recipe", "default_input_shape", "parse_input_shape"]


@dataclass(frozen=True)
class Recipe:
    """The original architecture and the options of its conversion; exactly one of `arch`, `model_def`, `hf_config`.

    `arch` is a torchvision classification model name or ``timm:NAME``; `model_def` is
    ``"path/to/file.py:factory"``, a class or function called with `model_args` (in order), `model_kwargs`, and
    ``num_classes=`` when that is given; `hf_config` is the config.json of a transformers image classifier (its
    classes included). The arguments must be JSON values: they are saved with the artifact.

    Its refusals (`InputError`) name the keywords (``density=``); the CLI names its flags instead
    (`fc2conv.cli.keywords.flags_named`).
    """

    arch: str | None = None
    model_def: str | None = None
    num_classes: int | None = None
    input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE
    model_args: tuple[Any, ...] = ()
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    mode: str = "dense"
    channels_last_linears: bool = False
    density: int = 1
    reduce: str = "avg"
    hf_config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if sum(given is not None for given in (self.arch, self.model_def, self.hf_config)) != 1:
            raise InputError("give the architecture with exactly one of arch= (a torchvision name, or timm:NAME), "
                             "model_def= (\"FILE.py:FACTORY\") or hf_config= (a transformers config.json object)")
        if self.hf_config is not None and (not isinstance(self.hf_config, dict)
                                           or not isinstance(self.hf_config.get("model_type"), str)):
            raise InputError("hf_config= must be a transformers config.json object with a \"model_type\"")
        if self.hf_config is not None and self.num_classes is not None:
            raise InputError("num_classes=: a Hugging Face model's config.json gives its classes (id2label)")
        # mode=, density= and reduce= checked once, by the options this recipe converts with
        object.__setattr__(self, "_options", ConversionOptions(self.mode, self.density, self.reduce,
                                                               self.channels_last_linears))
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or self.num_classes < 1):
            raise InputError(f"num_classes= must be a positive integer, not {self.num_classes!r}")
        if (self.model_args or self.model_kwargs) and self.model_def is None:
            raise InputError("model_args= and model_kwargs= pass arguments to a model_def= factory; arch= models "
                             "take num_classes= only")
        object.__setattr__(self, "input_shape", parse_input_shape(self.input_shape))
        object.__setattr__(self, "model_args", tuple(self.model_args))
        try:
            json.dumps([self.model_args, self.model_kwargs, self.hf_config])
        except TypeError as e:
            raise InputError(f"model_args= and model_kwargs= values must be JSON values (numbers, strings, "
                             f"lists...): {e}") from None

    @property
    def source(self) -> str:
        if self.hf_config is not None:
            return huggingface.source_of(self.hf_config)
        return self.arch if self.arch is not None else self.model_def

    def build(self):
        """The original architecture with random weights, in eval mode (torch is imported here)."""
        if self.arch is not None:
            return build(self.arch, self.num_classes).eval()
        if self.hf_config is not None:
            return huggingface.build(self.hf_config, source="the recipe's hf_config")
        return build_from_file(self.model_def, self.num_classes, self.model_args, self.model_kwargs).eval()

    def convert(self, model):
        """`fc2conv.convert(model, ...)` with this recipe's input shape, mode and options."""
        from ..conversion.rewrite import convert_with

        return convert_with(model, self.input_shape, self._options)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "the artifact") -> Recipe:
        try:
            data = json.loads(text)
            known = {f.name for f in fields(cls)}
            if not isinstance(data, dict) or not set(data) <= known:
                raise ValueError(f"unexpected fields {sorted(set(data) - known) if isinstance(data, dict) else data}")
            return cls(**data)
        except (ValueError, TypeError) as e:
            raise InputError(f"{source} has an unreadable fc2conv recipe ({e}); convert the model again") from None


def parse_input_shape(value: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """(C, H, W), (C, L), (C, D, H, W) or (D,) from ``"3,224,224"``, ``"3x224x224"`` or a sequence of positive
    integers."""
    parts = value.replace("x", ",").replace("×", ",").split(",") if isinstance(value, str) else value
    try:
        shape = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        shape = ()
    if not 1 <= len(shape) <= 4 or any(d <= 0 for d in shape) or any(isinstance(p, bool) for p in parts):
        raise InputError(
            f"input_shape= must be C,H,W (e.g. 3,224,224) for an image model, C,L (e.g. 1,8000) for a signal, "
            f"C,D,H,W (e.g. 3,16,112,112) for a volume or video clip, or D for an MLP, in positive integers and "
            f"without the batch dimension; got {value!r}"
        )
    return shape
