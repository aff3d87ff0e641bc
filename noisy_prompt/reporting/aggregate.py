"""Collect every run's `results.json` / `failed.json` under a root and lay them out as a paper table.

Runs are identified by the cell written inside the files (model, data, noise, backbone, train_data,
seed and the settings: non-cell-key overrides such as model.lam=0.2), never by directory names, so
any directory layout aggregates the same way. Paper tables ignore settings when matching, so runs of
one cell that differ only in settings show as "ambiguous" there; `--by KEY` lays them out instead:
one table per hyperparameter (rows: cells, columns: the values of KEY) and a line plot.
Each printed cell is mean ± sample std (ddof=1) over seeds, with n, the paper's number and
Δ = ours − paper. Missing cells print "—" (never 0), failed cells print "failed".

CLI: python -m noisy_prompt.aggregate <root> --table dpsep_table1 [--format md|csv|latex] [--out FILE] [--plot PNG]
     python -m noisy_prompt.aggregate <root> --label-issues [--format md|csv]   (or --table label_issues)
     python -m noisy_prompt.aggregate <root> --by model.lam [--by model.sigma ...] [--metric test/acc] [--plot-dir DIR]
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import statistics
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from noisy_prompt.cell import FAILED as FAILED_FILE
from noisy_prompt.cell import RESULTS, CellKey, Record, read_record
from noisy_prompt.reporting.tables import (
    MODEL_ORDER,
    NOISE_ORDER,
    TABLES,
    ColumnSpec,
    RowSpec,
    TableSpec,
    get_table,
    load_paper_numbers,
)

RESULT_FILES = (RESULTS, FAILED_FILE)
DASH = "—"

# Cell statuses (CellResult.status)
OK, MISSING, FAILED, AMBIGUOUS, NO_METRIC, NOT_RUN = "ok", "missing", "failed", "ambiguous", "no_metric", "not_run"


# --------------------------------------------------------------------------------------------------
# Loading runs


# One record per run file, read by the cell contract (noisy_prompt.cell): identity = cell keys + settings.
RunRecord = Record


@dataclass
class LoadedRuns:
    root: Path
    runs: list[RunRecord]  # one per (key, seed): duplicates and superseded failures removed
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def load_runs(root: str | Path) -> LoadedRuns:
    """Every run under `root`, one record per (cell, seed).

    Duplicates of one (cell, seed) are reported and the first in sorted relative-path order is
    kept. A success supersedes failures of the same (cell, seed) (a re-run after a crash).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"results root {root} is not a directory")
    paths = sorted((p for name in RESULT_FILES for p in root.rglob(name) if p.is_file()),
                   key=lambda p: _rel(p, root))
    loaded = LoadedRuns(root=root, runs=[])
    by_cell: dict[tuple[CellKey, int], dict[bool, list[RunRecord]]] = {}
    for path in paths:
        try:
            record = read_record(path)
        except ValueError as err:
            loaded.warnings.append(f"skipped unreadable run file: {err}")
            continue
        by_cell.setdefault((record.key, record.seed), {True: [], False: []})[record.ok].append(record)
    if not paths:
        loaded.warnings.append(f"no results.json or failed.json found under {root}")

    for (key, seed), groups in sorted(by_cell.items(), key=lambda kv: (kv[0][0].sort_key(), kv[0][1])):
        oks, fails = groups[True], groups[False]
        chosen = oks or fails
        if len(chosen) > 1:
            kind = "results" if oks else "failures"
            loaded.warnings.append(
                f"duplicate {kind} for {key.label()} seed {seed}: keeping {_rel(chosen[0].path, root)}; "
                f"ignoring {', '.join(_rel(r.path, root) for r in chosen[1:])}"
            )
        if oks and fails:
            loaded.notes.append(
                f"{key.label()} seed {seed}: failure(s) {', '.join(_rel(r.path, root) for r in fails)} "
                f"superseded by {_rel(oks[0].path, root)}"
            )
        loaded.runs.append(chosen[0])
    return loaded


# --------------------------------------------------------------------------------------------------
# Aggregation


@dataclass
class CellResult:
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


