"""The first command sets up only what it needs: `scripts/setup.sh demo` installs fc2conv with the `demo` extra
alone, and the main job runs with every other extra's packages unimportable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["napari", "openvino", "transformers", "mkdocs", "dask", "zarr", "skimage", "timm", "PyQt5"]

BLOCKED = """
import sys
for name in {heavy!r}:
    sys.modules[name] = None  # importing any of them now fails
sys.argv = ["fc2conv"] + sys.argv[1:]
from fc2conv.cli import main
main()
"""


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\\[<>=;~! ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_demo_profile_installs_no_extra_but_demo():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = _names(project["dependencies"] + project["optional-dependencies"]["demo"])
    assert not installed & {"napari", "openvino", "transformers", "mkdocs", "dask", "zarr", "scikit-image", "timm"}
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'demo) extras="demo"' in setup and "bash scripts/setup.sh demo" in (ROOT / "scripts" / "demo.sh").read_text()
    assert "bash scripts/setup.sh dev" in (ROOT / "scripts" / "test.sh").read_text()


def test_the_main_job_runs_without_the_other_extras(tmp_path):
    def fc2conv(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", BLOCKED.format(heavy=HEAVY), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)

    converted = fc2conv("convert", "models/digits_cnn.safetensors", "--model-def", "models/digits_cnn.py:DigitsCNN",
                        "--input-shape", "1,32,32", "-o", str(tmp_path / "d.pt2"), "--onnx", str(tmp_path / "d.onnx"))
    assert converted.returncode == 0, converted.stderr
    canvas = subprocess.run([sys.executable, "scripts/digits_canvas.py", "compose", str(tmp_path / "c.png"),
                             str(tmp_path / "placed.json")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert canvas.returncode == 0, canvas.stderr
    ran = fc2conv("run", str(tmp_path / "d.onnx"), str(tmp_path / "c.png"), "--topk", "3")
    assert ran.returncode == 0 and "warning" not in ran.stderr.lower(), ran.stderr
