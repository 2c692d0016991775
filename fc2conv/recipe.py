"""How to rebuild a model: its architecture (a torchvision name or a user's factory) and conversion options.

    recipe = Recipe(arch="resnet18", num_classes=10, input_shape=(3, 224, 224))
    model = recipe.build()                 # the original architecture, random weights, eval mode
    dense = recipe.convert(model)          # fc2conv.convert with the recorded mode and options
    Recipe.from_json(recipe.to_json()) == recipe

A recipe holds no weights; saved artifacts store it next to the converted weights so `fc2conv.load` can
rebuild the converted network. `model_def="FILE.py:FACTORY"` imports and runs the user's own Python file:
the caller chooses to run that code, fc2conv never does it on its own.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .errors import ConversionError

__all__ = ["MODES", "Recipe", "default_input_shape", "parse_input_shape"]

MODES = ("dense", "global", "cam")
DEFAULT_INPUT_SHAPE = (3, 224, 224)


@dataclass(frozen=True)
class Recipe:
    """The original architecture and the options of its conversion; exactly one of `arch`, `model_def`.

    `arch` is a torchvision classification model name; `model_def` is ``"path/to/file.py:factory"``, a class
    or function called with ``num_classes=`` when that is given, without arguments otherwise.
    """

    arch: str | None = None
    model_def: str | None = None
    num_classes: int | None = None
    input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE
    mode: str = "dense"
    channels_last_linears: bool = False

    def __post_init__(self) -> None:
        if (self.arch is None) == (self.model_def is None):
            raise ConversionError("give the architecture with exactly one of --arch NAME or "
                                  "--model-def FILE.py:FACTORY")
        if self.mode not in MODES:
            raise ConversionError(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or self.num_classes < 1):
            raise ConversionError(f"--num-classes must be a positive integer, not {self.num_classes!r}")
        object.__setattr__(self, "input_shape", parse_input_shape(self.input_shape))

    @property
    def source(self) -> str:
        return self.arch if self.arch is not None else self.model_def

    def build(self):
        """The original architecture with random weights, in eval mode (torch is imported here)."""
        model = _torchvision_model(self.arch, self.num_classes) if self.arch else _user_model(self.model_def,
                                                                                               self.num_classes)
        return model.eval()

    def convert(self, model):
        """`fc2conv.convert(model, ...)` with this recipe's input shape, mode and options."""
        from .rewrite import convert

        return convert(model, self.input_shape, mode=self.mode, channels_last_linears=self.channels_last_linears)

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
            raise ConversionError(f"{source} has an unreadable fc2conv recipe ({e}); convert the model again") from None


def parse_input_shape(value: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """(C, H, W) or (D,) from ``"3,224,224"``, ``"3x224x224"`` or a sequence of positive integers."""
    parts = value.replace("x", ",").replace("×", ",").split(",") if isinstance(value, str) else value
    try:
        shape = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) not in (1, 3) or any(d <= 0 for d in shape) or any(isinstance(p, bool) for p in parts):
        raise ConversionError(
            f"--input-shape must be C,H,W (e.g. 3,224,224) for an image model or D for an MLP, in positive "
            f"integers and without the batch dimension; got {value!r}"
        )
    return shape


def default_input_shape(arch: str | None) -> tuple[int, ...]:
    """The evaluation crop of a torchvision architecture's default weights (e.g. 3×299×299 for Inception v3)."""
    if arch is None:
        return DEFAULT_INPUT_SHAPE
    import torchvision

    _check_arch(arch)
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    crop = getattr(weights.transforms(), "crop_size", None) or [DEFAULT_INPUT_SHAPE[1]]
    return (3, crop[0], crop[-1])


def _check_arch(arch: str) -> None:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        close = [n for n in names if arch.lower().rstrip("_0123456789") in n][:8]
        hint = f"; did you mean one of {', '.join(close)}?" if close else "; see torchvision.models.list_models()"
        raise ConversionError(f"--arch {arch!r} is not a torchvision classification model{hint}")


def _torchvision_model(arch: str, num_classes: int | None):
    import torchvision

    _check_arch(arch)
    config = {} if num_classes is None else {"num_classes": num_classes}
    if arch in ("googlenet", "inception_v3"):
        config["init_weights"] = False  # the weights are replaced anyway; skips a slow init and a warning
    return torchvision.models.get_model(arch, weights=None, **config)


def _user_model(model_def: str, num_classes: int | None):
    """Import FILE.py and call FACTORY from it: this runs the user's code, by the user's request."""
    from torch import nn

    file, sep, factory = model_def.rpartition(":")
    if not sep or not file or not factory.isidentifier():
        raise ConversionError(f"--model-def must be FILE.py:FACTORY (e.g. models/small_cnn.py:SmallCNN), "
                              f"got {model_def!r}")
    path = Path(file)
    if not path.is_file():
        raise ConversionError(f"--model-def: {path} is not a file")
    name = f"fc2conv_model_def_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConversionError(f"--model-def: {path} cannot be imported as Python (name it .py)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise ConversionError(f"--model-def: importing {path} failed: {type(e).__name__}: {e}") from e
    make = getattr(module, factory, None)
    if not callable(make):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ConversionError(f"--model-def: {path} defines no callable {factory!r}; it has {', '.join(found)}")
    try:
        model = make() if num_classes is None else make(num_classes=num_classes)
    except Exception as e:
        raise ConversionError(f"--model-def: calling {factory}({'' if num_classes is None else 'num_classes='}"
                              f"{'' if num_classes is None else num_classes}) failed: {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ConversionError(f"--model-def: {factory}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model
