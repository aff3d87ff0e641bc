"""Sweeps: every sweeps/*.yaml cell composes, the paper tables' sweeps hold exactly the tables' cells,
each file's table layout prints only cells its grids run (and every row of its paper CSV), a broken
layout names its file and key, the runner's filter / dry-run / summary behave, the SLURM launcher config composes, and the
cross-dataset evaluation preset loads (or clearly fails to find) its source prompt."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf, open_dict

import noisy_prompt.config  # noqa: F401  (resolvers)
from noisy_prompt.sweeps import launch
from noisy_prompt.sweeps import plan as sweep_plan
from noisy_prompt.cell import CellId, CellKey, settings_tag
from noisy_prompt.config import ctor_kwargs
from noisy_prompt.methods.crossdata import (
    CrossDataEval,
    SourceCheckpointError,
    source_checkpoint_path,
    source_run_dir,
)
from noisy_prompt.reporting.tables import (
    TABLES,
    LayoutError,
    RowSpec,
    load_paper_numbers,
    load_tables,
    read_paper_csv,
    tables_from_file,
)
from paths import REPO

CONF = REPO / "conf"
SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml"))
PAPER_TABLES = ("dpsep_table1", "dpsep_table2", "dpsep_table3", "dpsep_table4",
                "tango_table1", "tango_table2", "tango_table3", "tango_table4")
# The backbone each sweep file's own cells use (dpsep_table3's training stage runs in dpsep_table1's dir).
READINGS_TABLES = {"synthetic_readings_dpsep", "synthetic_readings_tango", "synthetic_readings_tango_paper_recipe",
                   "dpsep_readings", "tango_readings"}
# Rows this project runs beside a paper's (ft_ce, the CE floor) that have no paper number.
EXTRA_ROWS = {("ft_ce",)}
# Sweeps aggregated with `aggregate --by KEY` (one table per hyperparameter), not as a paper TableSpec.
SENSITIVITY = {"dpsep_sensitivity", "tango_sensitivity"}
# Sweeps whose records a tool checks instead of a table (the world's calibration, T1-T10).
CHECKED = {"calibration"}
EXPECTED_BACKBONES = {"dpsep_table1": {"vit_b32"}, "dpsep_table2": {"vit_b32"}, "dpsep_table3": {"vit_b32"},
                      "dpsep_table4": {"vit_b32"}, "tango_table1": {"vit_b16"}, "tango_table2": {"vit_b16"},
                      "tango_table3": {"vit_b16"}, "tango_table4": {"vit_b16", "vit_b32", "siglip"},
                      "synthetic_mini": {"synthetic"}, "synthetic_dpsep": {"synthetic"}, "synthetic_tango": {"synthetic"},
                      "dpsep_sensitivity": {"vit_b32"}, "tango_sensitivity": {"vit_b16"},
                      "synthetic_readings_dpsep": {"synthetic"}, "synthetic_readings_tango": {"synthetic"},
                      "dpsep_readings": {"vit_b32"}, "tango_readings": {"vit_b16"}, "calibration": {"synthetic"}}


# --------------------------------------------------------------------------------------------------
# Composition, fast: a cell's config is its (model, data, other overrides) composition with the noise
# and backbone nodes of its choices put in, because those two groups own their packages alone (checked
# against full compositions in test_node_substitution_equals_full_composition).

SUBSTITUTED = ("noise", "backbone")
_compositions: dict[tuple[str, ...], OmegaConf] = {}
_put_in: dict[tuple[int, str], str] = {}  # (composition, group) -> the choice whose node it holds now
_resolved: set[tuple] = set()
_records: dict[tuple, dict] = {}


def _compose(overrides: list[str] | tuple[str, ...]):
    key = tuple(overrides)
    if key not in _compositions:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            _compositions[key] = compose(config_name="run", overrides=list(key), return_hydra_config=True)
    return _compositions[key]


def _split(cell: sweep_plan.Job) -> tuple[list[str], dict[str, str]]:
    """(overrides composed as such, {group: choice} put in afterwards; also sweep and seed)."""
    base, plain = [], {}
    touched = {sweep_plan.override_key(o).split(".")[0] for o in cell.overrides() if "." in sweep_plan.override_key(o)}
    for o in cell.overrides():
        key = sweep_plan.override_key(o)
        if key in ("sweep", "seed") or (key in SUBSTITUTED and key not in touched):
            plain[key] = o.split("=", 1)[1]
        else:
            base.append(o)
    return base, plain


def cell_config(cell: sweep_plan.Job):
    """The composed config of a cell (a shared object: read it before the next call)."""
    base, plain = _split(cell)
    cfg = _compose(base)
    with open_dict(cfg):
        for group in SUBSTITUTED:
            if group in plain and _put_in.get((id(cfg), group)) != plain[group]:
                cfg[group] = _compose([f"{group}={plain[group]}"])[group]
                _put_in[(id(cfg), group)] = plain[group]
        cfg.sweep = plain["sweep"]
        if "seed" in plain:
            cfg.seed = int(plain["seed"])
    return cfg


def _resolve_all(cfg) -> dict:
    return {k: OmegaConf.to_container(cfg[k], resolve=True)
            for k in ("model", "data", "noise", "backbone", "trainer", "callbacks", "logger", "paths")}


def cell_record(cell: sweep_plan.Job) -> dict:
    """What results.json's `cell` will say for this cell, and its run dir; every group resolved once per
    distinct (model, data, noise, backbone, overrides)."""
    memo = (cell, os.environ.get("NOISY_PROMPT_LOGS"))
    if memo not in _records:
        cfg = cell_config(cell)
        key = tuple(o for o in cell.overrides() if sweep_plan.override_key(o) not in ("seed", "sweep"))
        if key not in _resolved:
            _resolve_all(cfg)  # raises on a broken interpolation or a missing key
            _resolved.add(key)
        _records[memo] = {**CellId.from_config(cfg).to_record(), "run_dir": str(cfg.run_dir)}
    return dict(_records[memo])


@pytest.fixture
def logs(tmp_path, monkeypatch):
    root = tmp_path / "logs"
    monkeypatch.setenv("NOISY_PROMPT_LOGS", str(root))
    return root


@pytest.fixture(scope="module")
def table_logs(tmp_path_factory):
    """One log root for the tests that read many cells, so they share cell records."""
    root = tmp_path_factory.mktemp("sweep_logs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NOISY_PROMPT_LOGS", str(root))
        yield root


# --------------------------------------------------------------------------------------------------
# The sweep files


def test_every_sweep_file_is_listed_and_every_table_has_a_sweep():
    names = {p.stem for p in SWEEP_FILES}
    assert names == set(EXPECTED_BACKBONES)
    assert set(PAPER_TABLES) | {"synthetic_mini", "synthetic_dpsep", "synthetic_tango"} | READINGS_TABLES == set(TABLES)


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_sweep_file_loads_and_names_its_table(path):
    plan = sweep_plan.load_sweep(path)
    assert plan.table == path.stem
    assert plan.table in TABLES or plan.table in SENSITIVITY | CHECKED, f"{path}: table {plan.table!r} is not an aggregate TableSpec"
    cells = plan.cells()
    assert len(set(cells)) == len(cells), "a cell is listed twice"
    assert path.read_text().startswith("#"), "document the table, recipe and paper numbers at the top"
    assert plan.declared_cells is not None, f"{path}: state how many cells the grids expand to (`cells: N`)"
    assert len(cells) == plan.declared_cells  # the loader checks it too (see the test below)
    own = [c for c in cells if c.sweep == plan.table]
    # the file lays out its own table (a sensitivity sweep prints with --by instead) and its stage's
    expected = [] if plan.table in SENSITIVITY | CHECKED else [plan.table]
    if plan.table == "synthetic_readings_tango":
        expected.append("synthetic_readings_tango_paper_recipe")
    assert [lay.table for lay in plan.layouts] == [t.name for t in tables_from_file(path)] == expected
    seeds = {dict(c.assignment).get("seed") for c in own}
    assert seeds == ({1} if plan.table == "synthetic_mini" else {1, 2, 3})


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_every_cell_composes_into_its_own_run_dir(path, table_logs):
    plan = sweep_plan.load_sweep(path)
    records = [cell_record(c) for c in plan.cells()]
    for cell, rec in zip(plan.cells(), records):
        values = dict(cell.assignment)
        assert rec["model"] == values.get("model.name", values.get("model", rec["model"]))
        for key in ("data", "noise", "backbone", "seed"):
            if key in values:
                assert str(rec[key]) == str(values[key]), (cell.label(), key)
        assert rec["sweep"] == cell.sweep
        assert rec["run_dir"].startswith(str(table_logs / cell.sweep) + os.sep)
    assert len({r["run_dir"] for r in records}) == len(records), "two cells share a run dir"
    assert {r["backbone"] for r in records if r["sweep"] == plan.table} == EXPECTED_BACKBONES[plan.table]


@pytest.mark.parametrize("index", [0, -1])
def test_node_substitution_equals_full_composition(index, table_logs):
    # The fast path above must give what Hydra gives for the whole override list.
    for table in ("dpsep_table1", "dpsep_table3", "tango_table4", "synthetic_tango"):
        cell = sweep_plan.load_sweep(table).cells()[index]
        fast = _resolve_all(cell_config(cell))
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            # with the hydra node, as Hydra resolves a job: run dirs carry the settings tag of the overrides
            full = compose(config_name="run", overrides=cell.overrides(), return_hydra_config=True)
        assert fast == _resolve_all(full), cell.label()
        assert cell_record(cell)["run_dir"] == full.run_dir


@pytest.mark.parametrize("table", [*PAPER_TABLES, "synthetic_dpsep", "synthetic_tango"])
def test_sweep_cells_are_exactly_the_tables_cells(table, table_logs):
    spec = TABLES[table]
    paper = load_paper_numbers(spec)
    filters = {}
    for row in spec.rows:
        if row.match is None:
            continue  # a baseline the paper has and this project does not run
        for col in spec.columns:
            if paper and row.labels not in EXTRA_ROWS:  # the cell is one the paper prints
                assert col.label in paper[row.labels], (row.labels, col.label)
            filters[(row.labels, col.label)] = spec.cell_filter(row, col)
    assert not paper or {labels for labels, _ in filters} - EXTRA_ROWS <= set(paper)
    records = [cell_record(c) for c in sweep_plan.load_sweep(table).cells() if c.sweep == table]
    keys = [CellKey(r["model"], r["data"], r["noise"], r["backbone"], r["train_data"], tuple(r["settings"].items()))
            for r in records]
    for rec, key in zip(records, keys):
        assert any(key.matches(f) for f in filters.values()), f"{key.label()} is in no cell of table {table}"
    for where, filt in filters.items():
        hits = [(k, r["seed"]) for k, r in zip(keys, records) if k.matches(filt)]
        assert sorted(s for _, s in hits) == [1, 2, 3], (where, hits)
        assert len({k for k, _ in hits}) == 1, f"{where}: several configs would be averaged: {hits}"


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_every_layout_cell_is_run_by_its_files_grids(path, table_logs):
    # One file per table: the layout prints only cells the same file's grids run (a row the paper
    # prints and this project does not run, match: null, aside; a discovered table has no fixed cells).
    plan = sweep_plan.load_sweep(path)
    for spec in tables_from_file(path):
        records = [cell_record(c) for c in plan.cells() if c.sweep == spec.name]
        assert records, f"{path}: layout of {spec.name} but no grid runs under sweep {spec.name}"
        if spec.discover is not None:
            assert any(CellKey(r["model"], r["data"], r["noise"], r["backbone"], r["train_data"]).matches(
                spec.discover.match) for r in records)
            continue
        keys = [CellKey(r["model"], r["data"], r["noise"], r["backbone"], r["train_data"],
                        tuple(r["settings"].items())) for r in records]
        for row in spec.rows:
            for col in spec.columns:
                filt = spec.cell_filter(row, col)
                if filt is not None:
                    assert any(k.matches(filt) for k in keys), f"{path}: {spec.name} [{row.labels} | {col.label}]: {filt}"


@pytest.mark.parametrize("name", [n for n, s in TABLES.items() if s.paper_csv])
def test_every_paper_csv_row_is_in_the_layout(name):
    # A readings table shows some of a paper table's data sets (dpsep_readings: OxfordPets and UCF101):
    # every paper row of a data set it shows is a row of it; every other table shows them all.
    spec = TABLES[name]
    header, body = read_paper_csv(spec.paper_csv)
    k = len(spec.row_key_names)
    labels = {row.labels for row in spec.rows}
    shown = {row.labels[:-1] for row in spec.rows}
    paper = [tuple(r[:k]) for r in body]
    assert [p for p in paper if p[:-1] in shown and p not in labels] == []
    assert any(p in labels for p in paper)


LAYOUT_FILE = """\
table: t
grids:
  - model: &models [ptnl, dpsep]
    data: [oxford_pets]
    noise: &noises [sym50, sym80]