@dataclass
class AggregatedTable:
    spec: TableSpec
    root: Path
    row_labels: list[tuple[str, ...]]
    column_labels: list[str]
    cells: dict[tuple[tuple[str, ...], str], CellResult]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def cell(self, row: Sequence[str] | str, column: str) -> CellResult:
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

    # ----- formats

    def metric_description(self) -> str:
        metrics = {col: cell.metric for (row, col), cell in self.cells.items() if cell.status != NOT_RUN}
        distinct = sorted(set(metrics.values()))
        if len(distinct) <= 1:
            return distinct[0] if distinct else self.spec.metric
        per_col: dict[str, set[str]] = {}
        for (row, col), cell in self.cells.items():
            if cell.status != NOT_RUN:
                per_col.setdefault(col, set()).add(cell.metric)
        return "; ".join(f"{col}: {'/'.join(sorted(ms))}" for col, ms in per_col.items())

    def to_markdown(self) -> str:
        header = [*self.spec.row_key_names, *self.column_labels]
        lines = [
            f"### {self.spec.name}: {self.spec.title}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] * len(self.spec.row_key_names) + [":---:"] * len(self.column_labels)) + "|",
        ]
        for labels in self.row_labels:
            texts = [format_cell(self.cells[(labels, c)], _MD) for c in self.column_labels]
            lines.append("| " + " | ".join([*labels, *texts]) + " |")
        lines += ["", self._legend(_MD)]
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        k = len(self.spec.row_key_names)
        cols = "l" * k + "c" * len(self.column_labels)
        header = [latex_escape(h) for h in (*self.spec.row_key_names, *self.column_labels)]
        lines = [
            f"% {self.spec.name}: {self.spec.title}",
            f"% {self._legend(_PLAIN)}",
            f"\\begin{{tabular}}{{{cols}}}",
            "\\hline",
            " & ".join(header) + " \\\\",
            "\\hline",
        ]
        for labels in self.row_labels:
            texts = [format_cell(self.cells[(labels, c)], _LATEX) for c in self.column_labels]
            lines.append(" & ".join([*(latex_escape(x) for x in labels), *texts]) + " \\\\")
        lines += ["\\hline", "\\end{tabular}"]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """Wide CSV in the paper's layout; per column: mean, std, n, n_failed, paper, diff, status.
        Missing numbers are empty fields (status says why), so the file parses as numbers."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        fields = ("", "_std", "_n", "_n_failed", "_paper", "_diff", "_status")
        writer.writerow([*self.spec.row_key_names, *(c + f for c in self.column_labels for f in fields)])
        for labels in self.row_labels:
            row: list[str] = list(labels)
            for c in self.column_labels:
                cell = self.cells[(labels, c)]
                row += [_num(cell.mean), _num(cell.std), str(cell.n), str(cell.n_failed),
                        _num(cell.paper), _num(cell.diff), cell.status]
            writer.writerow(row)
        return buf.getvalue()

    def plot_series(self, metric: str | None = None, rows: Sequence[str] | None = None
                    ) -> tuple[list[str], list[float] | None, dict[str, list[tuple[int, CellResult]]]]:
        """What `plot` draws: (x labels, numeric x or None, {row label: [(column index, cell), ...]}).

        Only the columns whose cells report `metric` (default: the table's own metric, e.g. the last epoch
        for DP-SEP, the best epoch for TANGO) are drawn, so a table that prints the same noise twice (last |
        best) gives one line per row, not a zigzag. The x axis is the noise rate in % when every drawn
        column is `clean` or one noise family at several rates (sym40, sym60), else the column labels in
        table order. Rows without a single number are left out; missing cells leave gaps. `rows` (row labels
        as printed, e.g. model names) keeps only those rows, in that order, so one table can give one figure
        per claim; an unknown label raises ValueError naming the valid ones."""
        metric = metric or self.spec.metric
        row_labels = self._select_rows(rows)
        columns = [c for c in self.column_labels
                   if any(self.cells[(r, c)].metric == metric for r in row_labels)]
        xs = _noise_rates(columns)
        series: dict[str, list[tuple[int, CellResult]]] = {}
        for labels in row_labels:
            row = [(i, self.cells[(labels, c)]) for i, c in enumerate(columns)]
            pts = [(i, cell) for i, cell in row if cell.mean is not None and cell.metric == metric]
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
        return _line_plot(path, [(label, [pos[i] for i, _ in pts], [c for _, c in pts]) for label, pts in series.items()],
                          xticks=(pos, columns), xlabel="noise rate (%)" if xs is not None else "column",
                          ylabel=f"{metric} (mean ± std over seeds)", title=self.spec.title, size=(6.5, 4.2))

    def _legend(self, style: "_Style") -> str:
        return (f"Cells: ours = mean {style.pm} sample std (ddof=1) over n seeds of {self.metric_description()}"
                f"{style.sep}paper = published number{style.sep}{style.delta} = ours {style.minus} paper; "
                f"{style.dash} = not found; n/a = not run by this project.")


def _line_plot(path: str | Path, series: Iterable[tuple[str, Sequence[float], Sequence[CellResult]]], *,
               xticks: tuple[Sequence[float], Sequence[str]] | None, xlabel: str, ylabel: str,
               title: str | None = None, size: tuple[float, float] = (6.0, 4.0)) -> Path:
    """One errorbar line (mean ± sample std over seeds) per (label, xs, cells); the PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    for label, xs, cells in series:
        ax.errorbar(list(xs), [c.mean for c in cells], yerr=[c.std or 0.0 for c in cells],
                    marker="o", capsize=3, label=label)
    if xticks is not None:
        ax.set_xticks(*xticks)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:  # wrapped: a table's title is often wider than the figure
        ax.set_title(textwrap.fill(title, width=95), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _noise_rates(columns: Sequence[str]) -> list[float] | None:
    """[0, 40, 60] for ["clean", "sym40", "sym60"]; None unless every label is `clean` or one family
    (letters) followed by a rate, so mixed columns (datasets, sym vs inst) stay categorical."""
    rates, families = [], set()
    for c in columns:
        if c == "clean":
            rates.append(0.0)
            continue
        m = re.fullmatch(r"([a-z_]+?)(\d+(?:\.\d+)?)", c)
        if not m:
            return None
        families.add(m.group(1))
        rates.append(float(m.group(2)))
    if len(families) > 1 or len(set(rates)) != len(rates):
        return None
    return rates


def _num(x: float | None) -> str:
    return "" if x is None else repr(round(x, 6))


@dataclass(frozen=True)
class _Style:
    pm: str
    sep: str
    delta: str
    dash: str
    minus: str


_MD = _Style(pm="±", sep=" · ", delta="Δ", dash=DASH, minus="−")
_PLAIN = _Style(pm="+-", sep=" / ", delta="diff", dash="-", minus="-")
_LATEX = _Style(pm="$\\pm$", sep=" / ", delta="$\\Delta$", dash="---", minus="$-$")


def format_cell(cell: CellResult, style: _Style = _MD) -> str:
    """Human text of one cell: ours (mean ± std, n), then the paper's number and Δ when known."""
    if cell.status == OK:
        counts = f"n={cell.n}" + (f", {cell.n_failed} failed" if cell.n_failed else "")
        ours = f"{cell.mean:.2f}" + (f" {style.pm} {cell.std:.2f}" if cell.std is not None else "") + f" ({counts})"
    elif cell.status == FAILED:
        ours = f"failed (n=0, {cell.n_failed} failed)"
    elif cell.status == AMBIGUOUS:
        ours = f"ambiguous ({len(cell.keys)} cells)"
    elif cell.status == NO_METRIC:
        ours = f"{style.dash} (no {cell.metric})"
    elif cell.status == NOT_RUN:
        ours = "n/a"
    else:
        ours = style.dash
    if style is _LATEX:
        ours = ours.replace("_", "\\_")
    if cell.paper is None:
        return ours
    text = f"{ours}{style.sep}paper {cell.paper:.2f}"
    diff = cell.diff
    if diff is not None:
        sign = "+" if diff >= 0 else style.minus
        text += f"{style.sep}{style.delta} {sign}{abs(diff):.2f}"
    return text


def latex_escape(text: str) -> str:
    out = text
    for ch, rep in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("$", "\\$"),
                    ("#", "\\#"), ("_", "\\_"), ("{", "\\{"), ("}", "\\}")):
        out = out.replace(ch, rep)
    return out


