"""A paper table filled from runs: the runs matching each (row, column) of a TableSpec, reduced to one
TableEntry (mean ± sample std over seeds, n, the paper's number and Δ = ours − paper).

Paper tables ignore settings when matching, so runs of one cell that differ only in settings show as
"ambiguous" there (noisy_prompt/reporting/sensitivity.py lays them out). Missing entries print "—"
(never 0), failed entries print "failed".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from noisy_prompt.reporting import render
from noisy_prompt.reporting.entries import AMBIGUOUS, NO_METRIC, NOT_RUN, OK, TableEntry, aggregate_entry
from noisy_prompt.reporting.runs import LoadedRuns, RunRecord, load_runs
from noisy_prompt.reporting.tables import (
    ColumnSpec,
    RowSpec,
    TableSpec,
    get_table,
    grid_order,
    load_paper_numbers,
    value_order,
)


@dataclass
class AggregatedTable:
    spec: TableSpec
    root: Path
    row_labels: list[tuple[str, ...]]
    column_labels: list[str]
    cells: dict[tuple[tuple[str, ...], str], TableEntry]  # (row labels, column label) -> its entry
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def cell(self, row: Sequence[str] | str, column: str) -> TableEntry:
        labels = (row,) if isinstance(row, str) else tuple(row)
        try:
            return self.cells[(labels, column)]
        except KeyError:
            raise KeyError(f"table {self.spec.name} has no cell ({labels}, {column!r})") from None

    def render(self, fmt: str = "md") -> str:
        renderers = {"md": self.to_markdown, "csv": self.to_csv, "latex": self.to_latex}
        if fmt not in renderers:
            raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(renderers)}")
        return renderers[fmt]()

    def to_markdown(self) -> str:
        return render.table_markdown(self)

    def to_latex(self) -> str:
        return render.table_latex(self)

    def to_csv(self) -> str:
        return render.table_csv(self)

    def plot_series(self, metric: str | None = None, rows: Sequence[str] | None = None
                    ) -> tuple[list[str], list[float] | None, dict[str, list[tuple[int, TableEntry]]]]:
        """What `plot` draws: (x labels, numeric x or None, {row label: [(column index, entry), ...]}).

        Only the columns whose entries report `metric` (default: the table's own metric, e.g. the last epoch
        for DP-SEP, the best epoch for TANGO) are drawn, so a table that prints the same noise twice (last |
        best) gives one line per row, not a zigzag. The x axis is the noise rate in % when every drawn
        column is `clean` or one noise family at several rates (sym40, sym60), else the column labels in
        table order. Rows without a single number are left out; missing entries leave gaps. `rows` (row labels
        as printed, e.g. model names) keeps only those rows, in that order, so one table can give one figure
        per claim; an unknown label raises ValueError naming the valid ones."""
        metric = metric or self.spec.metric
        row_labels = self._select_rows(rows)
        columns = [c for c in self.column_labels
                   if any(self.cells[(r, c)].metric == metric for r in row_labels)]
        xs = render.noise_rates(columns)
        series: dict[str, list[tuple[int, TableEntry]]] = {}
        for labels in row_labels:
            row = [(i, self.cells[(labels, c)]) for i, c in enumerate(columns)]
            pts = [(i, entry) for i, entry in row if entry.mean is not None and entry.metric == metric]
            if pts:
                series[" / ".join(labels)] = pts
        return columns, xs, series

    def _select_rows(self, rows: Sequence[str] | None) -> list:
        if not rows:
            return list(self.row_labels)
        by_name = {" / ".join(labels): labels for labels in self.row_labels}
        unknown = [r for r in rows if r not in by_name]
        if unknown:
            raise ValueError(f"table {self.spec.name} has no row {', '.join(map(repr, unknown))}; "
                             f"its rows: {', '.join(by_name)}")
        return [by_name[r] for r in dict.fromkeys(rows)]

    def plot(self, path: str | Path, metric: str | None = None, rows: Sequence[str] | None = None) -> Path:
        """A line plot of the table: accuracy (mean ± sample std over seeds) against the columns, one line
        per row (method / reading), or per row listed in `rows`. Raises ValueError when the table has no
        number to draw or `rows` names a row it does not have."""
        metric = metric or self.spec.metric
        columns, xs, series = self.plot_series(metric, rows)
        if not series:
            raise ValueError(f"table {self.spec.name}: no {metric} numbers under {self.root} to plot")
        pos = xs if xs is not None else list(range(len(columns)))
        return render.line_plot(
            path, [(label, [pos[i] for i, _ in pts], [e for _, e in pts]) for label, pts in series.items()],
            xticks=(pos, columns), xlabel="noise rate (%)" if xs is not None else "column",
            ylabel=f"{metric} (mean ± std over seeds)", title=self.spec.title, size=(6.5, 4.2))


def _discovered_layout(spec: TableSpec, runs: Iterable[RunRecord]) -> tuple[tuple[RowSpec, ...], tuple[ColumnSpec, ...]]:
    """Rows and columns of a `discover` table: the values among the matching runs, in the order of the
    table's own grid, then of the grids of the sweeps the runs came from, then by name."""
    d = spec.discover
    assert d is not None
    hits = [r for r in runs if r.key.matches(d.match)]
    sweeps = {r.cell.sweep for r in hits}
    row_order = d.row_order + tuple(v for v in grid_order(d.row_key, sweeps) if v not in d.row_order)
    col_order = d.col_order + tuple(v for v in grid_order(d.col_key, sweeps) if v not in d.col_order)
    row_vals = sorted({getattr(r.key, d.row_key) for r in hits}, key=value_order(row_order))
    col_vals = sorted({getattr(r.key, d.col_key) for r in hits}, key=value_order(col_order))
    rows = tuple(RowSpec((str(v),), {d.row_key: v, **d.match}) for v in row_vals)
    cols = tuple(ColumnSpec(str(v), {d.col_key: v}) for v in col_vals)
    return rows, cols