layout:
{layout}
"""
GOOD_LAYOUT = """\
  title: "T: a test table"
  paper_csv: dpsep_table4_ablation.csv
  keys: [method]
  rows:
    - {label: dp, match: null}
    - {model: *models, data: oxford_pets}
  columns: {noise: *noises}
  column_metrics: {"{}": test/acc, "{}_best": test/acc_best}"""


def test_a_layout_reads_its_grid_by_alias(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(LAYOUT_FILE.format(layout=GOOD_LAYOUT))
    (spec,) = tables_from_file(path)
    assert spec.name == "t" and spec.metric == "test/acc" and spec.paper_csv == "dpsep_table4_ablation.csv"
    assert spec.rows == (RowSpec(("dp",), None), RowSpec(("ptnl",), {"model": "ptnl", "data": "oxford_pets"}),
                         RowSpec(("dpsep",), {"model": "dpsep", "data": "oxford_pets"}))
    assert [(c.label, c.match, c.metric) for c in spec.columns] == [
        ("sym50", {"noise": "sym50"}, "test/acc"), ("sym80", {"noise": "sym80"}, "test/acc"),
        ("sym50_best", {"noise": "sym50"}, "test/acc_best"), ("sym80_best", {"noise": "sym80"}, "test/acc_best")]
    assert load_paper_numbers(spec)[("dp",)]["sym50"] > 0  # the paper-only row lines up with its numbers


@pytest.mark.parametrize("edit, key, message", [
    (("rows:\n    - {label: dp, match: null}\n    - {model: *models, data: oxford_pets}",
      "rows: {modle: *models}"), "layout: rows", "unknown cell key 'modle'"),
    (("keys: [method]", "keys: [dataset, method]"), "layout: rows: entry 1",
     "1 label\\(s\\) \\['dp'\\] for 2 row key name\\(s\\)"),
    (("keys: [method]\n  rows:\n    - {label: dp, match: null}", "keys: [method]\n  rows:\n    - {label: dp, match: {modle: dp}}"),
     "layout: rows: entry 1: match", "unknown cell key 'modle'"),
    (("    - {model: *models, data: oxford_pets}", "    - {model: *models, data: [oxford_pets]}"),
     "layout: rows: entry 2", "2 list-valued key\\(s\\) \\['model', 'data'\\] .* 1 row label column"),
    (("paper_csv: dpsep_table4_ablation.csv", "paper_csv: dpsep_table9.csv"), "layout: paper_csv",
     "paper CSV 'dpsep_table9.csv' not found"),
    (("paper_csv: dpsep_table4_ablation.csv", "paper_csv: dpsep_table1_synthetic.csv"), "layout: paper_csv",
     "key columns \\['dataset'\\] != layout keys \\['method'\\]"),
    (('"{}_best": test/acc_best', '"{}_best": acc_best'), "layout: column_metrics: {}_best",
     "metric name of the form <split>/<name>"),
    (('"{}_best": test/acc_best', '"best": test/acc_best'), "layout: column_metrics", "must hold '{}' once"),
    (("columns: {noise: *noises}", "columns: {noise: *noises, data: [pets]}"), "layout: columns",
     "exactly one list-valued key"),
    (("columns: {noise: *noises}", "columns: {noise: *noises, data: ucf101}"), "layout",
     "row \\('ptnl',\\) sets data='oxford_pets' but column 'sym50' sets data='ucf101'"),
    (("  title:", "  titel:"), "layout", "unknown key\\(s\\) \\['titel'\\]"),
    (("    - {label: dp, match: null}\n", "    - {label: dp, match: null}\n    - {label: dp, match: null}\n"),
     "layout: rows", "row label\\(s\\) \\('dp',\\) appear twice"),
])
def test_a_broken_layout_names_the_file_and_key(tmp_path, edit, key, message):
    old, new = edit
    assert old in GOOD_LAYOUT
    path = tmp_path / "t.yaml"
    path.write_text(LAYOUT_FILE.format(layout=GOOD_LAYOUT.replace(old, new)))
    with pytest.raises(LayoutError, match=message) as err:
        tables_from_file(path)
    assert str(err.value).startswith(f"{path}: {key}: "), str(err.value)


def test_a_stage_layout_names_its_stage_and_a_table_has_one_layout(tmp_path):
    staged = ("table: t\nstages:\n  - grids: [{model: [coop]}]\n  - sweep: u\n    grids: [{model: [coop]}]\n"
              "    layout: {title: U, keys: [model], rows: {model: [coop]}, columns: {noise: sym50}}\n")
    path = tmp_path / "t.yaml"
    path.write_text(staged)
    with pytest.raises(LayoutError, match="exactly one list-valued key") as err:
        tables_from_file(path)
    assert str(err.value).startswith(f"{path}: stage 2: layout: columns: ")
    path.write_text(staged.replace("noise: sym50", "noise: [sym50]"))
    assert [(t.name, t.title) for t in tables_from_file(path)] == [("u", "U")]
    (tmp_path / "u.yaml").write_text("table: u\ngrids: [{model: [coop]}]\n"
                                     "layout: {title: U2, keys: [model], rows: {model: [coop]}, columns: {noise: [a]}}\n")
    with pytest.raises(LayoutError, match="a layout for table 'u', which .*t.yaml already lays out"):
        load_tables(tmp_path)
    path.write_text(staged.replace("  - sweep: u\n", "  - overrides: []\n"))  # the stage runs under table t
    with pytest.raises(sweep_plan.SweepFileError, match="put the layout of 't' at the top level"):
        sweep_plan.load_sweep(path)


def test_dpsep_table1_has_7_datasets_2_methods_9_noises_3_seeds(table_logs):
    recs = [cell_record(c) for c in sweep_plan.load_sweep("dpsep_table1").cells()]
    assert len(recs) == 7 * 2 * 9 * 3 == 378
    assert len({r["data"] for r in recs}) == 7 and {r["model"] for r in recs} == {"ptnl", "dpsep"}
    assert len({r["noise"] for r in recs}) == 9


def test_dpsep_table3_trains_table1_imagenet_cells_then_evaluates_across_datasets(table_logs):
    plan = sweep_plan.load_sweep("dpsep_table3")
    train = [cell_record(c) for c in plan.cells() if c.sweep == "dpsep_table1"]
    table1 = [cell_record(c) for c in sweep_plan.load_sweep("dpsep_table1").cells()]
    assert sorted(map(str, train)) == sorted(str(r) for r in table1 if r["data"] == "imagenet")
    evals = [c for c in plan.cells() if c.sweep == "dpsep_table3"]
    assert [c.sweep for c in plan.cells()] == ["dpsep_table1"] * 54 + ["dpsep_table3"] * 216  # training first
    for cell in evals[:3]:
        cfg = cell_config(cell)
        assert cfg.model._target_ == "noisy_prompt.methods.crossdata.CrossDataEval"
        assert cfg.train_data == "imagenet" and cfg.model.name == cfg.model.source.model
        src = OmegaConf.to_container(cfg.model.source, resolve=True)
        # The stage-1 cell of the same method, noise, backbone and seed.
        twin = next(r for r in train if (r["model"], r["noise"], r["seed"]) ==
                    (cfg.model.name, cfg.noise.name, cfg.seed))
        assert source_run_dir(src) == Path(twin["run_dir"])


# --------------------------------------------------------------------------------------------------
# The runner: filters, commands, dry run, summary


def test_cells_filter_keeps_one_row_or_some_columns():
    plan = sweep_plan.load_sweep("dpsep_table1")
    one_row = sweep_plan.filter_plan(plan, sweep_plan.parse_cell_filters(["data=ucf101"]))
    assert len(one_row.cells()) == 2 * 9 * 3
    assert {dict(c.assignment)["data"] for c in one_row.cells()} == {"ucf101"}
    cols = sweep_plan.filter_plan(plan, sweep_plan.parse_cell_filters(["noise=sym50,sym80", "seed=1"]))
    assert {dict(c.assignment)["noise"] for c in cols.cells()} == {"sym50", "sym80"}
    assert len(cols.cells()) == 2 * 7 * 2
    assert "noise=sym50,sym80" in launch.hydra_command(cols.grids[0]) and "seed=1" in launch.hydra_command(cols.grids[0])


def test_cells_filter_across_stages():
    plan = sweep_plan.load_sweep("dpsep_table3")
    evals_only = sweep_plan.filter_plan(plan, {"data": ["ucf101"]})
    assert {c.sweep for c in evals_only.cells()} == {"dpsep_table3"} and len(evals_only.cells()) == 2 * 9 * 3
    dpsep = sweep_plan.filter_plan(plan, {"model": ["dpsep"], "model.name": ["dpsep"]})
    assert [len(g.cells()) for g in dpsep.grids] == [9 * 3, 4 * 9 * 3]


def test_stage_filter_keeps_one_stage_by_number_or_name():
    plan = sweep_plan.load_sweep("synthetic_readings_tango")
    assert [g.stage for g in plan.grids] == [1, 2]
    second = sweep_plan.filter_stage(plan, "2")
    by_name = sweep_plan.filter_stage(plan, "synthetic_readings_tango_paper_recipe")
    assert second == by_name and {c.sweep for c in second.cells()} == {"synthetic_readings_tango_paper_recipe"}
    assert len(second.cells()) == 9 * 3 * 3
    first = sweep_plan.filter_plan(sweep_plan.filter_stage(plan, "1"), {"model": ["ft_ce"]})  # ft_ce is only in stage 1
    assert len(first.cells()) == 3 * 3 and {c.sweep for c in first.cells()} == {"synthetic_readings_tango"}
    assert sweep_plan.filter_stage(plan, None) is plan
    with pytest.raises(sweep_plan.CellFilterError, match=r"no stage '3'.*1 \(synthetic_readings_tango\), "
                                                 r"2 \(synthetic_readings_tango_paper_recipe\)"):
        sweep_plan.filter_stage(plan, "3")
    with pytest.raises(sweep_plan.CellFilterError, match="valid values"):  # ft_ce is not a model of stage 2
        sweep_plan.filter_plan(sweep_plan.filter_stage(plan, "2"), {"model": ["ft_ce"]})


def test_cli_stage_option_runs_only_that_stage(capsys, monkeypatch):
    monkeypatch.setattr(launch.subprocess, "run", lambda *a, **k: pytest.fail("--dry-run must not run anything"))
    assert launch.main(["synthetic_readings_tango", "--stage", "2", "--cells", "model=tango", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "9 cells in 1 multirun(s)" in out and "sweep=synthetic_readings_tango_paper_recipe" in out
    assert "sweep=synthetic_readings_tango backbone" not in out
    assert launch.main(["synthetic_readings_tango", "--stage", "paper"]) == 2
    assert "its stages: 1 (synthetic_readings_tango)" in capsys.readouterr().err


@pytest.mark.parametrize("filters, message", [
    (["dataset=ucf101"], "unknown key 'dataset'.*valid keys: model, data, noise, seed"),
    (["data=ucf102"], "data has no value 'ucf102'.*valid values: imagenet, caltech101"),
    (["backbone=vit_b32"], "unknown key 'backbone'"),  # fixed by the recipe, not a grid key
    (["data"], "key=value"),
])
def test_cells_filter_rejects_bad_keys_and_values(filters, message):
    with pytest.raises(sweep_plan.CellFilterError, match=message):
        sweep_plan.filter_plan(sweep_plan.load_sweep("dpsep_table1"), sweep_plan.parse_cell_filters(filters))


def test_cli_rejects_a_bad_filter_and_a_swept_extra_override(capsys, monkeypatch):
    monkeypatch.setattr(launch.subprocess, "run", lambda *a, **k: pytest.fail("nothing may run"))
    assert launch.main(["dpsep_table1", "--cells", "data=nope"]) == 2
    assert "valid values" in capsys.readouterr().err
    assert launch.main(["synthetic_mini", "--", "model.lam=0.1,0.2"]) == 2
    assert "sweeps several values" in capsys.readouterr().err
    assert launch.main(["no_such_table"]) == 2
    err = capsys.readouterr().err
    assert "known sweeps: " in err and "dpsep_table1" in err


def test_dry_run_prints_the_commands_and_cells_and_runs_nothing(capsys, monkeypatch):
    monkeypatch.setattr(launch.subprocess, "run", lambda *a, **k: pytest.fail("--dry-run must not run anything"))
    assert launch.main(["dpsep_table3", "--dry-run", "--cells", "noise=sym50", "seed=1", "--force", "--", "trainer.max_epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "10 cells in 2 multirun(s)" in out
    assert ("-m noisy_prompt.run -m sweep=dpsep_table1 backbone=vit_b32 model=ptnl,dpsep data=imagenet noise=sym50 "
            "seed=1 force=true trainer.max_epochs=2") in out
    assert ("sweep=dpsep_table3 backbone=vit_b32 model=crossdata_eval model.source.sweep=dpsep_table1 "
            "model.source.data=imagenet ++train_data=imagenet model.name=ptnl,dpsep "
            "data=oxford_pets,food101,dtd,ucf101 noise=sym50 seed=1") in out
    assert "model.name=dpsep data=ucf101 noise=sym50 seed=1  [sweep=dpsep_table3]" in out


def test_module_entry_point_dry_run_from_another_directory(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "noisy_prompt.sweep", "synthetic_mini", "--dry-run"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "noisy_prompt.run -m sweep=synthetic_mini backbone=synthetic data.recipe.prompt.max_epochs=5 " \
           "model=zeroshot,coop,dpsep data=synthetic noise=clean,sym50 seed=1" in r.stdout
    assert list(tmp_path.iterdir()) == []


def test_the_printed_command_is_the_one_hydra_runs():
    grid = sweep_plan.load_sweep("synthetic_mini").grids[0]
    cmd = launch.hydra_command(grid, ["trainer.max_epochs=1"], launcher="slurm", force=True, python="python")
    assert cmd[:4] == ["python", "-m", "noisy_prompt.run", "-m"]
    assert cmd[-3:] == ["force=true", "hydra/launcher=slurm", "trainer.max_epochs=1"]
    assert sweep_plan.format_value("a b") == "'a b'" and sweep_plan.format_value("sym12.5") == "sym12.5" and sweep_plan.format_value(3) == "3"


@pytest.mark.parametrize("text, message", [
    ("table: t\ngrids: [{model: [coop]}]\nextra: 1\n", "unknown keys \\['extra'\\]"),
    ("table: t\noverrides: [model=coop]\ngrids: [{model: [coop]}]\n", "both in the grid and in the fixed overrides"),
    ("table: t\ngrids: [{model: []}]\n", "non-empty list"),
    ("table: t\ngrids: [{model: [coop, coop]}]\n", "lists a value twice"),
    ("table: t\ngrids: [{model: coop}]\n", "non-empty list"),
    ("table: t\noverrides: ['seed=1,2']\ngrids: [{model: [coop]}]\n", "sweeps several values"),
    ("table: t\ngrids: [{model: [coop]}]\nstages: []\n", "exactly one of 'grids' or 'stages'"),
    ("table: t\nstages: [{grids: [{model: [coop]}], note: x}]\n", "stage 1: unknown keys"),
    ("grids: [{model: [coop]}]\n", "'table' must be a name"),
])
def test_malformed_sweep_files_are_rejected_with_the_file_named(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(sweep_plan.SweepFileError, match=message) as err:
        sweep_plan.load_sweep(path)
    assert str(path) in str(err.value)


def test_a_cells_line_that_differs_from_the_grids_is_an_error_naming_the_file_and_both_counts(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("table: t\ncells: 7\ngrids: [{model: [coop, dpsep], noise: [clean, sym50, sym80]}]\n")
    with pytest.raises(sweep_plan.SweepFileError) as err:
        sweep_plan.load_sweep(path)
    assert str(err.value).startswith(f"{path}: 'cells: 7' but its grids expand to 6 cells")
    path.write_text("table: t\ncells: 6\ngrids: [{model: [coop, dpsep], noise: [clean, sym50, sym80]}]\n")
    assert sweep_plan.load_sweep(path).declared_cells == 6
    # stages count together: 2 + 3
    path.write_text("table: t\ncells: 5\nstages:\n  - grids: [{model: [coop, dpsep]}]\n"
                    "  - sweep: u\n    grids: [{model: [coop, dpsep, ptnl]}]\n")
    assert len(sweep_plan.load_sweep(path).cells()) == 5
    for bad in ("six", "true", "0", "[6]"):
        path.write_text(f"table: t\ncells: {bad}\ngrids: [{{model: [coop]}}]\n")
        with pytest.raises(sweep_plan.SweepFileError, match=f"{path}: 'cells' must be the number of cells"):
            sweep_plan.load_sweep(path)


def test_the_format_reader_never_loads_the_launcher():
    """The reporting code reads the sweep files' layouts and grids through the pure format module only:
    neither the runner (Hydra compose, subprocess) nor the old `noisy_prompt.sweep` module gets imported."""
    code = ("import sys; from noisy_prompt.reporting import tables; names = list(tables.TABLES); "
            "tables.grid_order('model', ['synthetic_mini']); "
            "print(sorted(m for m in sys.modules if m in ('noisy_prompt.sweep', 'noisy_prompt.sweeps.launch')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_the_sweep_module_and_the_package_share_one_implementation():
    from noisy_prompt import sweep

    assert sweep.load_sweep is sweep_plan.load_sweep and sweep.main is launch.main
    assert sweep.CONF_DIR == REPO / "conf" and sweep.CONF_DIR.is_dir()
    # the YAML folder is the repository's sweeps/, not the package noisy_prompt/sweeps/
    assert sweep_plan.SWEEPS_DIR == REPO / "sweeps" and (sweep_plan.SWEEPS_DIR / "dpsep_table1.yaml").is_file()


def test_one_override_validator_for_the_file_and_the_command_line(tmp_path):
    with pytest.raises(sweep_plan.SweepFileError, match="overrides: 'seed=1,2' sweeps several values; put swept keys"):
        sweep_plan.validate_overrides(["seed=1,2"], where=f"{tmp_path}: overrides", swept="put swept keys in a grid",
                                      sweep_key="-")
    with pytest.raises(sweep_plan.CellFilterError, match="extra Hydra overrides: do not set 'sweep'"):
        launch.check_extra_overrides(["sweep=x"])
    with pytest.raises(sweep_plan.CellFilterError, match="extra Hydra overrides: invalid override"):
        launch.check_extra_overrides(["a=["])
    launch.check_extra_overrides(["trainer.max_epochs=1", "+x=2"])  # single values pass


def test_grid_values_follow_the_grids_and_name_stages_apart():
    values = sweep_plan.grid_values()
    assert values["synthetic_mini"]["model"] == ("zeroshot", "coop", "dpsep")
    assert values["synthetic_mini"]["noise"] == ("clean", "sym50")
    # a stage with its own sweep name is its own entry; dpsep_table3's training stage joins dpsep_table1
    assert "synthetic_readings_tango_paper_recipe" in values
    assert "imagenet" in values["dpsep_table1"]["data"]


MINI = """\
# a test sweep
table: synthetic_mini
overrides: [backbone=synthetic]
grids:
  - model: [zeroshot, coop, dpsep]
    data: [synthetic]
    noise: [clean, sym50]
    seed: [1]