def _metric_value(run: RunRecord, metric: str) -> float | None:
    value = run.metrics.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _order_key(order: Sequence[str]):
    rank = {v: i for i, v in enumerate(order)}
    return lambda v: (rank.get(v, len(rank)), v)


def _discovered_layout(spec: TableSpec, runs: Iterable[RunRecord]) -> tuple[tuple[RowSpec, ...], tuple[ColumnSpec, ...]]:
    d = spec.discover
    assert d is not None
    hits = [r.key for r in runs if r.key.matches(d.match)]
    row_vals = sorted({getattr(k, d.row_key) for k in hits}, key=_order_key(MODEL_ORDER if d.row_key == "model" else ()))
    col_vals = sorted({getattr(k, d.col_key) for k in hits}, key=_order_key(NOISE_ORDER if d.col_key == "noise" else ()))
    rows = tuple(RowSpec((str(v),), {d.row_key: v, **d.match}) for v in row_vals)
    cols = tuple(ColumnSpec(str(v), {d.col_key: v}) for v in col_vals)
    return rows, cols


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else "no error message"


def _aggregate_cell(runs: Sequence[RunRecord], metric: str, paper: float | None) -> CellResult:
    keys = tuple(sorted({r.key for r in runs}, key=CellKey.sort_key))
    paths = tuple(r.path for r in runs)
    if not runs:
        return CellResult(status=MISSING, metric=metric, paper=paper)
    if len(keys) > 1:
        return CellResult(status=AMBIGUOUS, metric=metric, paper=paper, keys=keys, paths=paths)
    failed = tuple(sorted(r.seed for r in runs if not r.ok))
    errors = tuple(_first_line(r.error) for r in sorted(runs, key=lambda r: r.seed) if not r.ok)
    measured = sorted((r.seed, v) for r in runs if r.ok and (v := _metric_value(r, metric)) is not None)
    if not measured:
        status = FAILED if failed and not any(r.ok for r in runs) else NO_METRIC
        return CellResult(status=status, metric=metric, paper=paper, failed_seeds=failed, keys=keys, paths=paths,
                          errors=errors)
    values = tuple(v for _, v in measured)
    return CellResult(
        status=OK, metric=metric, mean=statistics.fmean(values),
        std=statistics.stdev(values) if len(values) > 1 else None,
        n=len(values), seeds=tuple(s for s, _ in measured), values=values, failed_seeds=failed,
        paper=paper, keys=keys, paths=paths, errors=errors,
    )


