"""How to convert a model (`ConversionOptions`): the map it gives (mode, density, reduction), whether Linears on
channels-last maps are converted, and how it is traced. Checked once, where it is made, and passed whole: `convert`
builds it from its keywords, `Recipe` from its fields (and keeps it), verification reuses a converted model's own."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InputError
from ..metadata import MODES, REDUCES
from ..tracing.options import TraceOptions

__all__ = ["ConversionOptions"]


@dataclass(frozen=True)
class ConversionOptions:
    """`mode`: dense, global, cam or pool (see `fc2conv.convert`); `density`: cells per original stride along each
    axis (dense mode); `reduce`: how mode "pool" reduces the dense map (avg, max or avgmax); `channels_last_linears`:
    also convert Linears on N×(positions)×C maps; `trace`: module types and functions kept whole, fixed forward
    arguments. `InputError` (a `ValueError`) naming the keyword for a value out of range. Needs no PyTorch."""

    mode: str = "dense"
    density: int = 1
    reduce: str = "avg"
    channels_last_linears: bool = False
    trace: TraceOptions = field(default_factory=TraceOptions)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"mode= must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not isinstance(self.density, int) or isinstance(self.density, bool) or self.density < 1 or (
                self.density > 1 and self.mode != "dense"):
            raise InputError(f"density= must be a positive integer, with mode='dense'; got {self.density!r} "
                             f"with mode={self.mode!r}")
        if self.reduce not in REDUCES:
            raise InputError(f"reduce= must be one of {', '.join(REDUCES)}, not {self.reduce!r}")

    @property
    def cells(self) -> str:
        """The mode the analysis builds: pooling reduces the dense map afterwards."""
        return "dense" if self.mode == "pool" else self.mode
