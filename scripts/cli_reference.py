"""Write the `fc2conv` command's reference as Markdown, from the application itself (docs/cli-reference.md).

    .venv/bin/python scripts/cli_reference.py > docs/cli-reference.md

It walks the click commands typer builds from `fc2conv.cli.app`, in the order `fc2conv --help` lists them, and
prints each command's help, usage, arguments, options and examples: the text `fc2conv COMMAND --help` shows, from
each parameter's help record (click's public API, which typer implements), unwrapped, so it does not depend on
the terminal's width. tests/test_docs.py regenerates it and compares (`FC2CONV_REGEN_GOLDEN=1` rewrites the file).
"""

from __future__ import annotations

import inspect
import re
import sys

import typer

HEADER = """# CLI reference

Every command and option of `fc2conv`, generated from the application by `scripts/cli_reference.py` (do not edit
by hand: [Architecture](architecture.md#how-the-documentation-is-laid-out) says how to regenerate it). The
[command-line guide](cli.md) explains the commands with examples, exit codes and the files they read and write.
"""

def _is_argument(param) -> bool:
    return param.param_type_name == "argument"


def _text(help_text: str | None) -> str:
    """Help text as Markdown paragraphs: click's \\b markers dropped, `&` and `<` escaped."""
    text = inspect.cleandoc(help_text or "").replace("\b\n", "").replace("\b", "")
    return text.replace("&", "&amp;").replace("<", "&lt;")


def _cell(help_text: str | None) -> str:
    """Help text for one table cell: one line, pipes escaped."""
    return " ".join(_text(help_text).split()).replace("|", "\\|")


def _name(param) -> str:
    return param.metavar or param.name.upper()


def _command(name: str, command, parent) -> list[str]:
    """One command: its help, usage, arguments, and options as `fc2conv NAME --help` prints them (unwrapped)."""
    context = command.context_class(command, info_name=name, parent=parent)
    arguments = [p for p in command.params if _is_argument(p)]
    options = [p for p in command.params if not _is_argument(p) and p.get_help_record(context)]
    usage = " ".join([f"fc2conv {name}", "[OPTIONS]" if options else "", *(_name(p) for p in arguments)])
    lines = [f"## `fc2conv {name}`", "", _text(command.help), "", "```text", " ".join(usage.split()), "```", ""]
    if arguments:
        lines += ["| argument | description |", "|---|---|"]
        lines += [f"| `{_name(p)}` | {_cell(p.get_help_record(context)[1])} |" for p in arguments]
        lines.append("")
    if options:
        lines += ["| option | description |", "|---|---|"]
        for param in options:
            names, help_text = param.get_help_record(context)
            lines.append(f"| `{names}` | {_cell(help_text)} |")
        lines.append("")
    if command.epilog:
        lines += ["```text", inspect.cleandoc(command.epilog), "```", ""]
    return lines


def render() -> str:
    from fc2conv.cli import app

    group = typer.main.get_command(app)
    context = group.context_class(group, info_name="fc2conv")
    names = [name for name in group.list_commands(context) if not group.get_command(context, name).hidden]
    lines = [HEADER, _text(group.help), ""]
    if group.epilog:
        lines += ["```text", inspect.cleandoc(group.epilog), "```", ""]
    lines += ["| command | what it does |", "|---|---|"]
    for name in names:
        summary = _text(group.get_command(context, name).help).split("\n\n")[0]
        lines.append(f"| [`{name}`](#fc2conv-{name}) | {' '.join(summary.split())} |")
    lines.append("")
    for name in names:
        lines += _command(name, group.get_command(context, name), context)
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