def aggregate_runs(loaded: LoadedRuns, table: str | TableSpec, *, backbone: str | None = None) -> AggregatedTable:
    """Lay out already-loaded runs as one table. `backbone` restricts every cell whose filter does
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
                result.cells[(row.labels, col.label)] = CellResult(status=NOT_RUN, metric=metric, paper=number)
                continue
            if backbone is not None:
                filt.setdefault("backbone", backbone)
            matching = [r for r in loaded.runs if r.key.matches(filt)]
            cell = _aggregate_cell(matching, metric, number)
            where = f"{spec.name} [{'/'.join(row.labels)} | {col.label}]"
            if cell.status == AMBIGUOUS:
                result.warnings.append(
                    f"{where}: runs of {len(cell.keys)} different cells match "
                    f"({'; '.join(k.label() for k in cell.keys)}); pass --backbone to choose"
                )
            elif cell.status == NO_METRIC:
                result.warnings.append(f"{where}: {len(matching)} run(s) found but none reports '{metric}'")
            elif cell.status == OK and cell.n < sum(r.ok for r in matching):
                result.warnings.append(
                    f"{where}: {sum(r.ok for r in matching) - cell.n} successful run(s) lack '{metric}'"
                )
            if cell.failed_seeds:
                result.warnings.append(
                    f"{where}: seed(s) {', '.join(map(str, cell.failed_seeds))} failed: {'; '.join(dict.fromkeys(cell.errors))}"
                )
            result.cells[(row.labels, col.label)] = cell
    if spec.discover is not None and not rows:
        result.warnings.append(f"{spec.name}: no runs match {dict(spec.discover.match)}")
    return result


def aggregate(root: str | Path, table: str | TableSpec, *, backbone: str | None = None) -> AggregatedTable:
    """Glob every results.json/failed.json under `root` and lay them out as `table`."""
    return aggregate_runs(load_runs(root), table, backbone=backbone)


# --------------------------------------------------------------------------------------------------
# Sensitivity: one table per hyperparameter


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
    cells: dict[tuple[CellKey, str], CellResult]
    warnings: list[str] = field(default_factory=list)

    def render(self, fmt: str = "md") -> str:
        if fmt == "csv":
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(["cell", self.by, "mean", "std", "n", "n_failed", "status"])
            for row in self.rows:
                for v in self.values:
                    c = self.cells[(row, v)]
                    writer.writerow([row.label(), v, _num(c.mean), _num(c.std), c.n, c.n_failed, c.status])
            return buf.getvalue()
        head = ["cell", *(f"{self.by}={v}" for v in self.values)]
        lines = [f"### sensitivity to {self.by}: {self.metric}", "", "| " + " | ".join(head) + " |",
                 "|---|" + "|".join([":---:"] * len(self.values)) + "|"]
        for row in self.rows:
            lines.append("| " + " | ".join([row.label(), *(format_cell(self.cells[(row, v)]) for v in self.values)]) + " |")
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
        return _line_plot(path, series, xticks=None if numeric else (xs, self.values), xlabel=self.by,
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
            table.cells[(row, v)] = _aggregate_cell([_with_key(r, row) for r in runs], metric, None)
    if not rows:
        table.warnings.append(f"no run under {loaded.root} has a value for {by!r}")
    return table


def _with_key(run: RunRecord, key: CellKey) -> RunRecord:
    from dataclasses import replace

    return replace(run, cell=replace(run.cell, key=key))


# --------------------------------------------------------------------------------------------------
# Label-issue comparison: how well each method's clean verdicts find the samples whose label is right

# The rows are read from the records: every model with a run that carries a label-issue report
# (results.json "label_issues" / label_issues/* metrics, written by every method that trains on labels) or
# per-epoch clean verdicts (results.json "purification" / purify/* metrics: TANGO and its baselines; older
# records have only these). Print order: tables.MODEL_ORDER, then the other models by name.
# (column label, key of a per-epoch record in results.json["purification"] or None, metric in
# results.json["metrics"]: the record's fallback, or the column's source); fractions, printed as %.
LABEL_ISSUE_STATS: tuple[tuple[str, str | None, str | None], ...] = (
    ("true_clean", "noisy_label_acc", None),  # share of given labels that are right: the noise cell's truth
    ("selected", "clean_fraction", "purify/clean_fraction_last"),
    ("precision", "precision", "purify/precision_last"),
    ("recall", "recall", "purify/recall_last"),
    ("suggested_acc", "soft_label_acc", "purify/soft_label_acc_last"),  # where a method suggests labels
    # The label-issue report (methods/selection.py): the verdicts as a detector of the WRONG labels, and the
    # final classifier's self-confidence ranking (precision of its top K, K = the number of wrong labels).
    ("issue_precision", None, "label_issues/verdict_precision"),
    ("issue_recall", None, "label_issues/verdict_recall"),
    ("rank_precision", None, "label_issues/precision_at_noisy"),
    ("auroc", None, "label_issues/auroc"),
)
REPORT_METRIC_PREFIXES = ("label_issues/", "purify/")
LABEL_ISSUE_TABLE = "label_issues"


@dataclass
class LabelIssueGroup:
    """One method on one noise cell: the last-epoch verdict stats of each seed."""

    method: str
    cell: CellKey  # the cell with model="" (data, noise, backbone, train_data, settings)
    seeds: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)  # column label -> one value per seed that has it
    epochs: list[int] = field(default_factory=list)  # the epoch of each seed's last record

    def stat(self, column: str) -> tuple[float | None, float | None, int]:
        vals = self.values.get(column, [])
        if not vals:
            return None, None, 0
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)


@dataclass
class LabelIssueTable:
    root: Path
    groups: list[LabelIssueGroup]
    warnings: list[str] = field(default_factory=list)

    def group(self, method: str, **cell: str) -> LabelIssueGroup:
        hits = [g for g in self.groups if g.method == method and all(getattr(g.cell, k) == v for k, v in cell.items())]
        if len(hits) != 1:
            raise KeyError(f"label_issues: {len(hits)} groups match method={method!r} {cell}")
        return hits[0]

    def render(self, fmt: str = "md") -> str:
        if fmt == "csv":
            return self.to_csv()
        if fmt == "md":
            return self.to_markdown()
        raise ValueError(f"the label-issue table is written as md or csv, not {fmt!r}")

    def to_markdown(self) -> str:
        cols = [c for c, _, _ in LABEL_ISSUE_STATS]
        lines = [f"### {LABEL_ISSUE_TABLE}: clean-sample and label-issue detection (%)", "",
                 "| data | noise | backbone | settings | method | n | " + " | ".join(cols) + " |",
                 "|---|---|---|---|---|:---:|" + "|".join([":---:"] * len(cols)) + "|"]
        for g in self.groups:
            texts = []
            for c in cols:
                mean, std, n = g.stat(c)
                if mean is None:
                    texts.append(DASH)
                    continue
                text = f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")
                texts.append(text + (f" (n={n})" if n != len(g.seeds) else ""))
            k = g.cell
            lines.append("| " + " | ".join([k.data, k.noise, str(k.backbone), k.settings_label() or DASH, g.method,
                                            str(len(g.seeds)), *texts]) + " |")
        lines += ["", "Per method and noise cell, mean ± sample std (ddof=1) over n seeds. From the clean/noisy "
                      "verdicts of each run's last per-epoch record (results.json \"purification\"; DeFT: its "
                      "phase-1 detector): true_clean = share of given labels that are right, selected = share "
                      "judged clean, precision / recall of the clean verdicts against the right labels, "
                      "suggested_acc = accuracy of the method's suggested labels. From the label-issue report "
                      "(label_issues.csv: the final classifier over the training set): issue_precision / "
                      "issue_recall of the verdicts as a detector of the wrong labels, rank_precision = share of "
                      "wrong labels among the K lowest self-confidence scores (K = the number of wrong labels), "
                      f"auroc of that score. {DASH} = not reported (true labels unknown, the method makes no "
                      "verdicts or suggests no labels, or an older record)."]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        cols = [c for c, _, _ in LABEL_ISSUE_STATS]
        writer.writerow(["data", "noise", "backbone", "train_data", "settings", "method", "n", "seeds",
                         *(c + f for c in cols for f in ("", "_std", "_n"))])
        for g in self.groups:
            k = g.cell
            row = [k.data, k.noise, k.backbone or "", k.train_data, k.settings_label(), g.method, len(g.seeds),
                   " ".join(map(str, g.seeds))]
            for c in cols:
                mean, std, n = g.stat(c)
                row += [_num(mean), _num(std), n]
            writer.writerow(row)
        return buf.getvalue()


def _carries_report(run: RunRecord, payload: Mapping[str, Any]) -> bool:
    """Whether a run's record carries a label-issue report or clean verdicts (new and old records alike)."""
    if any(k.startswith(REPORT_METRIC_PREFIXES) for k in run.metrics):
        return True
    return "label_issues" in payload or "purification" in payload


