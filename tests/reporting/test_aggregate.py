"""Aggregation of results.json trees into the papers' tables."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from noisy_prompt.reporting.aggregated import aggregate
from noisy_prompt.reporting.cli import main
from noisy_prompt.reporting.entries import AMBIGUOUS, FAILED, MISSING, NO_METRIC, NOT_RUN, OK
from noisy_prompt.reporting.runs import load_runs
from noisy_prompt.reporting.tables import TABLES, get_table, load_paper_numbers, read_paper_csv
from paths import REPO

# Rows this project runs beside a paper's that have no paper number: ft_ce, the CE floor.
EXTRA_ROWS = ("ft_ce",)


def write_run(root: Path, reldir: str, *, model: str, data: str, noise: str, seed: int,
              metrics: dict | None = None, backbone: str = "vit_b32", train_data: str | None = None,
              failed: bool = False, sweep: str = "test") -> Path:
    d = root / reldir
    d.mkdir(parents=True, exist_ok=True)
    cell = {"model": model, "data": data, "noise": noise, "backbone": backbone, "seed": seed,
            "train_data": train_data or data, "sweep": sweep}
    if failed:
        path = d / "failed.json"
        path.write_text(json.dumps({"status": "failed", "cell": cell, "error": "CUDA out of memory"}))
    else:
        path = d / "results.json"
        path.write_text(json.dumps({
            "status": "ok", "cell": cell, "cell_id": f"{model}/{data}/{noise}/{backbone}",
            "metrics": metrics or {}, "noise": {}, "config_hash": "x", "versions": {}, "git_rev": "x",
            "world_size": 1, "wall_time_s": 1.0,
        }))
    return path


def pets_dpsep(root: Path, reldir: str, seed: int, acc: float, **kw) -> Path:
    return write_run(root, reldir, model="dpsep", data="oxford_pets", noise="sym50", seed=seed,
                     metrics={"test/acc": acc, "test/acc_best": acc + 1.0}, **kw)


def md_row(text: str, *labels: str) -> str:
    prefix = "| " + " | ".join(labels) + " |"
    rows = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(rows) == 1, f"expected one row {prefix!r} in:\n{text}"
    return rows[0]


# ---------------------------------------------------------------------------------------------- stats


def test_mean_std_n_paper_and_diff(tmp_path):
    # Oddly named directories: grouping must come from the file contents.
    pets_dpsep(tmp_path, "zz_odd/a", 1, 84.0)
    pets_dpsep(tmp_path, "0001", 2, 85.0)
    pets_dpsep(tmp_path, "ptnl/imagenet/sym80/seed9", 3, 86.5)
    table = aggregate(tmp_path, "dpsep_table1")
    cell = table.cell(("oxford_pets", "dpsep"), "sym50")
    # mean = 255.5 / 3; squared deviations sum to 19/6, so the sample std is sqrt(19/12)
    assert cell.status == OK and cell.n == 3 and cell.seeds == (1, 2, 3)
    assert cell.mean == pytest.approx(255.5 / 3)
    assert cell.std == pytest.approx(math.sqrt(19 / 12))
    assert cell.paper == pytest.approx(85.08)
    assert cell.diff == pytest.approx(255.5 / 3 - 85.08)
    row = md_row(table.to_markdown(), "oxford_pets", "dpsep")
    assert "85.17 ± 1.26 (n=3) · paper 85.08 · Δ +0.09" in row
    # The directory named like a ptnl/imagenet/sym80 cell did not create such a cell.
    assert table.cell(("imagenet", "ptnl"), "sym80").status == MISSING


def test_single_seed_has_no_std_and_negative_diff(tmp_path):
    pets_dpsep(tmp_path, "r", 1, 80.0)
    table = aggregate(tmp_path, "dpsep_table4")
    cell = table.cell("dpsep", "sym50")
    assert cell.n == 1 and cell.std is None
    row = md_row(table.to_markdown(), "dpsep")
    assert "80.00 (n=1) · paper 85.08 · Δ −5.08" in row


def test_missing_cells_show_dash_not_zero(tmp_path):
    pets_dpsep(tmp_path, "r", 1, 85.0)
    table = aggregate(tmp_path, "dpsep_table1")
    missing = table.cell(("imagenet", "ptnl"), "sym12.5")
    assert missing.status == MISSING and missing.mean is None and missing.n == 0
    row = md_row(table.to_markdown(), "imagenet", "ptnl")
    assert row.count("— · paper") == 9
    assert "0.00" not in row
    # CSV: the mean of a missing cell is empty (not 0), its status says why.
    rows = list(csv.DictReader(io.StringIO(table.to_csv())))
    imagenet_ptnl = next(r for r in rows if r["dataset"] == "imagenet" and r["method"] == "ptnl")
    assert imagenet_ptnl["sym12.5"] == "" and imagenet_ptnl["sym12.5_status"] == "missing"
    assert imagenet_ptnl["sym12.5_paper"] == "65.52"


def test_duplicates_are_reported_and_first_sorted_path_kept(tmp_path):
    second = pets_dpsep(tmp_path, "b_rerun", 1, 99.0)
    first = pets_dpsep(tmp_path, "a_run", 1, 84.0)
    pets_dpsep(tmp_path, "c", 2, 86.0)
    table = aggregate(tmp_path, "dpsep_table4")
    cell = table.cell("dpsep", "sym50")
    assert cell.n == 2 and cell.values == (84.0, 86.0)
    dup = [w for w in table.warnings if "duplicate" in w]
    assert len(dup) == 1
    assert "a_run/results.json" in dup[0] and "b_rerun/results.json" in dup[0]
    assert dup[0].index("a_run") < dup[0].index("b_rerun")  # "keeping a_run ...; ignoring b_rerun"
    assert first.exists() and second.exists()


def test_reused_txt_shares_another_folders_records_without_copies(tmp_path):
    other, root = tmp_path / "other_sweep", tmp_path / "this_sweep"
    pets_dpsep(root, "own", 1, 84.0)
    pets_dpsep(other, "x/seed2", 2, 86.0)
    pets_dpsep(other, "x/seed3", 3, 88.0)
    (root / "reused.txt").write_text("# shared with other_sweep\n../other_sweep/x/seed2/results.json\n")
    cell = aggregate(root, "dpsep_table4").cell("dpsep", "sym50")
    assert cell.n == 2 and cell.values == (84.0, 86.0)
    assert any("reused" in n and "reused.txt" in n for n in load_runs(root).notes)
    (root / "reused.txt").write_text("../other_sweep/x\n")  # a folder: all its runs
    assert aggregate(root, "dpsep_table4").cell("dpsep", "sym50").n == 3
    (root / "reused.txt").write_text("ok/line\n../other_sweep/nope/results.json\n".replace("ok/line", "../other_sweep/x"))
    with pytest.raises(FileNotFoundError, match=r"reused.txt:2: '../other_sweep/nope/results.json'"):
        load_runs(root)


def test_failed_cells_are_shown(tmp_path):
    for seed in (1, 2):
        write_run(tmp_path, f"f{seed}", model="ptnl", data="oxford_pets", noise="sym50", seed=seed, failed=True)
    pets_dpsep(tmp_path, "ok1", 1, 85.0)
    write_run(tmp_path, "bad2", model="dpsep", data="oxford_pets", noise="sym50", seed=2, failed=True)
    table = aggregate(tmp_path, "dpsep_table4")
    failed = table.cell("ptnl", "sym50")
    assert failed.status == FAILED and failed.failed_seeds == (1, 2) and failed.mean is None
    partial = table.cell("dpsep", "sym50")
    assert partial.status == OK and partial.n == 1 and partial.failed_seeds == (2,)
    md = table.to_markdown()
    assert "failed (n=0, 2 failed) · paper 74.70" in md_row(md, "ptnl")
    assert "85.00 (n=1, 1 failed)" in md_row(md, "dpsep")
    assert any("ptnl | sym50]: seed(s) 1, 2 failed: CUDA out of memory" in w for w in table.warnings)


def test_success_supersedes_failure_of_same_seed(tmp_path):
    write_run(tmp_path, "run/seed1", model="dpsep", data="oxford_pets", noise="sym50", seed=1, failed=True)
    pets_dpsep(tmp_path, "run/seed1", 1, 85.0)  # same directory, re-run succeeded
    loaded = load_runs(tmp_path)
    assert len(loaded.runs) == 1 and loaded.runs[0].ok
    assert any("superseded" in n for n in loaded.notes)
    cell = aggregate(tmp_path, "dpsep_table4").cell("dpsep", "sym50")
    assert cell.n == 1 and cell.n_failed == 0


def test_cross_dataset_runs_stay_out_of_in_domain_tables(tmp_path):
    pets_dpsep(tmp_path, "in_domain", 1, 85.0)
    pets_dpsep(tmp_path, "cross", 1, 79.0, train_data="imagenet")
    t1 = aggregate(tmp_path, "dpsep_table1").cell(("oxford_pets", "dpsep"), "sym50")
    t3 = aggregate(tmp_path, "dpsep_table3").cell(("oxford_pets", "dpsep"), "sym50")
    assert (t1.n, t1.mean) == (1, 85.0)
    assert (t3.n, t3.mean, t3.paper) == (1, 79.0, 79.75)


def test_two_backbones_are_ambiguous_until_one_is_chosen(tmp_path):
    pets_dpsep(tmp_path, "x", 1, 85.0, backbone="vit_b32")
    pets_dpsep(tmp_path, "y", 1, 70.0, backbone="rn50")
    table = aggregate(tmp_path, "dpsep_table4")
    assert table.cell("dpsep", "sym50").status == AMBIGUOUS
    assert any("--backbone" in w for w in table.warnings)
    chosen = aggregate(tmp_path, "dpsep_table4", backbone="rn50").cell("dpsep", "sym50")
    assert (chosen.status, chosen.mean) == (OK, 70.0)


def test_metric_choice_per_table(tmp_path):
    # TANGO reports best accuracy; DP-SEP the last epoch; zero-shot has only test/acc.
    for seed, (last, best) in enumerate([(80.0, 82.0), (81.0, 84.0)], start=1):
        write_run(tmp_path, f"t{seed}", model="tango", data="cifar100", noise="sym40", seed=seed,
                  metrics={"test/acc": last, "test/acc_best": best}, backbone="vit_b16")
    write_run(tmp_path, "zs", model="zeroshot", data="synthetic_full", noise="sym40", seed=1,
              metrics={"test/acc": 50.0}, backbone="synthetic")
    write_run(tmp_path, "syn", model="tango", data="synthetic_full", noise="sym40", seed=1,
              metrics={"test/acc": 60.0, "test/acc_best": 65.0}, backbone="synthetic")
    assert aggregate(tmp_path, "tango_table1").cell("tango", "sym40").mean == pytest.approx(83.0)
    syn = aggregate(tmp_path, "synthetic_tango")
    assert syn.cell("zeroshot", "sym40").mean == 50.0
    assert syn.cell("tango", "sym40").mean == 65.0


def test_dpsep_table2_columns_read_different_metrics(tmp_path):
    write_run(tmp_path, "wv", model="dpsep", data="webvision", noise="real", seed=1, metrics={
        "test/acc": 75.0, "test/acc_top5": 96.0, "test_ilsvrc12/acc": 74.0, "test_ilsvrc12/acc_top5": 95.5})
    write_run(tmp_path, "fn", model="dpsep", data="food101n", noise="real", seed=1, metrics={"test/acc": 64.0})
    table = aggregate(tmp_path, "dpsep_table2")
    got = {c: table.cell("dpsep", c).mean for c in table.column_labels}
    assert got == {"webvision_top1": 75.0, "webvision_top5": 96.0, "ilsvrc12_top1": 74.0,
                   "ilsvrc12_top5": 95.5, "food101n_top1": 64.0}
    assert table.cell("ptnl", "food101n_top1").status == MISSING


def test_run_without_the_metric_is_not_counted(tmp_path):
    write_run(tmp_path, "a", model="tango", data="cifar100", noise="sym40", seed=1, metrics={"test/acc": 80.0})
    write_run(tmp_path, "b", model="tango", data="cifar100", noise="inst40", seed=1,
              metrics={"test/acc_best": float("nan")})
    table = aggregate(tmp_path, "tango_table1")
    assert table.cell("tango", "sym40").status == NO_METRIC
    assert table.cell("tango", "inst40").status == NO_METRIC
    assert sum("none reports 'test/acc_best'" in w for w in table.warnings) == 2


def test_tango_baseline_rows_print_beside_the_paper(tmp_path):
    write_run(tmp_path, "s", model="ssr", data="cifar100", noise="sym40", seed=1,
              metrics={"test/acc_best": 86.0}, backbone="vit_b16")
    write_run(tmp_path, "f", model="ft_ce", data="cifar100", noise="sym40", seed=1,
              metrics={"test/acc_best": 80.0}, backbone="vit_b16")
    table = aggregate(tmp_path, "tango_table1")
    assert table.row_labels == [("ft_ce",), ("dividemix",), ("ssr",), ("lsl",), ("deft",), ("tango",)]
    md = table.to_markdown()
    assert "| 86.00 (n=1) · paper 86.34 · Δ −0.34 |" in md_row(md, "ssr")
    assert table.cell("dividemix", "sym40").status == MISSING
    assert "— · paper 87.50" in md_row(md, "dividemix")
    assert "| 80.00 (n=1) |" in md_row(md, "ft_ce") and "paper" not in md_row(md, "ft_ce")  # no paper row
    assert aggregate(tmp_path, "tango_table2").row_labels == [("ft_ce",), ("ssr",), ("lsl",), ("deft",), ("tango",)]


def test_paper_only_rows_show_paper_numbers(tmp_path):
    from dataclasses import replace

    from noisy_prompt.reporting.tables import RowSpec

    spec = get_table("tango_table1")  # a row with match=None: the paper has it, this project does not run it
    table = aggregate(tmp_path, replace(spec, rows=(RowSpec(("dividemix",), None), *spec.rows[2:])))
    assert table.row_labels[0] == ("dividemix",)
    assert table.cell("dividemix", "sym40").status == NOT_RUN
    row = md_row(table.to_markdown(), "dividemix")
    assert "n/a · paper 87.50" in row and "n/a · paper 83.74" in row
    assert any("no results.json" in w for w in table.warnings)


def test_unreadable_files_are_skipped_with_a_warning(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")
    (tmp_path / "nocell").mkdir()
    (tmp_path / "nocell" / "results.json").write_text(json.dumps({"status": "ok", "metrics": {}}))
    pets_dpsep(tmp_path, "good", 1, 85.0)
    table = aggregate(tmp_path, "dpsep_table4")
    assert table.cell("dpsep", "sym50").n == 1
    skipped = [w for w in table.warnings if "skipped" in w]
    assert len(skipped) == 2 and any("broken" in w for w in skipped) and any("'cell'" in w for w in skipped)


def test_synthetic_mini_discovers_models_and_noises_in_order(tmp_path):
    for model in ("dpsep", "zeroshot", "coop"):
        for noise in ("sym80", "clean"):
            write_run(tmp_path, f"{model}/{noise}", model=model, data="synthetic", noise=noise, seed=1,
                      metrics={"test/acc": 10.0}, backbone="synthetic")
    write_run(tmp_path, "other", model="ptnl", data="oxford_pets", noise="sym50", seed=1, metrics={"test/acc": 1.0})
    table = aggregate(tmp_path, "synthetic_mini")
    assert table.row_labels == [("zeroshot",), ("coop",), ("dpsep",)]
    assert table.column_labels == ["clean", "sym80"]
    assert all(c.status == OK for c in table.cells.values())


def test_a_discovered_table_orders_by_its_grid_then_the_runs_sweep_grids_then_by_name(tmp_path):
    """synthetic_mini's grid lists zeroshot, coop, dpsep; runs of synthetic_readings_dpsep (whose grid lists
    ptnl_ce before dpsep_gate) follow in that grid's order; a model no grid lists comes last, by name."""
    for model, sweep in (("dpsep_gate", "synthetic_readings_dpsep"), ("ptnl_ce", "synthetic_readings_dpsep"),
                         ("aaa", "adhoc"), ("dpsep", "synthetic_mini"), ("zeroshot", "synthetic_mini")):
        for noise in ("sym80", "clean"):
            write_run(tmp_path, f"{model}/{noise}", model=model, data="synthetic", noise=noise, seed=1,
                      metrics={"test/acc": 10.0}, backbone="synthetic", sweep=sweep)
    table = aggregate(tmp_path, "synthetic_mini")
    assert table.row_labels == [("zeroshot",), ("dpsep",), ("ptnl_ce",), ("dpsep_gate",), ("aaa",)]
    assert table.column_labels == ["clean", "sym80"]


