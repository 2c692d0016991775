"""The house's walls: which package may import which, read from the source (every import, lazy ones included), and
the torch-free side imported for real with torch blocked."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from onnx_helpers import run_without_torch

PACKAGE = Path(__file__).resolve().parents[1] / "fc2conv"

# What runs where PyTorch is not installed: the runtime, the scanner, the viewer, ONNX-to-ONNX conversion, atomic
# files, and the commands that use only them.
TORCH_FREE = ("fc2conv.runtime", "fc2conv.scan", "fc2conv.viewer", "fc2conv.onnx.convert", "fc2conv.onnx.rules",
              "fc2conv.onnx.graph", "fc2conv.onnx.pools", "fc2conv.onnx.check", "fc2conv.storage.atomic",
              "fc2conv.storage.paths", "fc2conv.errors", "fc2conv.shapes", "fc2conv.cli.app", "fc2conv.cli.deployed",
              "fc2conv.cli.precision", "fc2conv.cli.view")
TORCH_PACKAGES = ("torch", "torchvision", "timm", "transformers", "safetensors")
# Each layer and the fc2conv modules it may import, lowest first. An arrow points down the list, with two named
# exceptions: `fc2conv.runtime` hands on `scan` (lazily, for its one public API), and the torch-free side writes files
# through `fc2conv.storage.atomic`, having kept its outputs apart from its inputs with `fc2conv.storage.paths`.
LAYERS = {
    "fc2conv.errors": (), "fc2conv.shapes": (), "fc2conv.compat": (),
    # The modules fc2conv puts into networks: tracing, the analysis and the conversion all know them.
    "fc2conv.layers": ("fc2conv.errors", "fc2conv.shapes", "fc2conv.compat"),
    "fc2conv.runtime": ("fc2conv.errors", "fc2conv.shapes", "fc2conv.storage.atomic", "fc2conv.storage.paths",
                        "fc2conv.scan"),
    "fc2conv.scan": ("fc2conv.errors", "fc2conv.shapes", "fc2conv.storage.atomic", "fc2conv.storage.paths",
                     "fc2conv.runtime"),
    "fc2conv.viewer": ("fc2conv.errors", "fc2conv.shapes", "fc2conv.storage.atomic", "fc2conv.storage.paths",
                       "fc2conv.runtime", "fc2conv.scan"),
    "fc2conv.analysis": ("fc2conv.errors", "fc2conv.shapes", "fc2conv.compat", "fc2conv.layers",
                         "fc2conv.runtime.metadata"),  # the one vocabulary of modes
    "fc2conv.tracing": ("fc2conv.errors", "fc2conv.shapes", "fc2conv.compat", "fc2conv.layers",
                        "fc2conv.analysis.ops"),
    "fc2conv.conversion": ("fc2conv.errors", "fc2conv.shapes", "fc2conv.compat", "fc2conv.layers", "fc2conv.tracing",
                           "fc2conv.analysis", "fc2conv.runtime.tolerance", "fc2conv.runtime.metadata"),
    "fc2conv.storage": ("fc2conv.errors", "fc2conv.shapes", "fc2conv.compat", "fc2conv.layers", "fc2conv.tracing",
                        "fc2conv.conversion", "fc2conv.runtime.metadata"),
    "fc2conv.onnx": ("fc2conv.errors", "fc2conv.shapes", "fc2conv.compat", "fc2conv.layers", "fc2conv.tracing",
                     "fc2conv.conversion", "fc2conv.storage", "fc2conv.runtime"),
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(module: str, path: Path) -> set[str]:
    """Every module `module` imports, anywhere in the file, as absolute names."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


MODULES = _modules()


@pytest.mark.parametrize("module", [m for m in MODULES if _within(m, TORCH_FREE)])
def test_the_torch_free_side_imports_neither_torch_nor_the_torch_side(module):
    imported = _imports(module, MODULES[module])
    torch_side = sorted(n for n in imported if n.split(".")[0] in TORCH_PACKAGES
                        or (n in MODULES and n.startswith("fc2conv.") and not _within(n, TORCH_FREE)
                            and n != "fc2conv"))
    assert not torch_side, f"{module} imports {torch_side}"


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_point_down_the_layers(layer):
    wrong = []
    for module, path in MODULES.items():
        if not _within(module, (layer,)):
            continue
        for name in _imports(module, path):
            if name in MODULES and name != "fc2conv" and not _within(name, (layer, *LAYERS[layer])):
                wrong.append(f"{module} → {name}")
    assert not wrong, "imports across the layers: " + ", ".join(sorted(wrong))


def test_only_the_command_line_imports_the_command_line():
    wrong = [m for m, path in MODULES.items() if not _within(m, ("fc2conv.cli",))
             and any(_within(n, ("fc2conv.cli",)) for n in _imports(m, path))]
    assert not wrong


def test_the_torch_free_side_imports_with_torch_blocked(tmp_path):
    names = sorted(m for m in MODULES if _within(m, TORCH_FREE))
    done = run_without_torch(f"""
        import importlib, sys
        for name in {names!r}:
            importlib.import_module(name)
        from fc2conv import convert_onnx
        from fc2conv.runtime import DenseModel, heatmap, quantize, scan
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "safetensors")))
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