def aggregate_runs(loaded: LoadedRuns, table: str | TableSpec, *, backbone: str | None = None) -> AggregatedTable:
    """Lay out already-loaded runs as one table. `backbone` restricts every entry whose filter does
    not name a backbone itself (useful when several backbones were run for the same table)."""
    spec = get_table(table) if isinstance(table, str) else table
    paper = load_paper_numbers(spec)
    if spec.discover is not None:
        rows, columns = _discovered_layout(spec, loaded.runs)
    else:
        rows, columns = spec.rows, spec.columns
    result = AggregatedTable(spec=spec, root=loaded.root, row_labels=[r.labels for r in rows],
                             column_labels=[c.label for c in columns], cells={},
                             warnings=list(loaded.warnings), notes=list(loaded.notes))
    for row in rows:
        for col in columns:
            metric = spec.cell_metric(row, col)
            number = paper.get(row.labels, {}).get(col.label)
            filt = spec.cell_filter(row, col)
            if filt is None:
                result.cells[(row.labels, col.label)] = TableEntry(status=NOT_RUN, metric=metric, paper=number)
                continue
            if backbone is not None:
                filt.setdefault("backbone", backbone)
            matching = [r for r in loaded.runs if r.key.matches(filt)]
            entry = aggregate_entry(matching, metric, number)
            where = f"{spec.name} [{'/'.join(row.labels)} | {col.label}]"
            if entry.status == AMBIGUOUS:
                result.warnings.append(
                    f"{where}: runs of {len(entry.keys)} different cells match "
                    f"({'; '.join(k.label() for k in entry.keys)}); pass --backbone to choose"
                )
            elif entry.status == NO_METRIC:
                result.warnings.append(f"{where}: {len(matching)} run(s) found but none reports '{metric}'")
            elif entry.status == OK and entry.n < sum(r.ok for r in matching):
                result.warnings.append(
                    f"{where}: {sum(r.ok for r in matching) - entry.n} successful run(s) lack '{metric}'"
                )
            if entry.failed_seeds:
                result.warnings.append(
                    f"{where}: seed(s) {', '.join(map(str, entry.failed_seeds))} failed: {'; '.join(dict.fromkeys(entry.errors))}"
                )
            result.cells[(row.labels, col.label)] = entry
    if spec.discover is not None and not rows:
        result.warnings.append(f"{spec.name}: no runs match {dict(spec.discover.match)}")
    return result


def aggregate(root: str | Path, table: str | TableSpec, *, backbone: str | None = None) -> AggregatedTable:
    """Glob every results.json/failed.json under `root` and lay them out as `table`."""
    return aggregate_runs(load_runs(root), table, backbone=backbone)