"""


def _write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def test_summary_counts_done_skipped_failed_and_missing(tmp_path, logs, capsys, monkeypatch):
    sweep_file = tmp_path / "mini.yaml"
    sweep_file.write_text(MINI)
    cell_dir = lambda m, n: logs / "synthetic_mini" / m / "synthetic" / n / "synthetic" / "seed1"  # noqa: E731
    _write(cell_dir("zeroshot", "clean") / "results.json", {"status": "ok"})        # finished earlier
    _write(cell_dir("dpsep", "clean") / "failed.json", {"error": "old failure"})    # not retried below
    launched = []

    def fake_multirun(cmd, env=None, **kw):
        launched.append(cmd)
        assert env["PYTHONPATH"].split(os.pathsep)[0] == str(sweep_plan.REPO_ROOT)
        _write(cell_dir("zeroshot", "sym50") / "results.json", {"status": "ok"})
        _write(cell_dir("coop", "clean") / "results.json", {"status": "ok"})
        _write(cell_dir("coop", "sym50") / "failed.json", {"error": "RuntimeError: boom\nTraceback..."})
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(launch.subprocess, "run", fake_multirun)
    assert launch.main([str(sweep_file), "--force"]) == 1
    out = capsys.readouterr().out
    assert len(launched) == 1 and "force=true" in launched[0]
    assert "6 cells: 2 done, 1 skipped (already had results.json), 1 failed, 2 missing" in out
    assert "FAILED  model=coop data=synthetic noise=sym50 seed=1" in out and "RuntimeError: boom" in out
    assert "Traceback" not in out
    assert f"aggregate: python -m noisy_prompt.aggregate {logs / 'synthetic_mini'} --table synthetic_mini" in out


def test_summary_is_clean_when_every_cell_finishes(tmp_path, logs, capsys, monkeypatch):
    sweep_file = tmp_path / "mini.yaml"
    sweep_file.write_text(MINI)
    plan = sweep_plan.load_sweep(sweep_file)
    dirs = launch.compose_run_dirs(plan.cells())

    def fake_multirun(cmd, env=None, **kw):
        for d in dirs.values():
            _write(d.run_dir / "results.json", {"status": "ok"})
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(launch.subprocess, "run", fake_multirun)
    assert launch.main([str(sweep_file)]) == 0
    assert "6 cells: 6 done, 0 skipped (already had results.json), 0 failed, 0 missing" in capsys.readouterr().out
    monkeypatch.setattr(launch.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1))
    assert launch.main([str(sweep_file)]) == 1  # all skipped, but the multirun itself failed
    assert "launch error: multirun 1 exited with code 1" in capsys.readouterr().out


def test_run_dirs_follow_user_overrides_of_the_log_dir(tmp_path, logs):
    cell = sweep_plan.load_sweep("synthetic_mini").cells()[0]
    other = tmp_path / "elsewhere"
    (d,) = launch.compose_run_dirs([cell], [f"paths.log_dir={other}"]).values()
    # paths.log_dir moves the dir but is not a setting; the sweep's recipe override is (settings tag)
    tag = settings_tag({"data.recipe.prompt.max_epochs": "5"})
    assert d.run_dir == other / "synthetic_mini" / "zeroshot" / "synthetic" / "clean" / "synthetic" / f"seed1{tag}"
    assert d.sweep_dir == other / "synthetic_mini"


# --------------------------------------------------------------------------------------------------
# SLURM launcher config

# Keys of hydra-submitit-launcher 1.2's SlurmQueueConf (its public configuration API).
SUBMITIT_SLURM_KEYS = {
    "_target_", "submitit_folder", "timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb",
    "nodes", "name", "stderr_to_stdout", "partition", "qos", "comment", "constraint", "exclude", "gres",
    "cpus_per_gpu", "gpus_per_task", "mem_per_gpu", "mem_per_cpu", "account", "signal_delay_s", "max_num_timeout",
    "additional_parameters", "array_parallelism", "setup",
}


def _plugin_installed() -> bool:
    return launch.slurm_plugin_available()


@pytest.fixture
def submitit_slurm_schema():
    """The plugin's `hydra/launcher/submitit_slurm` node, or a stand-in when the plugin is absent."""
    if _plugin_installed():
        import hydra_plugins.hydra_submitit_launcher.config  # noqa: F401  (registers the schema)

        yield
        return
    from hydra.core.config_store import ConfigStore

    repo = ConfigStore.instance().repo
    ConfigStore.instance().store(group="hydra/launcher", name="submitit_slurm", provider="test",
                                 node={"_target_": "stand.in.SlurmLauncher", "submitit_folder": "unset"})
    yield
    repo["hydra"]["launcher"].pop("submitit_slurm.yaml", None)