def test_tables_follow_the_sweep_file_names(capsys):
    """`--list` and `--table all` print the tables in the order of their sweep files' names (no list kept in
    the code); a file's stage table right after its own."""
    assert main(["--list"]) == 0
    names = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert names[-1] == "label_issues"
    files = sorted(p.stem for p in (REPO / "sweeps").glob("*.yaml"))
    assert [n for n in names if n in files] == [f for f in files if f in names]
    i = names.index("synthetic_readings_tango")
    assert names[i + 1] == "synthetic_readings_tango_paper_recipe"


# --------------------------------------------------------------------------------------------- formats


def test_csv_parses_back(tmp_path):
    pets_dpsep(tmp_path, "a", 1, 84.0)
    pets_dpsep(tmp_path, "b", 2, 86.0)
    spec = get_table("dpsep_table4")
    rows = list(csv.reader(io.StringIO(aggregate(tmp_path, spec).to_csv())))
    header, body = rows[0], rows[1:]
    assert header[0] == "method" and header[1:8] == [
        "sym12.5", "sym12.5_std", "sym12.5_n", "sym12.5_n_failed", "sym12.5_paper", "sym12.5_diff", "sym12.5_status"]
    assert [r[0] for r in body] == [r.labels[0] for r in spec.rows]
    record = dict(zip(header, next(r for r in body if r[0] == "dpsep")))
    assert float(record["sym50"]) == pytest.approx(85.0)
    assert float(record["sym50_std"]) == pytest.approx(math.sqrt(2.0))
    assert int(record["sym50_n"]) == 2
    assert float(record["sym50_paper"]) == pytest.approx(85.08)
    assert float(record["sym50_diff"]) == pytest.approx(-0.08)


