"""The flags that say which model to build and how to convert it, declared once for `inspect` and `convert`.

A command takes them as one `flags: RecipeFlags` parameter and is decorated with `takes_recipe_flags`, which puts
the ten flags in that parameter's place in the signature typer reads, so each command's help lists them where they
always were, and the command gets them back as one object.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .app import ARCH, CHANNELS_LAST, CHECKPOINT, DENSITY, INPUT_SHAPE, MODE, MODEL_ARG, MODEL_DEF, NUM_CLASSES, REDUCE

__all__ = ["RecipeFlags", "takes_recipe_flags"]


@dataclass(frozen=True)
class RecipeFlags:
    """What `inspect` and `convert` are told about the model and its conversion, as typed on the command line."""

    checkpoint: Path
    arch: str | None
    model_def: str | None
    model_arg: list[str]
    num_classes: int | None
    input_shape: str | None
    mode: str
    density: int
    reduce: str
    channels_last_linears: bool

    def recipe(self) -> Any:
        """The checked `fc2conv.storage.recipe.Recipe` these flags describe (`InputError` naming the flag at fault)."""
        from .originals import recipe_of

        return recipe_of(self.checkpoint, self.arch, self.model_def, self.model_arg, self.num_classes,
                         self.input_shape, self.mode, self.channels_last_linears, self.density, self.reduce)


# Each field's type for typer and its typer declaration, in the order the help lists them.
_DECLARED = {"checkpoint": (Path, CHECKPOINT), "arch": (str | None, ARCH), "model_def": (str | None, MODEL_DEF),
             "model_arg": (list[str], MODEL_ARG), "num_classes": (int | None, NUM_CLASSES),
             "input_shape": (str | None, INPUT_SHAPE), "mode": (str, MODE), "density": (int, DENSITY),
             "reduce": (str, REDUCE), "channels_last_linears": (bool, CHANNELS_LAST)}
assert list(_DECLARED) == [field.name for field in fields(RecipeFlags)]


def takes_recipe_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """`command` with its `flags: RecipeFlags` parameter spread into the ten flags for typer, gathered back into a
    `RecipeFlags` when it runs. Its annotations are evaluated in its own module, which imports `RecipeFlags`."""
    signature = inspect.signature(command, eval_str=True)
    parameters = []
    for parameter in signature.parameters.values():
        if parameter.name == "flags":
            parameters += [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                                             annotation=annotation)
                           for name, (annotation, default) in _DECLARED.items()]
        else:
            parameters.append(parameter)

    @functools.wraps(command)
    def gathered(*args: Any, **kwargs: Any) -> Any:
        bound = spread.bind(*args, **kwargs)
        given = bound.arguments
        flags = RecipeFlags(**{name: given.pop(name) for name in _DECLARED})
        return command(flags=flags, **given)

    spread = signature.replace(parameters=parameters)
    gathered.__signature__ = spread  # type: ignore[attr-defined]
    gathered.__annotations__ = {p.name: p.annotation for p in parameters}
    return gathered
