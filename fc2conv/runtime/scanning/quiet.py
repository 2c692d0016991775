"""Libraries' log records and warnings held back: tifffile logs a warning per damaged page (hundreds of thousands
for a forged header), zarr and Dask log and warn pages on failure paths. fc2conv checks what it reads itself and
says what matters in its own error or warning, a line or two that names the file, field or flag."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

__all__ = ["quiet_libraries", "silenced"]


@contextlib.contextmanager
def silenced(*names: str) -> Iterator[None]:
    """The loggers `names` emit nothing while the block runs, then have their levels back."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[list[warnings.WarningMessage]]:
    """For a command line, which owns its process: no log record of any library is printed, and every warning is
    recorded instead of printed, while the block runs; yields the warnings, for the command to print fc2conv's."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        logging.disable(previous)