def test_latex_has_a_tabular_with_escaped_labels(tmp_path):
    pets_dpsep(tmp_path, "a", 1, 84.0)
    pets_dpsep(tmp_path, "b", 2, 86.0)
    tex = aggregate(tmp_path, "dpsep_table1").to_latex()
    assert "\\begin{tabular}{llccccccccc}" in tex and tex.rstrip().endswith("\\end{tabular}")
    line = next(x for x in tex.splitlines() if x.startswith("oxford\\_pets & dpsep"))
    assert line.count(" & ") == 10 and line.endswith("\\\\")
    assert "85.00 $\\pm$ 1.41 (n=2) / paper 85.08 / $\\Delta$ $-$0.08" in line
    assert "---" in next(x for x in tex.splitlines() if x.startswith("imagenet & ptnl"))


def test_markdown_header_matches_paper_layout(tmp_path):
    md = aggregate(tmp_path, "tango_table3").to_markdown()
    assert "| variant | sym40 | inst40 | asym30 | cifar100n |" in md
    assert "baseline_linear_head_visual_only" in md


# ---------------------------------------------------------------------------------------------- specs


# The readings tables (a paper table's readings and ablations) put a subset of a paper table's rows and columns beside extra readings
# and extra metrics (best/last/epoch-0), so they are checked by the next test instead of this one.
READINGS_TABLES = {"dpsep_readings", "tango_readings"}