def _label_issue_values(run: RunRecord, payload: Mapping[str, Any]) -> tuple[dict[str, float], int | None, str | None]:
    """(column -> value, epoch of the last verdict record, why there are none) of one successful run.

    The verdict columns come from the last per-epoch record of results.json "purification", or else from
    the `purify/*_last` metrics (which lack the true clean share); the report columns from `label_issues/*`."""
    history = payload.get("purification")
    record: dict[str, Any] = {}
    if history is not None:
        if not isinstance(history, list) or not all(isinstance(r, Mapping) for r in history):
            return {}, None, f"{run.path}: 'purification' must be a list of per-epoch objects"
        if history:
            record = dict(history[-1])
    values: dict[str, float] = {}
    for column, key, metric in LABEL_ISSUE_STATS:
        if record and key:
            value = record.get(key)  # the record, when there is one, without mixing in the summary metrics
        else:
            value = run.metrics.get(metric) if metric else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            values[column] = float(value)
    rate = run.metrics.get("label_issues/noise_rate")
    if "true_clean" not in values and isinstance(rate, (int, float)) and math.isfinite(rate):
        values["true_clean"] = 1.0 - float(rate)
    if set(values) <= {"true_clean"}:
        return {}, None, (f"{run.path}: no per-epoch clean verdicts and no label-issue metrics (results.json "
                          "has no 'purification' records and no label_issues/* metrics)")
    epoch = record.get("epoch")
    return values, int(epoch) if isinstance(epoch, (int, float)) else None, None


