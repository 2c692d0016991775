"""The timm sweep's report (scripts/timm_sweep.py): the summary by result and kind, the table by module, and the
machine it ran on. Plain data in, Markdown out: nothing here imports timm, torch or fc2conv."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from timing import cpu_model_name

RESULTS = ("exact", "refused: attention/tokens", "refused: other", "failed", "wrong geometry", "too slow/large")
# A table cell longer than this is cut: the JSON keeps the whole reason.
REASON_CHARS = 240


def cpu_name() -> str:
    """The CPU's model name as `lscpu` gives it (else /proc/cpuinfo's, else Python's guess), and the cores this
    process may use: the machine a sweep's timings and timeouts belong to."""
    name = cpu_model_name()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores usable"


def times(values: Sequence[int]) -> str:
    return "×".join(str(v) for v in values)


def _cell(text: str) -> str:
    """`text` fit for a Markdown table cell: no pipes or line breaks, at most REASON_CHARS characters."""
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1].rstrip() + "…"


def table(records: Sequence[dict[str, Any]]) -> str:
    """The Markdown table of `records`, by module."""
    rows = ["| module | model | params | input | kind | result | stride / window, or reason |",
            "|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: r["module"]):
        params = "" if r.get("params") is None else f"{r['params'] / 1e6:.1f}M"
        rows.append(f"| {r['module']} | `{r['model']}` | {params} | {times(r.get('input', [])[-2:])} | {r['kind']} | "
                    f"{r['result']} | {_cell(r['reason'])} |")
    return "\n".join(rows) + "\n"


def summary(records: Sequence[dict[str, Any]], not_run: Sequence[dict[str, Any]]) -> str:
    """How many CNNs and attention models had each result; `not_run` (module, model, kind) the budget left out."""
    counts = Counter((r["result"], r["kind"]) for r in records)
    rows = ["| result | CNNs | attention models |", "|---|---|---|"]
    for result in RESULTS:
        rows.append(f"| {result} | {counts[result, 'cnn']} | {counts[result, 'attention']} |")
    if not_run:
        rows.append(f"| not run (budget) | {sum(m['kind'] == 'cnn' for m in not_run)} | "
                    f"{sum(m['kind'] == 'attention' for m in not_run)} |")
    return "\n".join(rows) + "\n"


def render(meta: dict[str, Any], records: Sequence[dict[str, Any]]) -> str:
    """The whole report: the run's versions, date and machine, the summary, the table, the modules not run."""
    not_run = meta.get("not_run", [])
    text = (f"timm {meta['timm']}, torch {meta['torch']}, {meta['date']}, CPU: {meta['cpu']}, "
            f"{meta['threads']} torch thread(s) per model, {meta['timeout']:.0f} s per model, "
            f"{meta['seconds']} s in all\n\n" + summary(records, not_run) + "\n" + table(records))
    if not_run:
        text += (f"\nNot run (budget of {meta['budget']:.0f} s): "
                 + ", ".join(m["module"] + (f" (`{m['model']}`)" if m.get("model") else "") for m in not_run) + "\n")
    return text