def _launcher_cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="run", overrides=["sweep=dpsep_table1", "hydra/launcher=slurm", *overrides],
                      return_hydra_config=True)
    return cfg.hydra.launcher, cfg


def test_slurm_launcher_settings_resolve(submitit_slurm_schema, logs, monkeypatch):
    for var in ("PARTITION", "ACCOUNT", "QOS", "TIMEOUT_MIN", "CPUS", "MEM_GB", "MAX_JOBS"):
        monkeypatch.delenv(f"NOISY_PROMPT_SLURM_{var}", raising=False)
    launcher, _ = _launcher_cfg()
    own = set(OmegaConf.load(CONF / "hydra" / "launcher" / "slurm.yaml")) - {"defaults"}
    assert own <= SUBMITIT_SLURM_KEYS, own - SUBMITIT_SLURM_KEYS
    values = OmegaConf.to_container(launcher, resolve=True)
    assert values["gpus_per_node"] == 1 and values["tasks_per_node"] == 1 and values["nodes"] == 1
    assert values["timeout_min"] == 720 and isinstance(values["cpus_per_task"], int)
    assert values["partition"] is None and values["account"] is None
    assert values["submitit_folder"] == str(logs / "dpsep_table1" / ".submitit" / "%j")
    monkeypatch.setenv("NOISY_PROMPT_SLURM_PARTITION", "gpu-a100")
    monkeypatch.setenv("NOISY_PROMPT_SLURM_TIMEOUT_MIN", "90")
    launcher, _ = _launcher_cfg("hydra.launcher.mem_gb=64")
    assert (launcher.partition, launcher.timeout_min, launcher.mem_gb) == ("gpu-a100", 90, 64)


