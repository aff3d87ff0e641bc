"""How tables are written: one entry as text (Markdown, plain, LaTeX), a table as Markdown, CSV or LaTeX,
and line plots (mean ± sample std over seeds) with matplotlib, imported only when a plot is drawn."""
from __future__ import annotations

import csv
import io
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from noisy_prompt.reporting.entries import AMBIGUOUS, DASH, FAILED, NO_METRIC, NOT_RUN, OK, TableEntry

if TYPE_CHECKING:  # the table imports this module to render itself
    from noisy_prompt.reporting.aggregated import AggregatedTable


def num(x: float | None) -> str:
    """A number as a CSV field: empty when there is none, so the column parses as numbers."""
    return "" if x is None else repr(round(x, 6))


@dataclass(frozen=True)
class Style:
    pm: str
    sep: str
    delta: str
    dash: str
    minus: str


MD = Style(pm="±", sep=" · ", delta="Δ", dash=DASH, minus="−")
PLAIN = Style(pm="+-", sep=" / ", delta="diff", dash="-", minus="-")
LATEX = Style(pm="$\\pm$", sep=" / ", delta="$\\Delta$", dash="---", minus="$-$")


def format_entry(cell: TableEntry, style: Style = MD) -> str:
    """Human text of one entry: ours (mean ± std, n), then the paper's number and Δ when known."""
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
    if style is LATEX:
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


# --------------------------------------------------------------------------------------------------
# A paper table as Markdown, LaTeX, CSV


def metric_description(table: AggregatedTable) -> str:
    metrics = {col: cell.metric for (row, col), cell in table.cells.items() if cell.status != NOT_RUN}
    distinct = sorted(set(metrics.values()))
    if len(distinct) <= 1:
        return distinct[0] if distinct else table.spec.metric
    per_col: dict[str, set[str]] = {}
    for (row, col), cell in table.cells.items():
        if cell.status != NOT_RUN:
            per_col.setdefault(col, set()).add(cell.metric)
    return "; ".join(f"{col}: {'/'.join(sorted(ms))}" for col, ms in per_col.items())


def legend(table: AggregatedTable, style: Style) -> str:
    return (f"Cells: ours = mean {style.pm} sample std (ddof=1) over n seeds of {metric_description(table)}"
            f"{style.sep}paper = published number{style.sep}{style.delta} = ours {style.minus} paper; "
            f"{style.dash} = not found; n/a = not run by this project.")


def table_markdown(table: AggregatedTable) -> str:
    header = [*table.spec.row_key_names, *table.column_labels]
    lines = [
        f"### {table.spec.name}: {table.spec.title}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * len(table.spec.row_key_names) + [":---:"] * len(table.column_labels)) + "|",
    ]
    for labels in table.row_labels:
        texts = [format_entry(table.cells[(labels, c)], MD) for c in table.column_labels]
        lines.append("| " + " | ".join([*labels, *texts]) + " |")
    lines += ["", legend(table, MD)]
    return "\n".join(lines) + "\n"


def table_latex(table: AggregatedTable) -> str:
    k = len(table.spec.row_key_names)
    cols = "l" * k + "c" * len(table.column_labels)
    header = [latex_escape(h) for h in (*table.spec.row_key_names, *table.column_labels)]
    lines = [
        f"% {table.spec.name}: {table.spec.title}",
        f"% {legend(table, PLAIN)}",
        f"\\begin{{tabular}}{{{cols}}}",
        "\\hline",
        " & ".join(header) + " \\\\",
        "\\hline",
    ]
    for labels in table.row_labels:
        texts = [format_entry(table.cells[(labels, c)], LATEX) for c in table.column_labels]
        lines.append(" & ".join([*(latex_escape(x) for x in labels), *texts]) + " \\\\")
    lines += ["\\hline", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def table_csv(table: AggregatedTable) -> str:
    """Wide CSV in the paper's layout; per column: mean, std, n, n_failed, paper, diff, status.
    Missing numbers are empty fields (status says why), so the file parses as numbers."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    fields = ("", "_std", "_n", "_n_failed", "_paper", "_diff", "_status")
    writer.writerow([*table.spec.row_key_names, *(c + f for c in table.column_labels for f in fields)])
    for labels in table.row_labels:
        row: list[str] = list(labels)
        for c in table.column_labels:
            cell = table.cells[(labels, c)]
            row += [num(cell.mean), num(cell.std), str(cell.n), str(cell.n_failed),
                    num(cell.paper), num(cell.diff), cell.status]
        writer.writerow(row)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# Line plots


def line_plot(path: str | Path, series: Iterable[tuple[str, Sequence[float], Sequence[TableEntry]]], *,
              xticks: tuple[Sequence[float], Sequence[str]] | None, xlabel: str, ylabel: str,
              title: str | None = None, size: tuple[float, float] = (6.0, 4.0)) -> Path:
    """One errorbar line (mean ± sample std over seeds) per (label, xs, entries); the PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    for label, xs, entries in series:
        ax.errorbar(list(xs), [e.mean for e in entries], yerr=[e.std or 0.0 for e in entries],
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


def noise_rates(columns: Sequence[str]) -> list[float] | None:
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