def label_issue_table(loaded: LoadedRuns, methods: Sequence[str] | None = None, *,
                      backbone: str | None = None) -> LabelIssueTable:
    """Per method x noise cell: precision / recall of the clean verdicts, the share judged clean, the accuracy
    of suggested labels, beside the true clean share (from each successful run's last per-epoch record), and
    the label-issue report's verdict and ranking metrics.

    `methods` (in that order) restricts the rows; by default they are every model with a record that carries
    a report or verdicts, in tables.MODEL_ORDER and then by name. Failed runs (of those models; of any model
    by default) are listed in the warnings."""
    from noisy_prompt.cell import read_json

    groups: dict[tuple[str, CellKey], LabelIssueGroup] = {}
    table = LabelIssueTable(root=loaded.root, groups=[], warnings=list(loaded.warnings))
    for run in loaded.runs:
        if (methods is not None and run.key.model not in methods) or (backbone is not None and run.key.backbone != backbone):
            continue
        cell = replace_model(run.key, "")
        if not run.ok:
            table.warnings.append(f"{run.key.label()} seed {run.seed} failed: {_first_line(run.error)}")
            continue
        try:
            payload = read_json(run.path)
        except (OSError, ValueError) as err:
            table.warnings.append(f"cannot read {run.path}: {err}")
            continue
        if methods is None and not _carries_report(run, payload):
            continue  # a model that writes no report (zero-shot), or an older record of one that trains
        group = groups.setdefault((run.key.model, cell), LabelIssueGroup(method=run.key.model, cell=cell))
        values, epoch, why = _label_issue_values(run, payload)
        if why is not None:
            table.warnings.append(why)
            continue
        group.seeds.append(run.seed)
        if epoch is not None:
            group.epochs.append(epoch)
        for column, value in values.items():
            group.values.setdefault(column, []).append(value)
    if methods is not None:
        rank = {m: (i, "") for i, m in enumerate(methods)}
    else:
        order = {m: i for i, m in enumerate(MODEL_ORDER)}
        rank = {m: (order.get(m, len(order)), m) for m, _ in groups}
    # one block per noise cell (noises in NOISE_ORDER), the methods in `rank` order inside it
    table.groups = sorted((g for g in groups.values() if g.seeds),
                          key=lambda g: (g.cell.data, g.cell.backbone or "", g.cell.train_data,
                                         _order_key(NOISE_ORDER)(g.cell.noise), g.cell.settings, rank[g.method]))
    for g in groups.values():
        if not g.seeds:
            table.warnings.append(f"label_issues: {g.method} on {g.cell.data}/{g.cell.noise}: no run with verdicts")
    if not table.groups:
        which = f"of {', '.join(methods)} " if methods is not None else ""
        table.warnings.append(f"label_issues: no run {which}with clean verdicts or a label-issue report under "
                              f"{loaded.root}")
    return table