@pytest.mark.skipif(not _plugin_installed(), reason="hydra-submitit-launcher is not installed (optional extra: "
                    "pip install -e .[slurm]); the launcher was checked against a stand-in schema only")
def test_slurm_launcher_composes_with_the_plugin(logs):
    launcher, _ = _launcher_cfg()
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"
    assert launcher.gpus_per_node == 1


def test_cli_says_which_extra_slurm_needs(capsys, monkeypatch):
    if _plugin_installed():
        pytest.skip("hydra-submitit-launcher is installed: the missing-plugin message cannot show")
    monkeypatch.setattr(launch.subprocess, "run", lambda *a, **k: pytest.fail("nothing may run"))
    assert launch.main(["synthetic_mini", "--launcher", "slurm"]) == 2
    assert "pip install -e .[slurm]" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Cross-dataset evaluation (DP-SEP Table 3)


def _crossdata_cfg(*extra):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="run", overrides=["sweep=dpsep_table3", "model=crossdata_eval", "data=dtd",
                                                     "noise=sym50", "backbone=vit_b32", "seed=2", *extra])


def _build(cfg, classnames=("banded", "woven")):
    kwargs = ctor_kwargs(cfg, "model")
    target = kwargs.pop("_target_")
    return get_class(target)(**kwargs, backbone=OmegaConf.to_container(cfg.backbone, resolve=True),
                             classnames=list(classnames), seed=int(cfg.seed))


