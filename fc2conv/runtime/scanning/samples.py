"""The samples a scan feeds its model, checked tile by tile as they are read (an image larger than memory cannot
be read up front).

Float samples go into the model as they are, read as values in [0, 1] (uint8 and uint16 are scaled by their
range; bool is 0 or 1), so:

- a NaN or infinite sample anywhere in what a tile reads (its owned pixels and its halo) stops the scan with
  `BadInput`, naming the file, the region and how many such samples it holds; no score map is written;
- finite float samples outside [0, 1] are counted over each tile's own pixels (the tiles' own pixels divide
  the image, so each sample counts once; the image's last pixels that no window reaches are read by no tile),
  with the smallest and largest found; `fc2conv.scan.scan` reports them after the scan in one
  `SampleRangeWarning`. A resumed scan counts the tiles it computes itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...errors import InputError
from .tiles import Tile

__all__ = ["BadInput", "SampleRangeWarning", "TileReport", "check", "range_warning"]


class BadInput(InputError):
    """The input's pixel data cannot be scanned (undecodable, NaN or infinite samples). Resuming would meet the same
    data, so a scan stopped by it removes the unfinished store it started."""


class SampleRangeWarning(UserWarning):
    """Float samples outside [0, 1] went into the model as they are: the map is computed, but probably not on the
    values the model was trained on."""


@dataclass(frozen=True)
class TileReport:
    """What one tile (or, added up, a whole scan) read: the image `pixels` its cells stand for, and among its own
    float samples how many lie `outside` [0, 1], the smallest (`low`) and the largest (`high`); ±inf when it read
    no float samples."""

    pixels: int = 0
    outside: int = 0
    low: float = math.inf
    high: float = -math.inf

    def __add__(self, other: TileReport) -> TileReport:
        return TileReport(self.pixels + other.pixels, self.outside + other.outside, min(self.low, other.low),
                          max(self.high, other.high))

    @property
    def sample_range(self) -> tuple[float, float] | None:
        """(smallest, largest) float sample read, or None when the image's samples are not floats."""
        return (self.low, self.high) if self.low <= self.high else None


def check(block: np.ndarray, tile: Tile, path: str) -> TileReport:
    """The report of `block`, the H×W×C samples `tile` read (its box `tile.read`) from the file at `path`.

    `BadInput` if any sample is NaN or infinite.
    """
    if not np.issubdtype(block.dtype, np.floating):
        return TileReport(tile.pixels)
    top, left, bottom, right = tile.read
    finite = int(np.count_nonzero(np.isfinite(block)))
    if finite < block.size:
        count = block.size - finite
        raise BadInput(f"{path}: {count:,} {'sample is' if count == 1 else 'samples are'} NaN or infinite in rows "
                       f"{top}…{bottom - 1}, columns {left}…{right - 1}; fc2conv scans finite samples (floats in "
                       "[0, 1])")
    own_top, own_left, own_bottom, own_right = tile.owns
    own = block[max(own_top - top, 0):max(own_bottom - top, 0), max(own_left - left, 0):max(own_right - left, 0)]
    if own.size == 0:  # the image's last pixels that no window reaches are read by no tile
        return TileReport(tile.pixels)
    low, high = float(own.min()), float(own.max())
    outside = int(np.count_nonzero((own < 0) | (own > 1))) if low < 0 or high > 1 else 0
    return TileReport(tile.pixels, outside, low, high)


def range_warning(report: TileReport, path: str) -> str | None:
    """The warning's text when `report` counts float samples outside [0, 1], else None."""
    if not report.outside:
        return None
    count = f"{report.outside:,} float {'sample lies' if report.outside == 1 else 'samples lie'}"
    return (f"{path}: {count} outside [0, 1] (from {report.low:.6g} to {report.high:.6g}); they went into the model "
            "as they are, but fc2conv reads float samples as values in [0, 1]: rescale them, or store uint8/uint16, "
            "which are scaled by their range")
