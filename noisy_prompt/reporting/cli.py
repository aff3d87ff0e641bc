"""`python -m noisy_prompt.aggregate`: collect every run's `results.json` / `failed.json` under a root and
print them as a paper table, sensitivity tables, or the label-issue comparison.

Runs are identified by the cell written inside the files, never by directory names, so any directory
layout aggregates the same way. Each printed entry is mean ± sample std (ddof=1) over seeds, with n, the
paper's number and Δ = ours − paper. Missing entries print "—" (never 0), failed ones print "failed".

CLI: python -m noisy_prompt.aggregate <root> --table dpsep_table1 [--format md|csv|latex] [--out FILE] [--plot PNG]
     python -m noisy_prompt.aggregate <root> --label-issues [--format md|csv]   (or --table label_issues)
     python -m noisy_prompt.aggregate <root> --by model.lam [--by model.sigma ...] [--metric test/acc] [--plot-dir DIR]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Iterable, Sequence

from noisy_prompt.reporting.aggregated import aggregate_runs
from noisy_prompt.reporting.label_issues import LABEL_ISSUE_TABLE, label_issue_table
from noisy_prompt.reporting.runs import LoadedRuns, load_runs
from noisy_prompt.reporting.sensitivity import sensitivity
from noisy_prompt.reporting.tables import TABLES


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


def _load(root: Path) -> LoadedRuns | None:
    """The runs under `root`, or None (the error printed) when it is not a directory."""
    try:
        return load_runs(root)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return None


def _emit(text: str, warnings: Iterable[str], args, *, notes: Iterable[str] = (),
          then: Callable[[], int] | None = None) -> int:
    """Write `text` to --out (its folder made) or stdout; run `then` (drawing plots: it prints their paths
    and returns a non-zero status to stop with); print each note, then each warning once, to stderr. The
    exit status: 1 under --strict when there is a warning, else 0."""
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    if then is not None and (rc := then()):
        return rc
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    warnings = list(dict.fromkeys(warnings))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 1 if (args.strict and warnings) else 0


def _main_label_issues(args) -> int:
    if args.format == "latex":
        print("error: the label-issue table is written as md or csv, not latex", file=sys.stderr)
        return 2
    if (loaded := _load(args.root)) is None:
        return 2
    methods = tuple(_comma_list(args.methods)) if args.methods else None
    table = label_issue_table(loaded, methods, backbone=args.backbone)
    return _emit(table.render(args.format), table.warnings, args, notes=loaded.notes)


def _main_by(args) -> int:
    if (loaded := _load(args.root)) is None:
        return 2
    tables = [sensitivity(loaded, key, args.metric) for key in args.by]

    def plots() -> int:
        for t in tables:
            if t.rows:
                path = t.plot((args.plot_dir or args.root) / f"sensitivity_{t.by.replace('/', '_')}.png")
                print(f"plot: {path}", file=sys.stderr)
        return 0

    text = "\n".join(t.render("csv" if args.format == "csv" else "md") for t in tables)
    return _emit(text, (w for t in tables for w in t.warnings), args, then=plots)


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
    if (loaded := _load(args.root)) is None:
        return 2
    names = list(TABLES) if args.table == "all" else [args.table]
    tables = [aggregate_runs(loaded, name, backbone=args.backbone) for name in names]

    def plot() -> int:
        if args.plot is not None:
            try:
                print(f"plot: {tables[0].plot(args.plot, rows=rows)}", file=sys.stderr)
            except ValueError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
        return 0

    text = "\n".join(t.render(args.format) for t in tables)
    return _emit(text, (w for t in tables for w in t.warnings), args, notes=loaded.notes, then=plot)


if __name__ == "__main__":
    raise SystemExit(main())
