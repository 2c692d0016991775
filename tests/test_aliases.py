"""Module names that are not where the code lives (`fc2conv.aliases`): `fc2conv.scan` and `fc2conv.viewer` are the
wing's scanner and viewer as one module object each, submodules included, so imports, monkeypatches and pickles
agree; the old names of moved modules still import, with a warning naming the new one."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
import warnings

import pytest

from fc2conv import aliases


@pytest.mark.parametrize("alias, home", [("fc2conv.scan", "fc2conv.runtime.scanning"),
                                         ("fc2conv.scan.dispatch", "fc2conv.runtime.scanning.dispatch"),
                                         ("fc2conv.scan.masks.auto", "fc2conv.runtime.scanning.masks.auto"),
                                         ("fc2conv.viewer", "fc2conv.runtime.viewer")])
def test_a_public_name_is_the_same_module(alias, home):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # public names do not warn
        module = importlib.import_module(alias)
    assert module is importlib.import_module(home) is sys.modules[alias]
    assert module.__name__ == module.__spec__.name == home  # its own name, whichever name imported it


def test_a_monkeypatch_through_the_public_name_reaches_the_code(monkeypatch):
    from fc2conv.runtime.scanning import tasks
    from fc2conv.scan import dispatch

    monkeypatch.setattr("fc2conv.scan.tasks.MAX_BATCH", 3)
    assert tasks.MAX_BATCH == 3 and dispatch.tasks.MAX_BATCH == 3


def test_objects_pickle_under_their_home():
    from fc2conv.scan import ScanOptions

    options = ScanOptions(tile=512)
    assert type(options).__module__ == "fc2conv.runtime.scanning.options"
    assert pickle.loads(pickle.dumps(options)) == options


@pytest.mark.parametrize("old", sorted(aliases.MOVED))
def test_an_old_name_imports_with_a_warning_naming_the_new_one(old):
    new = aliases.MOVED[old]
    code = (f"import importlib, warnings; warnings.simplefilter('always')\n"
            f"old = importlib.import_module({old!r}); new = importlib.import_module({new!r})\n"
            "assert old is new, (old, new)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"DeprecationWarning: {old} is now {new}" in done.stderr


def test_no_alias_leads_to_itself_or_to_another_alias():
    for alias, home in {**aliases.PUBLIC, **aliases.MOVED}.items():
        assert home != alias and aliases.home_of(home) is None, alias
    assert aliases.home_of("fc2conv.runtime.metadata_file") is None  # a name that only starts like one
    assert aliases.home_of("fc2conv.scanner") is None
