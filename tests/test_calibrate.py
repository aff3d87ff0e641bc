"""The calibration command's target logic (T1-T8 of docs/synthetic-world.md) on stubbed results sets."""
from __future__ import annotations

import copy

import pytest

from noisy_prompt.synthetic import calibrate

PASSING = {
    "logit_scale": 100.0, "zs": 60.0, "zs_min_class": 22.0, "zs_shift": 66.0,
    "coop": {"clean": [70.0, 71.0, 69.0], "sym25": [64.0, 65.0, 63.0], "sym50": [50.0, 51.0, 49.0],
             "sym80": [30.0, 31.0, 29.0]},
    "ptnl": {"clean": [71.0, 70.0, 72.0], "sym25": [68.0, 68.0, 68.0], "sym50": [63.0, 64.0, 62.0],
             "sym80": [50.0, 51.0, 52.0]},
    "ft_ce": {"clean": [75.0, 74.0, 76.0], "sym40": [60.0, 61.0, 59.0]},
    "tac": 58.0, "tac_min_class": 20.0,
}


def _failing(res):
    return [(r["target"], r["check"]) for r in calibrate.evaluate_targets(res) if not r["ok"]]


def test_a_results_set_meeting_every_target_passes():
    rows = calibrate.evaluate_targets(PASSING)
    assert {r["target"] for r in rows} == {f"T{i}" for i in range(1, 9)}
    assert calibrate.all_hold(rows), _failing(PASSING)
    table = calibrate.format_table(rows, {"median_true_class_cosine": 0.3})
    assert "✗" not in table and f"{len(rows)}/{len(rows)} checks hold" in table and "median_true_class_cosine" in table


@pytest.mark.parametrize("path, value, failing", [
    (("logit_scale",), 24.4, ("T1", "exp(logit_scale)")),
    (("zs",), 80.0, ("T2", "ZS (plain template)")),
    (("zs_min_class",), 0.0, ("T2", "ZS worst class")),
    (("zs_shift",), 64.0, ("T2", "ZS, template naming the shift")),
    (("coop", "clean"), [66.0, 67.0, 68.0], ("T3", "CoOp clean")),
    (("coop", "clean"), [60.0, 70.0, 80.0], ("T3", "CoOp clean seed std")),
    (("ptnl", "sym25"), [70.0, 70.0, 70.0], ("T4", "PTNL clean - sym25")),
    (("coop", "sym50"), [13.5, 13.5, 13.5], ("T5", "CoOp sym50")),   # the first world's collapse
    (("ptnl", "sym50"), [59.0, 59.0, 59.0], ("T5", "PTNL sym50")),
    (("ptnl", "sym80"), [58.0, 58.0, 58.0], ("T6", "PTNL sym80")),
    (("coop", "sym80"), [45.0, 45.0, 45.0], ("T6", "CoOp sym80")),
    (("ft_ce", "clean"), [65.0, 65.0, 65.0], ("T7", "ft_ce clean (full data)")),
    (("ft_ce", "sym40"), [70.0, 70.0, 70.0], ("T7", "ft_ce clean - sym40")),
    (("tac",), 55.0, ("T8", "zero-shot TAC, class descriptions")),
    (("tac_min_class",), 10.0, ("T8", "zero-shot TAC worst class")),
])
def test_each_target_fails_on_its_own_violation(path, value, failing):
    res = copy.deepcopy(PASSING)
    d = res
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    assert failing in _failing(res)
    assert not calibrate.all_hold(calibrate.evaluate_targets(res))
    assert "✗" in calibrate.format_table(calibrate.evaluate_targets(res))


def test_unmeasured_quantities_fail_instead_of_passing():
    res = copy.deepcopy(PASSING)
    res["coop"]["clean"] = [70.0]  # one seed: no std
    del res["tac"]
    fails = _failing(res)
    assert ("T3", "CoOp clean seed std") in fails and ("T8", "zero-shot TAC, class descriptions") in fails
    rows = calibrate.evaluate_targets({})
    assert rows and not any(r["ok"] for r in rows)


def test_the_plan_runs_every_cell_the_targets_need_once_per_seed():
    cells = calibrate.plan([1, 2, 3], threads=1)
    keys = [c.key for c in cells]
    assert len(keys) == len(set(keys))
    for s in (1, 2, 3):
        for m in ("coop", "ptnl"):
            assert all(calibrate.Cell(m, "synthetic", n, s, 1) in cells for n in calibrate.PROMPT_NOISES)
        assert all(calibrate.Cell("ft_ce", "synthetic_full", n, s, 1) in cells for n in calibrate.FT_NOISES)
    assert sum(c.model == "zeroshot" for c in cells) == 2  # plain and shift-naming template, seed-free
    assert calibrate.Cell("coop", "synthetic", "clean", 1, 2) in cells  # the thread-count diagnostic
    assert len(calibrate.plan([1], threads=1, thread_check=False)) == 2 + 10


@pytest.mark.parametrize("quick", [False, True])
def test_every_planned_cell_composes_with_its_overrides(quick, tmp_path):
    """Each cell's command must compose (Hydra refuses an override of a key its data config lacks: --quick
    once cut data.recipe.tango.max_epochs on the few-shot split, which has none, and every prompt cell
    failed). --quick shortens exactly the recipe the cell's data config trains with."""
    from hydra import compose, initialize_config_dir

    import noisy_prompt.config  # noqa: F401  (resolvers)
    from noisy_prompt.sweep import CONF_DIR

    cells = calibrate.plan([1], threads=1)
    assert {c.data for c in cells} <= set(calibrate.QUICK_OVERRIDES)  # no cell runs uncut under --quick
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for cell in cells:
            overrides = calibrate.cell_overrides(cell, tmp_path / cell.key, "local-dir:/nonexistent", quick, False)
            cfg = compose(config_name="run", overrides=overrides)
            recipe = "prompt" if cell.data == "synthetic" else "tango"
            full = {"prompt": 20, "tango": 5}[recipe]
            assert cfg.data.recipe[recipe].max_epochs == ((8 if recipe == "prompt" else 2) if quick else full), cell.key


def test_run_dirs_are_the_run_commands_own_and_quick_never_shares_one(tmp_path):
    """calibrate reads results.json from the very dir the run command writes (settings tag included), so a
    --quick result can never be read as the calibration's, nor an older configuration's."""
    cells = calibrate.plan([1], threads=1, thread_check=False)
    full = calibrate.run_dirs({c: calibrate.cell_overrides(c, tmp_path / c.key, "local-dir:/w", False, False) for c in cells})
    quick = calibrate.run_dirs({c: calibrate.cell_overrides(c, tmp_path / c.key, "local-dir:/w", True, False) for c in cells})
    for c in cells:
        assert full[c].is_relative_to(tmp_path / c.key / "calibration" / c.model / c.data / c.noise)
        assert full[c].name.startswith(f"seed{c.seed}") and quick[c] != full[c], c.key
