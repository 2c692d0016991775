"""Module names that are not where their code lives: the same module object under both names, so an import, an
attribute set on it (a test's monkeypatch) and a pickle see one module.

`PUBLIC` are the names users import: the scanner and the viewer are `fc2conv.scan` and `fc2conv.viewer`, their code
in the torch-free wing (`fc2conv/runtime/scanning/`, `fc2conv/runtime/viewer/`). `MOVED` are modules that moved
when the wing became one folder; their old names still import, with a `DeprecationWarning` naming the new one.
Installed once, first on `sys.meta_path`, when `fc2conv` is imported; it answers for these names only.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

__all__ = ["MOVED", "PUBLIC", "home_of", "install"]

PUBLIC = {"fc2conv.scan": "fc2conv.runtime.scanning", "fc2conv.viewer": "fc2conv.runtime.viewer"}
MOVED = {
    "fc2conv.runtime.metadata": "fc2conv.metadata",
    "fc2conv.runtime.tolerance": "fc2conv.tolerance",
    "fc2conv.storage.atomic": "fc2conv.runtime.files.atomic",
    "fc2conv.storage.paths": "fc2conv.runtime.files.paths",
    **{f"fc2conv.onnx.{name}": f"fc2conv.runtime.onnx.{name}"
       for name in ("check", "convert", "graph", "pools", "rules")},
}


def home_of(name: str) -> str | None:
    """Where the module `name` lives, if `name` is an alias (or inside one); else None."""
    for table in (PUBLIC, MOVED):
        for alias, home in table.items():
            if name == alias or name.startswith(alias + "."):
                return home + name[len(alias):]
    return None


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name: str, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if home_of(name) is not None else None

    def create_module(self, spec) -> ModuleType:
        home = home_of(spec.name)
        moved = next((alias for alias in MOVED if spec.name == alias or spec.name.startswith(alias + ".")), None)
        if moved is not None:
            warnings.warn(f"{moved} is now {MOVED[moved]}; the old name will be removed", DeprecationWarning,
                          stacklevel=2)
        module = importlib.import_module(home)
        spec.loader_state = module.__spec__  # the import system sets __spec__ to this alias's: put back in exec_module
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = module.__spec__.loader_state


def install() -> None:
    """Put the finder first on `sys.meta_path` (once), ahead of any folder left at an old path."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
