"""The README's examples run as written, in document order, in one scratch directory.

Python blocks are executed and what they print is checked against the `torch.Size(...)`, tuple and list
values their comments announce. In bash blocks, the `fc2conv …` and `python -c …` lines run as commands
(the set-up, test and training scripts are run by their own tests); a line that says `# exit code N` must
exit with N, every other line with 0.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCKS = re.findall(r"```(python|bash)\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
# Values an example promises in a trailing comment: torch.Size([...]), (1, 2, 3, 4), ['batch', 3, ...].
PROMISED = re.compile(r"# (torch\.Size\(\[[^\]]*\]\)|\(\d+(?:, \d+){3}\)|\[[^\]]*\])")


def _run_command(line: str, cwd: Path) -> None:
    expected = int(m.group(1)) if (m := re.search(r"# exit code (\d+)", line)) else 0
    words = shlex.split(line, comments=True)
    if words[0] == "python":
        words[0] = sys.executable
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == expected, f"{line}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"


def test_readme_has_examples():
    kinds = [kind for kind, _ in BLOCKS]
    assert kinds.count("python") >= 5 and kinds.count("bash") >= 2


def test_readme_examples_run_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    for index, (kind, indented) in enumerate(BLOCKS):
        code = textwrap.dedent(indented)  # blocks inside list items are indented
        if kind == "bash":
            for line in code.splitlines():
                if line.startswith(("fc2conv ", "python -c ")):
                    _run_command(line, tmp_path)
            continue
        exec(compile(code, f"{README}:block{index}", "exec"), {"__name__": "readme"})
        printed = capsys.readouterr().out
        for promised in PROMISED.findall(code):
            assert promised in printed, f"block {index} promised {promised}, printed:\n{printed}"


@pytest.mark.parametrize("script", ["scripts/demo.sh", "scripts/test.sh"])
def test_readme_names_the_two_commands(script):
    assert f"bash {script}" in README.read_text(encoding="utf-8")
    assert (ROOT / script).is_file()