@pytest.mark.parametrize("name", [n for n, s in TABLES.items() if s.paper_csv and n not in READINGS_TABLES])
def test_spec_labels_match_paper_csv(name):
    spec = TABLES[name]
    header, body = read_paper_csv(spec.paper_csv)
    assert header == [*spec.row_key_names, *(c.label for c in spec.columns)]
    k = len(spec.row_key_names)
    # rows of ours with no paper number (ft_ce, the CE floor) aside, the rows are the paper's, in its order
    extra = {(m,) for m in EXTRA_ROWS}
    assert [tuple(r[:k]) for r in body] == [row.labels for row in spec.rows if row.labels not in extra]
    numbers = load_paper_numbers(spec)
    assert all(len(v) == len(spec.columns) for v in numbers.values())
    for row in spec.rows:  # every filter composes without a row/column conflict
        for col in spec.columns:
            spec.cell_filter(row, col)


@pytest.mark.parametrize("name", sorted(READINGS_TABLES))
def test_readings_tables_line_up_with_their_paper_csv(name):
    spec = TABLES[name]
    header, body = read_paper_csv(spec.paper_csv)
    k = len(spec.row_key_names)
    assert header[:k] == list(spec.row_key_names)
    paper_cols = set(header[k:])
    # every column is a paper column or one of its best/last/epoch-0 companions
    for col in spec.columns:
        base = col.label.rsplit("_", 1)[0] if col.label.endswith(("_best", "_last", "_epoch0")) else col.label
        assert base in paper_cols, (name, col.label)
    # and at least the paper's own rows find their published numbers
    numbers = load_paper_numbers(spec)
    matched = [row.labels for row in spec.rows if row.labels in numbers]
    assert matched, f"{name}: no row of the table has a paper number"
    for row in spec.rows:
        for col in spec.columns:
            spec.cell_filter(row, col)


