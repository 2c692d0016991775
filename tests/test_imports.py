"""The house's walls: which package may import which, read from the source (every import, lazy ones included), and
the torch-free side imported for real with torch blocked."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from onnx_helpers import run_without_torch

PACKAGE = Path(__file__).resolve().parents[1] / "fc2conv"

# What runs where PyTorch is not installed: the wing, one folder (the runtime, the scanner and the viewer, ONNX-to-ONNX
# conversion, quantization, atomic files); the bottom both sides share; and the commands that use only them.
WING = "fc2conv.runtime"
BOTTOM = ("fc2conv.errors", "fc2conv.shapes", "fc2conv.metadata", "fc2conv.tolerance", "fc2conv.aliases")
TORCH_FREE = (WING, *BOTTOM, "fc2conv.cli.app", "fc2conv.cli.deployed", "fc2conv.cli.precision", "fc2conv.cli.view",
              "fc2conv.cli.keywords")
TORCH_PACKAGES = ("torch", "torchvision", "timm", "transformers", "safetensors")
# Each layer and the fc2conv modules it may import, lowest first: an arrow points down the list. The wing imports
# only the bottom; inside it, files below the runtime's own modules, below the scanner, below the viewer, and the
# ONNX rewriting beside the runtime's modules. The torch side imports the bottom, and the wing's pieces it writes or
# checks with (atomic files, the ONNX checks in onnxruntime); the command line (not listed) imports anything.
WING_CORE = tuple(f"{WING}.{name}" for name in ("backends", "cpu", "images", "model"))
LAYERS = {
    "fc2conv.errors": (), "fc2conv.shapes": (), "fc2conv.compat": (), "fc2conv.aliases": (),
    "fc2conv.metadata": ("fc2conv.errors", "fc2conv.shapes"),
    "fc2conv.tolerance": ("fc2conv.errors",),
    WING: BOTTOM,
    f"{WING}.files": BOTTOM,
    f"{WING}.onnx": (*BOTTOM, f"{WING}.files"),
    f"{WING}.scanning": (*BOTTOM, f"{WING}.files", *WING_CORE),
    f"{WING}.viewer": (*BOTTOM, f"{WING}.files", f"{WING}.images", f"{WING}.scanning"),
    # The modules fc2conv puts into networks: tracing, the analysis and the conversion all know them.
    "fc2conv.layers": ("fc2conv.errors", "fc2conv.shapes", "fc2conv.compat"),
    "fc2conv.analysis": (*BOTTOM, "fc2conv.compat", "fc2conv.layers"),
    "fc2conv.tracing": (*BOTTOM, "fc2conv.compat", "fc2conv.layers", "fc2conv.analysis.ops"),
    "fc2conv.conversion": (*BOTTOM, "fc2conv.compat", "fc2conv.layers", "fc2conv.tracing", "fc2conv.analysis"),
    "fc2conv.storage": (*BOTTOM, "fc2conv.compat", "fc2conv.layers", "fc2conv.tracing", "fc2conv.conversion",
                        f"{WING}.files"),
    "fc2conv.onnx": (*BOTTOM, "fc2conv.compat", "fc2conv.layers", "fc2conv.tracing", "fc2conv.conversion",
                     "fc2conv.storage", f"{WING}.files", f"{WING}.onnx"),
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


def test_the_wing_is_one_folder_and_nothing_else_is_torch_free():
    """The wing is fc2conv/runtime/ and the bottom is its files; every other package has a module that needs torch."""
    assert MODULES[WING] == PACKAGE / "runtime" / "__init__.py"
    assert all(MODULES[m].parent == PACKAGE for m in BOTTOM)
    torch_side = ("fc2conv.layers", "fc2conv.compat", "fc2conv.tracing", "fc2conv.analysis", "fc2conv.conversion",
                  "fc2conv.storage", "fc2conv.onnx")
    for package in torch_side:
        assert any(_within(n, TORCH_PACKAGES) for m, path in MODULES.items() if _within(m, (package,))
                   for n in _imports(m, path)), package


def test_every_folder_is_a_package():
    """A folder without `__init__.py` imports as a namespace package here, but setuptools' package finder leaves it
    out of the wheel and mkdocstrings cannot read it."""
    folders = {path.parent for path in PACKAGE.rglob("*.py")}
    assert not sorted(str(f) for f in folders if not (f / "__init__.py").is_file())


def test_the_runtimes_own_modules_stand_below_the_scanner_and_the_viewer():
    """Only the wing's face (`fc2conv.runtime`, which hands on `scan`) looks up into its scanner or viewer."""
    above = (f"{WING}.scanning", f"{WING}.viewer")
    wrong = [f"{m} → {n}" for m, path in MODULES.items() if _within(m, (WING,)) and not _within(m, above)
             and m != WING for n in _imports(m, path) if _within(n, above)]
    assert not wrong


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
