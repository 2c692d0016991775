"""Where original models come from: torchvision by name, timm by `timm:NAME`, or the user's own Python file.

    build("resnet18", num_classes=10)                      # torchvision, random weights
    build("timm:ecaresnet26t")                             # timm (optional), random weights
    build_from_file("models/vgg.py:VGG", args=["VGG16"])   # runs that file's code, by the user's request
    default_input_shape("r3d_18")                          # (3, 16, 112, 112): the weights' crop, 16 frames

Torch, torchvision and timm are imported only here, when a model is built.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import BackendError, InputError, first_line

__all__ = ["DEFAULT_INPUT_SHAPE", "TIMM_PREFIX", "build", "build_from_file", "default_input_shape"]

DEFAULT_INPUT_SHAPE = (3, 224, 224)
TIMM_PREFIX = "timm:"
VIDEO_FRAMES = 16  # torchvision's video classifiers were trained on clips of 16 frames


def build(arch: str, num_classes: int | None = None) -> Any:
    """A torchvision classifier by name, or a timm model by ``timm:NAME``, with random weights."""
    if arch.startswith(TIMM_PREFIX):
        timm = _timm(arch)
        return timm.create_model(arch.removeprefix(TIMM_PREFIX), pretrained=False,
                                 **({} if num_classes is None else {"num_classes": num_classes}))
    import torchvision

    _check_torchvision(arch)
    config = {} if num_classes is None else {"num_classes": num_classes}
    if arch in ("googlenet", "inception_v3"):
        config["init_weights"] = False  # the weights are replaced anyway; skips a slow init and a warning
    return torchvision.models.get_model(arch, weights=None, **config)


def default_input_shape(arch: str | None) -> tuple[int, ...]:
    """The evaluation input of an architecture's default weights: the crop of torchvision's weights (3×299×299 for
    Inception v3; 16 frames of the crop for video models), timm's `input_size`; 3×224×224 for anything else."""
    if arch is None:
        return DEFAULT_INPUT_SHAPE
    if arch.startswith(TIMM_PREFIX):
        name = arch.removeprefix(TIMM_PREFIX)
        config = _timm(arch).models.get_pretrained_cfg(name)
        return tuple(config.input_size) if config is not None else DEFAULT_INPUT_SHAPE
    import torchvision

    _check_torchvision(arch)
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    crop = getattr(weights.transforms(), "crop_size", None) or [DEFAULT_INPUT_SHAPE[1]]
    video = arch in torchvision.models.list_models(module=torchvision.models.video)
    return (3, *((VIDEO_FRAMES,) if video else ()), crop[0], crop[-1])


def weights_hints(arch: str | None, num_classes: int | None) -> dict[str, Any]:
    """What a torchvision architecture's default weights enum says offline: the class names (`meta["categories"]`,
    only when the model has as many classes) and the normalisation of its transforms (mean, std), with `source`
    naming the enum (e.g. "torchvision's ResNet18_Weights.IMAGENET1K_V1"). Empty for other architectures."""
    if arch is None or arch.startswith(TIMM_PREFIX):
        return {}
    import torchvision

    _check_torchvision(arch)
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    transforms = weights.transforms()
    hints: dict[str, Any] = {"source": f"torchvision's {type(weights).__name__}.{weights.name}"}
    categories = list(weights.meta.get("categories") or [])
    if categories and (num_classes is None or num_classes == len(categories)):
        hints["labels"] = categories
    if getattr(transforms, "mean", None) is not None and getattr(transforms, "std", None) is not None:
        hints.update(mean=[float(v) for v in transforms.mean], std=[float(v) for v in transforms.std])
    return hints


def build_from_file(model_def: str, num_classes: int | None = None, args: Sequence[Any] = (),
                    kwargs: Mapping[str, Any] | None = None) -> Any:
    """Import FILE.py and call FACTORY(*args, **kwargs) from ``FILE.py:FACTORY`` (with ``num_classes=`` when
    given): this runs the user's code, by the user's request."""
    from torch import nn

    file, sep, factory = model_def.rpartition(":")
    if not sep or not file or not factory.isidentifier():
        raise InputError(f"--model-def must be FILE.py:FACTORY (e.g. models/small_cnn.py:SmallCNN), "
                         f"got {model_def!r}")
    path = Path(file)
    if not path.is_file():
        raise InputError(f"--model-def: {path} is not a file")
    name = f"fc2conv_model_def_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"--model-def: {path} cannot be imported as Python (name it .py)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's file may raise anything; chained so its traceback shows where
        sys.modules.pop(name, None)
        raise InputError(f"--model-def: importing {path} failed: {first_line(e, named=True)}") from e
    make = getattr(module, factory, None)
    if not callable(make):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise InputError(f"--model-def: {path} defines no callable {factory!r}; it has {', '.join(found)}")
    kwargs = {**(kwargs or {}), **({} if num_classes is None else {"num_classes": num_classes})}
    call = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
    try:
        model = make(*args, **kwargs)
    except Exception as e:  # the user's factory may raise anything; chained so its traceback shows where
        hint = ("; pass its arguments with --model-arg VALUE (in order) or --model-arg NAME=VALUE"
                if isinstance(e, TypeError) else "")
        raise InputError(f"--model-def: calling {factory}({call}) failed: {first_line(e, named=True)}"
                         f"{hint}") from e
    if not isinstance(model, nn.Module):
        raise InputError(f"--model-def: {factory}({call}) returned a {type(model).__name__}, not a "
                         "torch.nn.Module")
    return model


def _check_torchvision(arch: str) -> None:
    import torchvision

    names = [*torchvision.models.list_models(module=torchvision.models),
             *torchvision.models.list_models(module=torchvision.models.video)]
    if arch not in names:
        close = [n for n in names if arch.lower().rstrip("_0123456789") in n][:8]
        hint = f"; did you mean one of {', '.join(close)}?" if close else "; see torchvision.models.list_models()"
        raise InputError(f"--arch {arch!r} is not a torchvision classification model{hint} (timm models are "
                         f"{TIMM_PREFIX}NAME)")


def _timm(arch: str) -> Any:
    """The timm module, checking that it is installed and knows `arch`."""
    try:
        import timm
    except ImportError:
        raise BackendError(f"--arch {arch}: timm is not installed; pip install timm (or fc2conv[timm])") from None
    name = arch.removeprefix(TIMM_PREFIX)
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.rstrip('_0123456789')}*")[:8]
        hint = f"; did you mean one of {', '.join(close)}?" if close else "; see timm.list_models()"
        raise InputError(f"--arch {arch!r} is not a timm model{hint}")
    return timm