def test_paper_numbers_are_the_published_ones():
    assert load_paper_numbers(get_table("dpsep_table4"))[("ptnl",)]["sym65"] == 64.81
    assert load_paper_numbers(get_table("dpsep_table1"))[("oxford_pets", "ptnl")]["sym65"] == 56.93
    assert load_paper_numbers(get_table("tango_table4"))[("siglip",)]["cifar100n"] == 85.31
    assert load_paper_numbers(get_table("synthetic_dpsep")) == {}


def test_tango_ablation_rows_map_to_our_models():
    spec = get_table("tango_table3")
    models = {row.labels[0]: row.match["model"] for row in spec.rows}
    assert models == {
        "baseline_linear_head_visual_only": "tango_linear_visual", "tango": "tango",
        "visual_only_purification": "tango_visual_only", "semantic_only_purification": "tango_semantic_only",
        "trainable_anchors": "tango_trainable_anchors", "simpler_prompts": "tango_simple_prompts",
    }


def test_synthetic_evidence_tables_layout():
    dpsep = get_table("synthetic_dpsep")
    assert [r.labels[0] for r in dpsep.rows] == ["zeroshot", "coop", "ptnl", "dp", "sep", "sep_no_perturbation", "dpsep"]
    assert [c.label for c in dpsep.columns] == ["clean", "sym50", "sym80", "inst60"]
    tango = get_table("synthetic_tango")
    assert [r.labels[0] for r in tango.rows] == [
        "zeroshot", "tango_linear_visual", "tango_visual_only", "tango_semantic_only", "tango",
        "ft_ce", "dividemix", "ssr", "lsl", "deft"]
    assert [c.label for c in tango.columns] == ["sym40", "sym60", "inst40", "asym30"]
    assert tango.metric == "test/acc_best"
    assert all(r.match["data"] == "synthetic" for r in dpsep.rows)
    assert all(r.match["data"] == "synthetic_full" for r in tango.rows)  # TANGO trains on full data


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_writes_each_format(tmp_path, capsys):
    root = tmp_path / "results"
    pets_dpsep(root, "a", 1, 84.0)
    pets_dpsep(root, "b", 2, 86.0)
    assert main([str(root), "--table", "dpsep_table4"]) == 0
    assert "85.00 ± 1.41 (n=2) · paper 85.08" in capsys.readouterr().out
    out = tmp_path / "out" / "t4.csv"
    assert main([str(root), "--table", "dpsep_table4", "--format", "csv", "--out", str(out)]) == 0
    assert next(csv.reader(io.StringIO(out.read_text())))[0] == "method"
    assert main([str(root), "--table", "dpsep_table4", "--format", "latex"]) == 0
    assert "\\begin{tabular}" in capsys.readouterr().out
    assert main([str(root), "--table", "all"]) == 0
    assert capsys.readouterr().out.count("### ") == len(TABLES)


