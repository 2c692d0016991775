"""Help text keeps its words: every option's help of every command prints as written (no markup eats its square
brackets), as the generated CLI reference shows it."""

from __future__ import annotations

import click
import pytest
import typer
from helpers import invoke

from fc2conv.cli import app

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
