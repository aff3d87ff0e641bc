"""The label-issue comparison table (aggregate --label-issues) on hand-written results.json files (no training),
and the baseline rows of TANGO's Tables 1-2."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from noisy_prompt.reporting.cli import main
from noisy_prompt.reporting.label_issues import label_issue_table
from noisy_prompt.reporting.runs import load_runs
from noisy_prompt.reporting.tables import get_table, load_paper_numbers

# Rows this project runs beside a paper's that have no paper number: ft_ce, the CE floor.
EXTRA_ROWS = ("ft_ce",)


def write_run(root: Path, model: str, noise: str, seed: int, history: list[dict] | None = None, *,
              data: str = "synthetic_full", metrics: dict | None = None, failed: bool = False,
              sweep: str = "test") -> Path:
    d = root / model / data / noise / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    cell = {"model": model, "data": data, "noise": noise, "backbone": "synthetic", "seed": seed,
            "train_data": data, "sweep": sweep, "settings": {}}
    if failed:
        (d / "failed.json").write_text(json.dumps({"status": "failed", "cell": cell, "error": "boom\nstack"}))
        return d
    payload = {"status": "ok", "cell": cell, "metrics": {"test/acc": 50.0, **(metrics or {})}}
    if history is not None:
        payload["purification"] = history
    (d / "results.json").write_text(json.dumps(payload))
    return d


def rec(epoch: int, precision: float, recall: float, *, true_clean: float = 0.6, selected: float = 0.5,
        suggested: float | None = None) -> dict:
    r = {"epoch": epoch, "clean_fraction": selected, "num_clean": 10.0, "precision": precision, "recall": recall,
         "noisy_label_acc": true_clean}
    if suggested is not None:
        r["soft_label_acc"] = suggested
    return r


@pytest.fixture
def root(tmp_path):
    # TANGO at sym40: two seeds; the first record of each must be ignored (the last epoch counts).
    write_run(tmp_path, "tango", "sym40", 1, [rec(0, 0.1, 0.1), rec(1, 0.90, 0.80, suggested=0.70)])
    write_run(tmp_path, "tango", "sym40", 2, [rec(0, 0.2, 0.2), rec(1, 0.80, 0.60, suggested=0.90)])
    # SSR at sym40, one seed; DeFT's last record without suggested labels.
    write_run(tmp_path, "ssr", "sym40", 1, [rec(0, 0.95, 0.50, selected=0.3, suggested=0.65)])
    write_run(tmp_path, "deft", "sym40", 1, [rec(0, 0.70, 0.99, selected=0.8)])
    # TANGO at sym60 with the metrics only (no per-epoch list): no true clean share.
    write_run(tmp_path, "tango", "sym60", 1, None, metrics={"purify/precision_last": 0.5, "purify/recall_last": 0.4,
                                                            "purify/clean_fraction_last": 0.3})
    # Ignored: a method without verdicts, and a failed DivideMix run (warned).
    write_run(tmp_path, "ft_ce", "sym40", 1, None)
    write_run(tmp_path, "dividemix", "sym40", 1, failed=True)
    return tmp_path


def test_last_epoch_mean_over_seeds_per_method_and_cell(root):
    table = label_issue_table(load_runs(root))
    # Rows from the records (no method list); their sweep ("test") has no sweep file, so by name.
    assert [(g.method, g.cell.noise) for g in table.groups] == [
        ("deft", "sym40"), ("ssr", "sym40"), ("tango", "sym40"), ("tango", "sym60")]
    t = table.group("tango", noise="sym40")
    assert t.seeds == [1, 2] and t.epochs == [1, 1]
    mean, std, n = t.stat("precision")
    assert (mean, n) == (pytest.approx(0.85), 2) and std == pytest.approx(0.0707107, abs=1e-6)
    assert t.stat("recall")[0] == pytest.approx(0.70)
    assert t.stat("suggested_acc")[0] == pytest.approx(0.80)
    assert t.stat("true_clean") == (pytest.approx(0.6), pytest.approx(0.0), 2)
    assert table.group("ssr", noise="sym40").stat("precision") == (pytest.approx(0.95), None, 1)
    assert table.group("deft", noise="sym40").stat("suggested_acc") == (None, None, 0)
    fallback = table.group("tango", noise="sym60")
    assert fallback.stat("precision")[0] == pytest.approx(0.5) and fallback.stat("true_clean")[2] == 0
    assert any("dividemix" in w and "failed: boom" in w for w in table.warnings)
    assert not any("ft_ce" in w for w in table.warnings)


def test_rows_and_noise_blocks_follow_the_grids_of_the_runs_sweep(tmp_path):
    """Runs of a sweep with a sweep file print in its grids' order (sweeps/synthetic_tango.yaml: noise sym40,
    sym60, ...; models tango's ablations and tango, then ft_ce, dividemix, ssr, lsl, deft), not by name; a model
    the grids do not list follows by name. No list of methods or noises is kept in the code."""
    for model in ("deft", "ssr", "tango", "zz_new", "dividemix"):
        for noise in ("sym60", "sym40"):
            write_run(tmp_path, model, noise, 1, [rec(0, 0.9, 0.8)], sweep="synthetic_tango")
    groups = [(g.cell.noise, g.method) for g in label_issue_table(load_runs(tmp_path)).groups]
    order = ["tango", "dividemix", "ssr", "deft", "zz_new"]
    assert groups == [("sym40", m) for m in order] + [("sym60", m) for m in order]


def test_markdown_and_csv(root):
    table = label_issue_table(load_runs(root))
    md = table.to_markdown()
    header = "| data | noise | backbone | settings | method | n | true_clean | selected | precision | recall | suggested_acc |"
    assert header in md
    assert ("| synthetic_full | sym40 | synthetic | — | tango | 2 | 60.00 ± 0.00 | 50.00 ± 0.00 | 85.00 ± 7.07 "
            "| 70.00 ± 14.14 | 80.00 ± 14.14 |") in md
    assert "| synthetic_full | sym40 | synthetic | — | deft | 1 | 60.00 | 80.00 | 70.00 | 99.00 | — |" in md
    rows = list(csv.DictReader(io.StringIO(table.to_csv())))
    assert [r["method"] for r in rows] == ["deft", "ssr", "tango", "tango"]
    assert rows[2]["seeds"] == "1 2" and float(rows[2]["precision"]) == pytest.approx(0.85)
    assert rows[0]["suggested_acc"] == "" and rows[0]["suggested_acc_n"] == "0"


def test_cli_flag_and_table_name(root, capsys):
    assert main([str(root), "--label-issues"]) == 0
    out, err = capsys.readouterr()
    assert "### label_issues" in out and "| ssr |" in out and "ft_ce" not in out
    assert "warning:" in err and "dividemix" in err
    assert main([str(root), "--table", "label_issues", "--format", "csv", "--strict"]) == 1  # the failed run warns
    assert capsys.readouterr().out.startswith("data,noise,backbone,")
    assert main([str(root), "--label-issues", "--format", "latex"]) == 2
    with pytest.raises(SystemExit):
        main([str(root), "--label-issues", "--table", "tango_table1"])


def test_methods_option_lists_other_models_in_its_order(tmp_path, capsys):
    """The default rows are every model whose records carry verdicts (TANGO's readings too); --methods picks
    models and their order."""
    write_run(tmp_path, "tango", "sym40", 1, [rec(0, 0.90, 0.80)])
    write_run(tmp_path, "tango_literal", "sym40", 1, [rec(0, 0.60, 0.95)])
    assert [g.method for g in label_issue_table(load_runs(tmp_path)).groups] == ["tango", "tango_literal"]
    assert [g.method for g in label_issue_table(load_runs(tmp_path), ("tango",)).groups] == ["tango"]
    table = label_issue_table(load_runs(tmp_path), ("tango_literal", "tango"))
    assert [g.method for g in table.groups] == ["tango_literal", "tango"]
    assert table.group("tango_literal", noise="sym40").stat("precision")[0] == pytest.approx(0.60)
    assert main([str(tmp_path), "--label-issues", "--methods", "tango_literal,tango"]) == 0
    out = capsys.readouterr().out
    assert out.index("| tango_literal |") < out.index("| tango |")
    with pytest.raises(SystemExit):  # --methods belongs to --label-issues
        main([str(tmp_path), "--table", "synthetic_tango", "--methods", "tango"])


def test_no_verdicts_anywhere_is_a_warning_not_a_crash(tmp_path):
    write_run(tmp_path, "ft_ce", "sym40", 1, None)
    write_run(tmp_path, "ssr", "sym40", 1, [])  # an empty history and no metrics: no verdicts
    table = label_issue_table(load_runs(tmp_path))
    assert table.groups == []
    assert any("no per-epoch clean verdicts" in w for w in table.warnings)
    assert any("no run with clean verdicts or a label-issue report" in w for w in table.warnings)
    assert any("no run of tango, ssr with" in w for w in label_issue_table(load_runs(tmp_path), ("tango", "ssr")).warnings)


def test_malformed_history_names_the_file(tmp_path):
    d = write_run(tmp_path, "tango", "sym40", 1, None)
    payload = json.loads((d / "results.json").read_text())
    (d / "results.json").write_text(json.dumps({**payload, "purification": {"epoch": 0}}))
    table = label_issue_table(load_runs(tmp_path))
    assert table.groups == [] and any(str(d / "results.json") in w and "list" in w for w in table.warnings)


@pytest.mark.parametrize("name", ["tango_table1", "tango_table2"])
def test_every_paper_row_of_tango_tables_1_2_is_run(name):
    spec = get_table(name)
    paper = load_paper_numbers(spec)
    runs = {row.labels: row.match for row in spec.rows}
    assert set(paper) <= set(runs) and all(runs[labels] is not None for labels in paper)
    assert {labels[0] for labels in set(runs) - set(paper)} == set(EXTRA_ROWS)  # ft_ce, the CE floor
    assert all(runs[labels]["model"] == labels[0] for labels in runs)  # the CSV's row names are the presets


def test_rows_come_from_records_that_carry_a_report(tmp_path):
    """A method without verdicts (CoOp) whose run carries a label-issue report gets a row with the ranking
    columns; a model without a report (zero-shot) gets none. The old hard-coded method list had no CoOp row."""
    report = {"label_issues/noise_rate": 0.5, "label_issues/precision_at_noisy": 0.9, "label_issues/auroc": 0.95}
    write_run(tmp_path, "coop", "sym50", 1, None, metrics=report)
    write_run(tmp_path, "coop", "sym50", 2, None, metrics={**report, "label_issues/precision_at_noisy": 0.7})
    write_run(tmp_path, "zeroshot", "sym50", 1, None)
    write_run(tmp_path, "tango", "sym50", 1, [rec(0, 0.9, 0.8, true_clean=0.5)],
              metrics={**report, "label_issues/verdict_precision": 0.6, "label_issues/verdict_recall": 0.4})
    table = label_issue_table(load_runs(tmp_path))
    assert [g.method for g in table.groups] == ["coop", "tango"]  # by name: their sweep has no file
    coop = table.group("coop", noise="sym50")
    assert coop.seeds == [1, 2] and coop.stat("rank_precision")[0] == pytest.approx(0.8)
    assert coop.stat("true_clean")[0] == pytest.approx(0.5) and coop.stat("precision") == (None, None, 0)
    tango = table.group("tango", noise="sym50")
    assert tango.stat("issue_precision")[0] == pytest.approx(0.6) and tango.stat("precision")[0] == pytest.approx(0.9)
    md = table.to_markdown()
    assert "| issue_precision | issue_recall | rank_precision | auroc |" in md
    assert "| synthetic_full | sym50 | synthetic | — | coop | 2 | 50.00 ± 0.00 | — | — | — | — | — | — | 80.00 ± 14.14 | 95.00 ± 0.00 |" in md
