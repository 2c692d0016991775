"""Help text keeps its words: every option's help of every command prints as written (no markup eats its square
brackets), as the generated CLI reference shows it."""

from __future__ import annotations

import click
import pytest
import typer
from helpers import invoke

from fc2conv.cli import app
from fc2conv.cli.recipe_flags import RecipeFlags, takes_recipe_flags

COMMANDS = sorted(typer.main.get_command(app).commands)


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_help_prints_as_written(name):
    command = typer.main.get_command(app).commands[name]
    shown = _words(invoke(name, "--help").output)
    for param in command.params:
        if isinstance(param, click.Option) and param.help:
            assert _words(param.help) in shown, (param.name, param.help)


def test_square_brackets_survive():
    run = _words(invoke("run", "--help").output)
    assert "'fc2conv[openvino]'" in run and "[default: the top class]" in run
    assert "worker" not in run  # run has no workers; scan's --backend says the workers run the same
    assert "the same in every worker" in _words(invoke("scan", "--help").output)


def test_inspect_and_convert_take_the_recipe_flags_declared_once():
    """`inspect` and `convert` list the same ten recipe flags, first and in one order, from one declaration; a
    command gets them back as one `RecipeFlags`."""
    commands = typer.main.get_command(app).commands
    names = [[param.name for param in commands[name].params][:10] for name in ("inspect", "convert")]
    assert names[0] == names[1] == [field for field in RecipeFlags.__dataclass_fields__]

    @takes_recipe_flags
    def command(flags: RecipeFlags, quiet: bool = False) -> tuple[RecipeFlags, bool]:
        return flags, quiet

    values = {"checkpoint": "w.pt", "arch": "resnet18", "model_def": None, "model_arg": [], "num_classes": 3,
              "input_shape": "3,64,64", "mode": "dense", "density": 2, "reduce": "avg", "channels_last_linears": False}
    assert command(**values, quiet=True) == (RecipeFlags(**values), True)