def replace_model(key: CellKey, model: str) -> CellKey:
    return CellKey(model, key.data, key.noise, key.backbone, key.train_data, key.settings)


# --------------------------------------------------------------------------------------------------
# CLI


def _comma_list(text: str) -> list[str]:
    """'a, b,,a' -> ['a', 'b']: the values of a comma-separated option, blanks and repeats dropped."""
    return list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m noisy_prompt.aggregate",
        description="Aggregate results.json files into a paper table (mean ± std over seeds, paper numbers beside).",
    )
    parser.add_argument("root", type=Path, nargs="?", help="directory searched recursively for results.json/failed.json")
    parser.add_argument("--table", default=None, help=f"one of: {', '.join(TABLES)}, or 'all' (md/latex only)")
    parser.add_argument("--format", choices=("md", "csv", "latex"), default="md")
    parser.add_argument("--out", type=Path, default=None, help="write here instead of stdout")
    parser.add_argument("--backbone", default=None, help="use only runs with this backbone (where the table does not fix one)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when there are warnings")
    parser.add_argument("--list", action="store_true", help="list the known tables and exit")
    parser.add_argument("--by", action="append", default=[], metavar="KEY",
                        help="sensitivity: one table (and line plot) per hyperparameter KEY, e.g. model.lam (repeatable)")
    parser.add_argument("--metric", default="test/acc", help="metric of the --by tables (default test/acc)")
    parser.add_argument("--plot-dir", type=Path, default=None,
                        help="where the --by line plots go (default: the results root)")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG",
                        help="also draw the table as a line plot (mean ± std over seeds vs the columns, one line "
                             "per row) into this file; one table only")
    parser.add_argument("--plot-rows", default=None, metavar="ROW[,ROW...]",
                        help="draw only these rows (their printed labels, e.g. model names), in this order")
    parser.add_argument("--label-issues", action="store_true",
                        help=f"the label-issue comparison table (same as --table {LABEL_ISSUE_TABLE}): per noise cell, "
                             "precision/recall of the clean verdicts and of the label-issue ranking of every method "
                             "whose runs carry them (md or csv)")
    parser.add_argument("--methods", default=None, metavar="MODEL[,MODEL...]",
                        help="--label-issues: these models instead (e.g. TANGO's readings tango,tango_literal), in "
                             "this order")
    return parser