def test_cli_warnings_strict_and_errors(tmp_path, capsys):
    pets_dpsep(tmp_path, "a", 1, 84.0)
    pets_dpsep(tmp_path, "b", 1, 90.0)
    assert main([str(tmp_path), "--table", "dpsep_table4"]) == 0
    assert "warning: duplicate results" in capsys.readouterr().err
    assert main([str(tmp_path), "--table", "dpsep_table4", "--strict"]) == 1
    assert main([str(tmp_path / "nope"), "--table", "dpsep_table4"]) == 2
    assert "not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--table", "no_such_table"])
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--table", "all", "--format", "csv"])


def test_python_dash_m_entry_point(tmp_path):
    pets_dpsep(tmp_path / "res", "a", 1, 84.0)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "noisy_prompt.aggregate", str(tmp_path / "res"), "--table", "dpsep_table4"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "84.00 (n=1) · paper 85.08" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]  # nothing written into the cwd


# ---------------------------------------------------------------------------------------------- --plot


def test_plot_draws_one_line_per_row_against_the_noise_rate(tmp_path):
    """synthetic_readings_dpsep prints each noise twice (last | best epoch): the plot draws the table's own
    metric (the last epoch) once per noise, x = the rate, y = mean ± std of exactly the seeds found."""
    runs = tmp_path / "runs"
    for seed, (clean, s50) in enumerate([(80.0, 70.0), (82.0, 60.0)], start=1):
        for noise, acc in (("clean", clean), ("sym50", s50)):
            write_run(runs, f"ptnl/{noise}/{seed}", model="ptnl", data="synthetic", noise=noise, seed=seed,
                      backbone="synthetic", metrics={"test/acc": acc, "test/acc_best": acc + 5.0})
    write_run(runs, "coop/sym80/1", model="coop", data="synthetic", noise="sym80", seed=1, backbone="synthetic",
              metrics={"test/acc": 30.0, "test/acc_best": 40.0})
    table = aggregate(runs, "synthetic_readings_dpsep")
    columns, xs, series = table.plot_series()
    assert columns == ["clean", "sym50", "sym80"] and xs == [0.0, 50.0, 80.0]
    assert set(series) == {"ptnl", "coop"}  # rows without a number are left out
    ptnl = {columns[i]: (c.mean, c.std) for i, c in series["ptnl"]}
    assert ptnl["clean"] == pytest.approx((81.0, math.sqrt(2.0)))
    assert ptnl["sym50"] == pytest.approx((65.0, math.sqrt(50.0)))
    assert [columns[i] for i, _ in series["coop"]] == ["sym80"]
    _, _, best = table.plot_series("test/acc_best")
    assert {columns[i]: c.mean for i, c in best["ptnl"]} == {"clean": 86.0, "sym50": 70.0}

    png = tmp_path / "fig" / "readings.png"
    assert main([str(runs), "--table", "synthetic_readings_dpsep", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_rows_keeps_the_listed_rows_in_order_and_names_the_valid_ones(tmp_path, capsys):
    """One table, one figure per claim: --plot-rows draws only the rows it lists, in its order."""
    runs = tmp_path / "runs"
    for model, acc in (("ptnl", 70.0), ("coop", 50.0), ("dpsep_gate", 69.0)):
        write_run(runs, f"{model}/sym50/1", model=model, data="synthetic", noise="sym50", seed=1,
                  backbone="synthetic", metrics={"test/acc": acc, "test/acc_best": acc})
    table = aggregate(runs, "synthetic_readings_dpsep")
    _, _, series = table.plot_series(rows=["dpsep_gate", "ptnl"])
    assert list(series) == ["dpsep_gate", "ptnl"]
    assert [c.mean for _, c in series["dpsep_gate"]] == [69.0]
    with pytest.raises(ValueError, match="no row 'dpsep_gat'.*its rows: zeroshot, coop"):
        table.plot_series(rows=["dpsep_gat"])

    png = tmp_path / "claim.png"
    assert main([str(runs), "--table", "synthetic_readings_dpsep", "--plot", str(png), "--plot-rows", "ptnl,coop"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([str(runs), "--table", "synthetic_readings_dpsep", "--plot", str(tmp_path / "bad.png"),
                 "--plot-rows", "nope"]) == 2
    assert "no row 'nope'" in capsys.readouterr().err and not (tmp_path / "bad.png").exists()
    with pytest.raises(SystemExit):  # --plot-rows without --plot
        main([str(runs), "--table", "synthetic_readings_dpsep", "--plot-rows", "ptnl"])


def test_plot_of_mixed_columns_is_categorical_and_an_empty_table_is_an_error(tmp_path, capsys):
    from noisy_prompt.reporting.render import noise_rates

    assert noise_rates(["clean", "sym12.5", "sym25"]) == [0.0, 12.5, 25.0]
    assert noise_rates(["sym40", "inst40"]) is None  # two families: no common rate axis
    assert noise_rates(["cifar100n", "animal10n"]) is None
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--table", "tango_table1", "--plot", str(tmp_path / "x.png")]) == 2
    assert "no test/acc_best numbers" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "empty"), "--table", "all", "--plot", str(tmp_path / "x.png")])
