"""The label-issue comparison (`aggregate --label-issues`): how well each method's clean verdicts find the
samples whose label is right, and how well its label-issue report ranks the wrong ones.

The rows are read from the records, not from a list of methods: every model with a run that carries a
label-issue report (results.json "label_issues" / label_issues/* metrics, written by every method that
trains on labels) or per-epoch clean verdicts (results.json "purification" / purify/* metrics: TANGO and
its baselines; older records have only these). Print order: one block per noise cell; inside it the
methods as the grids of the runs' sweep files list them (sweeps/<sweep>.yaml), then the others by name.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from noisy_prompt.cell import CellKey, read_json
from noisy_prompt.reporting.entries import DASH, first_line
from noisy_prompt.reporting.render import num
from noisy_prompt.reporting.runs import LoadedRuns, RunRecord
from noisy_prompt.reporting.tables import grid_order, value_order

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
                row += [num(mean), num(std), n]
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
    a report or verdicts, in the order the grids of their sweep files list them, then by name; the noise
    blocks likewise. Failed runs (of those models; of any model by default) are listed in the warnings."""
    groups: dict[tuple[str, CellKey], LabelIssueGroup] = {}
    table = LabelIssueTable(root=loaded.root, groups=[], warnings=list(loaded.warnings))
    sweeps: set[str] = set()  # the sweeps of the runs shown: their grids give the print order
    for run in loaded.runs:
        if (methods is not None and run.key.model not in methods) or (backbone is not None and run.key.backbone != backbone):
            continue
        cell = replace_model(run.key, "")
        if not run.ok:
            table.warnings.append(f"{run.key.label()} seed {run.seed} failed: {first_line(run.error)}")
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
        sweeps.add(run.cell.sweep)
        if epoch is not None:
            group.epochs.append(epoch)
        for column, value in values.items():
            group.values.setdefault(column, []).append(value)
    noise_rank = value_order(grid_order("noise", sweeps))
    method_rank = ({m: i for i, m in enumerate(methods)}.__getitem__ if methods is not None
                   else value_order(grid_order("model", sweeps)))
    # one block per noise cell, the methods in `method_rank` order inside it
    table.groups = sorted((g for g in groups.values() if g.seeds),
                          key=lambda g: (g.cell.data, g.cell.backbone or "", g.cell.train_data,
                                         noise_rank(g.cell.noise), g.cell.settings, method_rank(g.method)))
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

