"""Sensitivity: one table per hyperparameter (`aggregate --by KEY`). Rows are the cells without KEY, columns
the values KEY takes (an explicit setting, or the value in the run's stored config, so the preset run joins
its sweep at its default), entries mean ± sample std over seeds; and a line plot per table."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from noisy_prompt.cell import CellKey
from noisy_prompt.reporting.entries import TableEntry, aggregate_entry
from noisy_prompt.reporting.render import format_entry, line_plot, num
from noisy_prompt.reporting.runs import LoadedRuns, RunRecord


def _config_value(run: RunRecord, key: str) -> str | None:
    """The value of `key` in a run: its explicit setting, else the resolved config stored in the record
    (so the preset run joins its sweep at its default value)."""
    explicit = run.key.setting(key)
    if explicit is not None:
        return explicit
    node: Any = run.config
    parts = key.split(".")
    if parts[0] == "trainer" and parts[1:] == ["max_epochs"]:
        parts = ["max_epochs"]
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if isinstance(node, (Mapping, list)):
        return None
    return json.dumps(node) if not isinstance(node, str) else node


def _value_order(values: Iterable[str]) -> list[str]:
    def key(v: str):
        try:
            return (0, float(v), v)
        except ValueError:
            return (1, 0.0, v)
    return sorted(set(values), key=key)


@dataclass
class SensitivityTable:
    by: str
    metric: str
    rows: list[CellKey]  # the cells with the `by` setting removed
    values: list[str]  # column values of `by`
    cells: dict[tuple[CellKey, str], TableEntry]
    warnings: list[str] = field(default_factory=list)

    def render(self, fmt: str = "md") -> str:
        if fmt == "csv":
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(["cell", self.by, "mean", "std", "n", "n_failed", "status"])
            for row in self.rows:
                for v in self.values:
                    c = self.cells[(row, v)]
                    writer.writerow([row.label(), v, num(c.mean), num(c.std), c.n, c.n_failed, c.status])
            return buf.getvalue()
        head = ["cell", *(f"{self.by}={v}" for v in self.values)]
        lines = [f"### sensitivity to {self.by}: {self.metric}", "", "| " + " | ".join(head) + " |",
                 "|---|" + "|".join([":---:"] * len(self.values)) + "|"]
        for row in self.rows:
            lines.append("| " + " | ".join([row.label(), *(format_entry(self.cells[(row, v)]) for v in self.values)]) + " |")
        lines += ["", f"Cells: mean ± sample std (ddof=1) over n seeds of {self.metric}; — = not run."]
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> Path:
        numeric = all(_is_number(v) for v in self.values)
        xs = [float(v) for v in self.values] if numeric else list(range(len(self.values)))
        series = []
        for row in self.rows:
            pts = [(x, self.cells[(row, v)]) for x, v in zip(xs, self.values) if self.cells[(row, v)].mean is not None]
            if pts:
                series.append((row.label(), [x for x, _ in pts], [c for _, c in pts]))
        return line_plot(path, series, xticks=None if numeric else (xs, self.values), xlabel=self.by,
                         ylabel=self.metric)


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def sensitivity(loaded: LoadedRuns, by: str, metric: str = "test/acc") -> SensitivityTable:
    """Runs grouped by their cell without `by` (rows) and the value of `by` (columns)."""
    groups: dict[tuple[CellKey, str], list[RunRecord]] = {}
    for run in loaded.runs:
        value = _config_value(run, by)
        if value is None:
            continue
        groups.setdefault((run.key.without(by), value), []).append(run)
    rows = sorted({r for r, _ in groups}, key=CellKey.sort_key)
    values = _value_order(v for _, v in groups)
    table = SensitivityTable(by=by, metric=metric, rows=rows, values=values, cells={},
                             warnings=list(loaded.warnings))
    for row in rows:
        for v in values:
            runs = groups.get((row, v), [])
            # one group = one cell; the key differs only by the `by` setting (explicit vs preset default)
            table.cells[(row, v)] = aggregate_entry([_with_key(r, row) for r in runs], metric, None)
    if not rows:
        table.warnings.append(f"no run under {loaded.root} has a value for {by!r}")
    return table


def _with_key(run: RunRecord, key: CellKey) -> RunRecord:
    return replace(run, cell=replace(run.cell, key=key))
