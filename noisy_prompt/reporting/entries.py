"""One printed entry of a table: the runs of one cell reduced to mean ± sample std over seeds.

"Entry", not "cell": a cell is what the runs write (noisy_prompt.cell.CellKey); an entry is what a
table prints at (row, column), which may find no run, a failed run, or runs of several cells.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from noisy_prompt.cell import CellKey, first_line  # noqa: F401  (first_line: importable from here too)
from noisy_prompt.reporting.runs import RunRecord

DASH = "—"

# Entry statuses (TableEntry.status)
OK, MISSING, FAILED, AMBIGUOUS, NO_METRIC, NOT_RUN = "ok", "missing", "failed", "ambiguous", "no_metric", "not_run"


@dataclass
class TableEntry:
    """What a table prints at one (row, column): status, numbers over seeds, the paper's number."""

    status: str
    metric: str
    mean: float | None = None
    std: float | None = None  # sample std (ddof=1); None when n < 2
    n: int = 0
    seeds: tuple[int, ...] = ()
    values: tuple[float, ...] = ()
    failed_seeds: tuple[int, ...] = ()
    paper: float | None = None
    keys: tuple[CellKey, ...] = ()
    paths: tuple[Path, ...] = ()
    errors: tuple[str, ...] = ()  # first line of each failed seed's error

    @property
    def diff(self) -> float | None:
        if self.mean is None or self.paper is None:
            return None
        return self.mean - self.paper

    @property
    def n_failed(self) -> int:
        return len(self.failed_seeds)


def metric_value(run: RunRecord, metric: str) -> float | None:
    value = run.metrics.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def aggregate_entry(runs: Sequence[RunRecord], metric: str, paper: float | None) -> TableEntry:
    """The entry of the runs that match one (row, column): MISSING without runs, AMBIGUOUS when they are
    runs of several cells, FAILED when every seed failed, NO_METRIC when none reports `metric`."""
    keys = tuple(sorted({r.key for r in runs}, key=CellKey.sort_key))
    paths = tuple(r.path for r in runs)
    if not runs:
        return TableEntry(status=MISSING, metric=metric, paper=paper)
    if len(keys) > 1:
        return TableEntry(status=AMBIGUOUS, metric=metric, paper=paper, keys=keys, paths=paths)
    failed = tuple(sorted(r.seed for r in runs if not r.ok))
    errors = tuple(first_line(r.error) for r in sorted(runs, key=lambda r: r.seed) if not r.ok)
    measured = sorted((r.seed, v) for r in runs if r.ok and (v := metric_value(r, metric)) is not None)
    if not measured:
        status = FAILED if failed and not any(r.ok for r in runs) else NO_METRIC
        return TableEntry(status=status, metric=metric, paper=paper, failed_seeds=failed, keys=keys, paths=paths,
                          errors=errors)
    values = tuple(v for _, v in measured)
    return TableEntry(
        status=OK, metric=metric, mean=statistics.fmean(values),
        std=statistics.stdev(values) if len(values) > 1 else None,
        n=len(values), seeds=tuple(s for s, _ in measured), values=values, failed_seeds=failed,
        paper=paper, keys=keys, paths=paths, errors=errors,
    )

