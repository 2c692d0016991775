"""The plan of a conversion: one printable `Decision` per Linear, pool and norm it touches, with the reason."""

from __future__ import annotations

from dataclasses import dataclass

from ..shapes import times

__all__ = ["Decision", "Plan"]


@dataclass(frozen=True)
class Decision:
    """One row of a plan: what happens to a layer, and why."""

    layer: str
    op: str
    rule: str
    kernel: tuple[int, ...] | None = None
    in_channels: int | None = None
    out_channels: int | None = None
    reason: str = ""


class Plan(list):
    """The decisions of a conversion, in graph order; `str(plan)` is a table."""

    notes: list[str]

    def __init__(self, decisions=(), notes=()):
        super().__init__(decisions)
        self.notes = list(notes)

    def __str__(self) -> str:
        header = ("layer", "op", "rule", "kernel", "channels", "reason")
        rows = [header] + [
            (
                d.layer, d.op, d.rule, "" if d.kernel is None else times(d.kernel),
                "" if d.in_channels is None else f"{d.in_channels}→{d.out_channels}", d.reason,
            )
            for d in self
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
        lines = [("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]).rstrip()
                 for r in rows]
        return "\n".join([*lines, *self.notes])