def test_crossdata_preset_composes_as_a_cross_dataset_cell(logs):
    cfg = _crossdata_cfg("model.name=dpsep", "++train_data=imagenet")
    keys = CellId.from_config(cfg).to_record()
    assert (keys["model"], keys["data"], keys["train_data"], keys["noise"]) == ("dpsep", "dtd", "imagenet", "sym50")
    assert cfg.run_dir == str(logs / "dpsep_table3" / "dpsep" / "dtd" / "sym50" / "vit_b32" / "seed2")
    src = ctor_kwargs(cfg, "model")["source"]
    assert source_checkpoint_path(src) == \
        logs / "dpsep_table1" / "dpsep" / "imagenet" / "sym50" / "vit_b32" / "seed2" / "checkpoints" / "last.ckpt"
    assert cfg.model.max_epochs == 1 and cfg.data.views == 1  # no 50 cached views of an unused train split


def test_crossdata_missing_source_names_the_checkpoint_and_the_command(logs):
    cfg = _crossdata_cfg("model.name=ptnl", "++train_data=imagenet")
    # Raised before CLIP is built: ViT-B/32 weights are not available in tests.
    with pytest.raises(SourceCheckpointError) as err:
        _build(cfg)
    text = str(err.value)
    assert str(logs / "dpsep_table1" / "ptnl" / "imagenet" / "sym50" / "vit_b32" / "seed2" / "checkpoints" / "last.ckpt") in text
    assert (f"python -m noisy_prompt.run sweep=dpsep_table1 model=ptnl data=imagenet noise=sym50 backbone=vit_b32 "
            f"seed=2 paths.log_dir={logs}") in text


