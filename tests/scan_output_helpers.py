"""Shared helpers for the tests of `fc2conv scan`'s outputs (tests/test_scan_outputs_apart.py,
tests/test_scan_outputs_commit.py): the one-tile image they scan, and what a folder holds, byte for byte, to compare
before and after."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from scan_helpers import noise

IMAGE = noise(150, 130, channels=1, seed=5)
TILE = 150  # one tile: the end of a scan is what these tests are about


def state(directory: Path) -> dict[str, str]:
    """Every file, folder and link below `directory`, hidden ones too, each file with its SHA-256."""
    state = {}
    for top, folders, files in os.walk(directory):
        for name in folders + files:
            path = Path(top, name)
            key = str(path.relative_to(directory))
            state[key] = (f"link to {os.readlink(path)}" if path.is_symlink() else "folder" if path.is_dir() else
                          hashlib.sha256(path.read_bytes()).hexdigest())
    return state


def as_flags(options: dict) -> list[str]:
    """`scan`'s keyword arguments as the command's flags (True: the flag alone)."""
    flags = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags
