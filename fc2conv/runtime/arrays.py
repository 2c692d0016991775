"""`.npy` files as inputs (signals, volumes, calibration batches), read the way `fc2conv scan` reads a TIFF: the
header is checked against the file before anything is allocated, and nothing is unpickled.

A `.npy` header can say anything: a 1 KB file may declare a 36 TiB array, and `numpy.load` would try to allocate
it. `open_npy` reads the header alone, refuses what is not an array of numbers (object and structured dtypes would
need pickle or are not samples), refuses a declared size the file does not hold, and then maps the file read-only, so
a batch is read one item at a time (`fc2conv quantize` streams its calibration set this way). `samples_within`
checks what a caller is about to read into memory against its budget, and `finite` that the samples are numbers.
numpy only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError, first_line

__all__ = ["check_finite", "open_npy", "samples_within"]

_NUMBERS = "biuf"  # bool, signed and unsigned integers, floats


def open_npy(path: str | os.PathLike) -> np.ndarray:
    """The array of the `.npy` file `path`, memory-mapped read-only after its header was checked (see the module
    docstring); `InputError` naming the file otherwise."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f".npy format version {version[0]}.{version[1]} is not one fc2conv reads (1.0, 2.0)")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            start = f.tell()
        size = path.stat().st_size
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:  # numpy's own messages for a bad magic string or header
        raise InputError(f"{path}: cannot read it as a .npy array ({first_line(e)})") from None
    if dtype.hasobject or dtype.kind not in _NUMBERS or dtype.fields is not None:
        raise InputError(f"{path}: a .npy array of {dtype} is not numbers (fc2conv reads bool, integer and float "
                         "arrays, and never unpickles objects)")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > size - start:
        raise InputError(f"{path}: its header declares a {'×'.join(map(str, shape))} {dtype} array "
                         f"({declared:,} bytes), but the file holds {max(size - start, 0):,} bytes of data: a "
                         "truncated file or a header that lies")
    if declared == 0:
        return np.zeros(shape, dtype=dtype)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def samples_within(array: np.ndarray, budget: int | None, *, source: str, keyword: str = "max_pixels=") -> None:
    """`InputError` naming `source` when reading `array` (one input) would take more than `budget` samples
    (None: no limit): the size a caller allows one input in memory."""
    if budget is not None and array.size > budget:
        raise InputError(f"{source}: an input of {array.size:,} samples ({'×'.join(map(str, array.shape))}) is "
                         f"more than one pass may hold ({budget:,}: {keyword} times the model's channels)")


def check_finite(x: np.ndarray, *, source: str) -> None:
    """`InputError` naming `source` when a sample of `x` is NaN or infinite: the scores of every window that
    saw it would be NaN, or plausible-looking numbers on a backend that clamps them."""
    count = x.size - int(np.count_nonzero(np.isfinite(x)))
    if count:
        raise InputError(f"{source}: {count:,} {'sample is' if count == 1 else 'samples are'} NaN or infinite; "
                         "fc2conv runs models on finite samples only")