def test_crossdata_needs_the_source_method_name(logs):
    with pytest.raises(ValueError, match="set model.name=<ptnl"):
        _build(_crossdata_cfg())


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    import open_clip

    path = tmp_path_factory.mktemp("tiny_clip") / "NoisyPromptSweepTinyCLIP.json"
    path.write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }))
    open_clip.add_model_config(path)
    return {"model": "NoisyPromptSweepTinyCLIP", "pretrained": None, "allow_random": True, "name": "tiny"}


def _train_source(tiny_backbone, source: dict):
    """A CoOp cell trained for one epoch, its last.ckpt written by the project's checkpoint callback."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from noisy_prompt.methods.coop import CoOp

    torch.manual_seed(0)
    model = CoOp(backbone=tiny_backbone, classnames=["cat", "dog", "bird"], n_ctx=4, max_epochs=1, seed=1,
                 optim={"lr": 0.5, "warmup_epochs": 0})
    data = [{"x": torch.randn(32), "label": torch.tensor(i % 3), "index": torch.tensor(i)} for i in range(12)]
    ckpt = ModelCheckpoint(dirpath=source_run_dir(source) / "checkpoints", save_last=True, save_top_k=0, every_n_epochs=1)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, callbacks=[ckpt], enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(source_run_dir(source)))
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=4))
    return model


def test_crossdata_loads_the_trained_context_for_the_target_classes(tmp_path, tiny_backbone):
    import lightning as L

    from noisy_prompt.methods.coop import CoOp

    source = {"model": "coop", "data": "imagenet", "sweep": "t1", "noise": "sym50", "backbone": "tiny",
              "seed": 1, "log_dir": str(tmp_path)}
    trained = _train_source(tiny_backbone, source)
    assert source_checkpoint_path(source).is_file()
    target = ["red car", "blue boat"]
    torch.manual_seed(123)  # the same random tiny CLIP for the module and its reference
    ev = CrossDataEval(source=source, n_ctx=16, backbone=tiny_backbone, classnames=target, max_epochs=1, seed=7)
    assert ev.trains is False and not ev.trainable_parameters()
    assert torch.equal(ev.ctx, trained.ctx.detach())
    torch.manual_seed(123)
    ref = CoOp(backbone=tiny_backbone, classnames=target, n_ctx=4, max_epochs=1, seed=7)
    assert torch.equal(ref.clip.token_embedding.weight, ev.clip.token_embedding.weight)
    with torch.no_grad():
        ref.ctx.copy_(trained.ctx)
        x = torch.randn(5, 32)
        assert ev.logits(x).shape == (5, 2)
        assert torch.allclose(ev.logits(x), ref.logits(x), atol=1e-5)
        assert not torch.allclose(ev.ctx, CoOp(backbone=tiny_backbone, classnames=target, n_ctx=4, seed=7).ctx)
    test = [{"x": torch.randn(32), "label": torch.tensor(i % 2), "index": torch.tensor(i)} for i in range(6)]
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=str(tmp_path / "eval")).test(
        ev, dataloaders=torch.utils.data.DataLoader(test, batch_size=3), verbose=False)
    with torch.no_grad():
        expected = (ref.logits(torch.stack([t["x"] for t in test])).argmax(-1) == torch.arange(6) % 2).float().mean()
    assert ev.test_report["test"]["acc"] == pytest.approx(100 * float(expected))


def test_crossdata_rejects_a_checkpoint_without_a_prompt(tmp_path, tiny_backbone):
    source = {"model": "tango", "data": "imagenet", "sweep": "t1", "noise": "sym50", "backbone": "tiny",
              "seed": 1, "log_dir": str(tmp_path)}
    path = source_checkpoint_path(source)
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {"clip.visual.proj": torch.zeros(2, 2)}}, path)
    with pytest.raises(SourceCheckpointError, match="no prompt context 'state_dict.ctx'.*clip.visual.proj"):
        CrossDataEval(source=source, backbone=tiny_backbone, classnames=["a", "b"], seed=1)


# --------------------------------------------------------------------------------------------------
# End to end (slow): the synthetic mini-table through the real runner, twice, then aggregated


@pytest.mark.slow
def test_synthetic_mini_sweep_end_to_end(tmp_path):
    logs, cache = tmp_path / "logs", tmp_path / "cache"
    env = {**os.environ, "NOISY_PROMPT_LOGS": str(logs), "NOISY_PROMPT_CACHE": str(cache),
           "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # Two epochs instead of the sweep's five, through the same recipe key (model, schedule and cached
    # views stay consistent).
    cmd = [sys.executable, "-m", "noisy_prompt.sweep", "synthetic_mini", "--", "data.recipe.prompt.max_epochs=2"]
    first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=800)
    summary = first.stdout[first.stdout.rfind("== synthetic_mini"):]
    assert first.returncode == 0, f"{summary}\n--- stderr tail:\n{first.stderr[-3000:]}"
    assert "6 cells: 6 done, 0 skipped" in summary

    results = sorted((logs / "synthetic_mini").rglob("results.json"))
    cells = {(r["cell"]["model"], r["cell"]["noise"]) for r in (json.loads(p.read_text()) for p in results)}
    assert len(results) == 6
    assert cells == {(m, n) for m in ("zeroshot", "coop", "dpsep") for n in ("clean", "sym50")}

    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "6 cells: 0 done, 6 skipped (already had results.json), 0 failed, 0 missing" in second.stdout

    agg = subprocess.run([sys.executable, "-m", "noisy_prompt.aggregate", str(logs / "synthetic_mini"),
                          "--table", "synthetic_mini"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert agg.returncode == 0, agg.stderr
    header = next(line for line in agg.stdout.splitlines() if line.startswith("| model |"))
    assert header.split("|")[2:4] == [" clean ", " sym50 "]
    for model in ("zeroshot", "coop", "dpsep"):
        row = next(line for line in agg.stdout.splitlines() if line.startswith(f"| {model} |"))
        assert row.count("(n=1)") == 2, row
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "logs"]  # nothing else in the cwd


@pytest.mark.parametrize("table,extra,backbone", [("dpsep_sensitivity", [], "vit_b32"),
                                                  ("dpsep_sensitivity", ["data=synthetic"], "synthetic"),
                                                  ("tango_sensitivity", ["data=synthetic_full"], "synthetic")])
def test_sensitivity_sweeps_give_one_dir_per_setting_and_run_on_the_synthetic_world(table, extra, backbone, logs):
    plan = sweep_plan.load_sweep(table)
    cells = plan.cells()
    dirs = launch.compose_run_dirs(cells, extra)
    assert len({d.run_dir for d in dirs.values()}) == len(cells) == plan.declared_cells
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for cell in cells[::13]:
            cfg = compose(config_name="run", overrides=cell.overrides() + extra, return_hydra_config=True)
            rec = CellId.from_config(cfg).to_record()
            (key, value), _seed = cell.assignment
            assert rec["settings"] == {key: str(value)} and rec["backbone"] == backbone
            assert f"__{key.rsplit('.', 1)[-1]}={value}__" in Path(cfg.run_dir).name
            assert Path(cfg.run_dir) == dirs[cell].run_dir