def _main_label_issues(args) -> int:
    if args.format == "latex":
        print("error: the label-issue table is written as md or csv, not latex", file=sys.stderr)
        return 2
    try:
        loaded = load_runs(args.root)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    methods = tuple(_comma_list(args.methods)) if args.methods else None
    table = label_issue_table(loaded, methods, backbone=args.backbone)
    text = table.render(args.format)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    for note in loaded.notes:
        print(f"note: {note}", file=sys.stderr)
    warnings = list(dict.fromkeys(table.warnings))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 1 if (args.strict and warnings) else 0


def _main_by(args) -> int:
    try:
        loaded = load_runs(args.root)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tables = [sensitivity(loaded, key, args.metric) for key in args.by]
    text = "\n".join(t.render("csv" if args.format == "csv" else "md") for t in tables)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    for t in tables:
        if t.rows:
            path = t.plot((args.plot_dir or args.root) / f"sensitivity_{t.by.replace('/', '_')}.png")
            print(f"plot: {path}", file=sys.stderr)
    warnings = list(dict.fromkeys(w for t in tables for w in t.warnings))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 1 if (args.strict and warnings) else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for name, spec in TABLES.items():
            print(f"{name}\t{spec.title}")
        print(f"{LABEL_ISSUE_TABLE}\tlabel-issue detection of every method whose runs carry a report (or --label-issues)")
        return 0
    if args.label_issues or args.table == LABEL_ISSUE_TABLE:
        if args.root is None:
            parser.error("--label-issues needs a results root")
        if args.label_issues and args.table not in (None, LABEL_ISSUE_TABLE):
            parser.error(f"--label-issues is its own table; drop --table {args.table}")
        return _main_label_issues(args)
    if args.methods is not None:
        parser.error("--methods chooses the rows of --label-issues; add --label-issues")
    if args.root is not None and args.by and args.table is None:
        return _main_by(args)
    if args.root is None or args.table is None:
        parser.error("a results root and --table (or --by KEY) are required (or --list)")
    if args.table != "all" and args.table not in TABLES:
        parser.error(f"unknown table {args.table!r}; known: {', '.join(TABLES)}, all")
    if args.table == "all" and args.plot is not None:
        parser.error("--plot draws one table; pick one with --table")
    if args.plot_rows is not None and args.plot is None:
        parser.error("--plot-rows chooses the rows of --plot; add --plot FILE.png")
    rows = _comma_list(args.plot_rows) if args.plot_rows is not None else None
    if args.table == "all" and args.format == "csv":
        parser.error("--table all cannot be written as one CSV; pick one table")
    try:
        loaded = load_runs(args.root)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    names = list(TABLES) if args.table == "all" else [args.table]
    tables = [aggregate_runs(loaded, name, backbone=args.backbone) for name in names]
    text = "\n".join(t.render(args.format) for t in tables)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    if args.plot is not None:
        try:
            print(f"plot: {tables[0].plot(args.plot, rows=rows)}", file=sys.stderr)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    warnings = list(dict.fromkeys(w for t in tables for w in t.warnings))
    for note in loaded.notes:
        print(f"note: {note}", file=sys.stderr)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 1 if (args.strict and warnings) else 0


if __name__ == "__main__":
    raise SystemExit(main())
