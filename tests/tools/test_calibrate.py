"""The calibration (`python -m noisy_prompt.tools.calibrate`, `make calibrate`): T1-T10 of
docs/synthetic-world.md on stubbed results sets, the per-seed rows, the sweep file it runs
(sweeps/calibration.yaml) and, slow, `--check-only` over real records of a very short sweep."""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from noisy_prompt.tools import calibrate
from paths import REPO


def _seeds(*accs, **per_seed):
    """{seed: run} with the given accuracies (seeds 1..n) and any per-seed lists (loss=[...], fit_noisy=[...])."""
    runs = {s: {"acc": a} for s, a in enumerate(accs, 1)}
    for key, values in per_seed.items():
        for s, v in enumerate(values, 1):
            if v is not None:
                runs[s][key] = v
    return runs


PASSING = {
    "logit_scale": 100.0, "num_classes": 64, "zs": 60.0, "zs_min_class": 22.0, "zs_shift": 66.0,
    "runs": {
        "coop": {"clean": _seeds(70.0, 71.0, 69.0), "sym25": _seeds(64.0, 65.0, 63.0),
                 "sym50": _seeds(50.0, 51.0, 49.0, loss=[2.4, 2.3, 2.5], fit_noisy=[0.2, 0.18, 0.22]),
                 "sym80": _seeds(30.0, 31.0, 29.0)},
        "ptnl": {"clean": _seeds(71.0, 70.0, 72.0), "sym25": _seeds(68.0, 68.0, 68.0),
                 "sym50": _seeds(63.0, 64.0, 62.0, loss=[0.9, 0.9, 0.9], fit_noisy=[0.05, 0.04, 0.06]),
                 "sym80": _seeds(50.0, 51.0, 52.0)},
        "ft_ce": {"clean": _seeds(75.0, 74.0, 76.0), "sym40": _seeds(60.0, 61.0, 59.0)},
    },
    "tac": 58.0, "tac_min_class": 20.0,
}


def _failing(res):
    return [(r["target"], r["check"]) for r in calibrate.evaluate_targets(res) if not r["ok"]]


def _set(res, path, value):
    res = copy.deepcopy(res)
    d = res
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    return res


def test_a_results_set_meeting_every_target_passes():
    rows = calibrate.evaluate_targets(PASSING)
    assert {r["target"] for r in rows} == {f"T{i}" for i in range(1, 11)}
    assert calibrate.all_hold(rows), _failing(PASSING)
    table = calibrate.format_table(rows, {"median_true_class_cosine": 0.3})
    assert "✗" not in table and f"{len(rows)}/{len(rows)} checks hold" in table and "median_true_class_cosine" in table
    t9 = {r["check"]: r for r in rows if r["target"] == "T9"}
    assert t9["CoOp sym50 train loss, worst seed"]["measured"] == 2.5  # the worst seed, not the mean
    assert "3.16" in t9["CoOp sym50 train loss, worst seed"]["threshold"]  # ln 64 - 1
    t10 = {r["check"]: r["measured"] for r in rows if r["target"] == "T10"}
    assert t10 == {"CoOp sym50 wrong labels predicted %": 20.0, "PTNL sym50 wrong labels predicted %": 5.0}


@pytest.mark.parametrize("path, value, failing", [
    (("logit_scale",), 24.4, ("T1", "exp(logit_scale)")),
    (("zs",), 80.0, ("T2", "ZS (plain template)")),
    (("zs_min_class",), 0.0, ("T2", "ZS worst class")),
    (("zs_shift",), 64.0, ("T2", "ZS, template naming the shift")),
    (("runs", "coop", "clean"), _seeds(66.0, 67.0, 68.0), ("T3", "CoOp clean")),
    (("runs", "coop", "clean"), _seeds(60.0, 70.0, 80.0), ("T3", "CoOp clean seed std")),
    (("runs", "ptnl", "sym25"), _seeds(70.0, 70.0, 70.0), ("T4", "PTNL clean - sym25")),
    (("runs", "coop", "sym50"), _seeds(13.5, 13.5, 13.5, loss=[4.16] * 3, fit_noisy=[0.2] * 3), ("T5", "CoOp sym50")),
    (("runs", "ptnl", "sym50"), _seeds(59.0, 59.0, 59.0, fit_noisy=[0.05] * 3), ("T5", "PTNL sym50")),
    (("runs", "ptnl", "sym80"), _seeds(58.0, 58.0, 58.0), ("T6", "PTNL sym80")),
    (("runs", "coop", "sym80"), _seeds(45.0, 45.0, 45.0), ("T6", "CoOp sym80")),
    (("runs", "ft_ce", "clean"), _seeds(65.0, 65.0, 65.0), ("T7", "ft_ce clean (full data)")),
    (("runs", "ft_ce", "sym40"), _seeds(70.0, 70.0, 70.0), ("T7", "ft_ce clean - sym40")),
    (("tac",), 55.0, ("T8", "zero-shot TAC, class descriptions")),
    (("tac_min_class",), 10.0, ("T8", "zero-shot TAC worst class")),
    # T9: one seed collapsed to uniform predictions (loss = ln C, accuracy near chance) fails the set,
    # whatever the mean; so does a seed that ends above ln C - 1 without collapsing (every wrong label paid).
    (("runs", "coop", "sym50"), _seeds(50.0, 51.0, 49.0, loss=[2.4, 4.16, 2.5], fit_noisy=[0.2] * 3),
     ("T9", "CoOp sym50 train loss, worst seed")),
    (("runs", "coop", "sym50"), _seeds(50.0, 51.0, 49.0, loss=[2.4, 11.5, 2.5], fit_noisy=[0.2] * 3),
     ("T9", "CoOp sym50 train loss, worst seed")),
    (("runs", "coop", "sym50"), _seeds(30.0, 60.0, 59.0, loss=[2.4, 2.3, 2.5], fit_noisy=[0.2] * 3),
     ("T9", "CoOp sym50 test, worst seed")),
    (("runs", "coop", "sym50"), _seeds(40.0, 52.0, 56.0, loss=[2.4, 2.3, 2.5], fit_noisy=[0.2] * 3),
     ("T9", "CoOp sym50 seed std")),
    (("num_classes",), None, ("T9", "CoOp sym50 train loss, worst seed")),
    # T10: no wrong label fitted (the committed world), or memorised; GCE fitting many.
    (("runs", "coop", "sym50"), _seeds(50.0, 51.0, 49.0, loss=[2.4] * 3, fit_noisy=[0.0195, 0.0039, 0.01]),
     ("T10", "CoOp sym50 wrong labels predicted %")),
    (("runs", "coop", "sym50"), _seeds(50.0, 51.0, 49.0, loss=[2.4] * 3, fit_noisy=[0.83, 0.8, 0.85]),
     ("T10", "CoOp sym50 wrong labels predicted %")),
    (("runs", "ptnl", "sym50"), _seeds(63.0, 64.0, 62.0, fit_noisy=[0.2, 0.1, 0.15]),
     ("T10", "PTNL sym50 wrong labels predicted %")),
])
def test_each_target_fails_on_its_own_violation(path, value, failing):
    res = _set(PASSING, path, value)
    assert failing in _failing(res)
    assert not calibrate.all_hold(calibrate.evaluate_targets(res))
    assert "✗" in calibrate.format_table(calibrate.evaluate_targets(res))


def test_unmeasured_quantities_fail_instead_of_passing():
    res = copy.deepcopy(PASSING)
    res["runs"]["coop"]["clean"] = _seeds(70.0)  # one seed: no std
    del res["tac"]
    fails = _failing(res)
    assert ("T3", "CoOp clean seed std") in fails and ("T8", "zero-shot TAC, class descriptions") in fails
    # a seed whose record has no train loss / fit (a run made before TrainFit) leaves T9 / T10 unmeasured
    res = copy.deepcopy(PASSING)
    del res["runs"]["coop"]["sym50"][2]["loss"]
    del res["runs"]["ptnl"]["sym50"][3]["fit_noisy"]
    fails = _failing(res)
    assert ("T9", "CoOp sym50 train loss, worst seed") in fails and ("T10", "PTNL sym50 wrong labels predicted %") in fails
    rows = {(r["target"], r["check"]): r for r in calibrate.evaluate_targets(res)}
    assert rows[("T9", "CoOp sym50 train loss, worst seed")]["measured"] is None
    rows = calibrate.evaluate_targets({})
    assert rows and not any(r["ok"] for r in rows)


def test_the_per_seed_rows_show_a_collapsed_seed_beside_the_others():
    res = _set(PASSING, ("runs", "coop", "sym50"), _seeds(29.93, 67.82, 65.38, loss=[4.16, 11.5, None],
                                                          fit_noisy=[0.0195, 0.0039, 0.0078]))
    rows = calibrate.per_seed_rows(res)
    assert [r["seed"] for r in rows] == [1, 2, 3]
    assert [r["CoOp sym50"] for r in rows] == [29.93, 67.82, 65.38]
    assert [r["CoOp sym50 loss"] for r in rows] == [4.16, 11.5, None]
    assert rows[0]["CoOp sym50 wrong fit %"] == pytest.approx(1.95)
    assert all(r["ZS*"] == 60.0 for r in rows) and rows[2]["ft_ce sym40"] == 59.0
    text = calibrate.format_per_seed(res)
    lines = text.splitlines()
    assert "ln C = 4.16" in lines[0] and "CoOp" in lines[1] and "sym50" in lines[2] and "loss" in lines[2]
    seed1, seed3 = lines[3].split(), lines[5].split()
    assert seed1[0] == "1" and "29.93" in seed1 and "4.16" in seed1 and "1.95" in seed1
    assert seed3[0] == "3" and "n/a" in seed3 and "65.38" in seed3
    assert len({len(line) for line in lines[1:]}) == 1, "columns aligned"
    assert calibrate.format_per_seed({}) == "per seed: no runs"


def _sweep_cells() -> tuple[list[dict[str, str]], str]:
    """The cells the sweep command lists for sweeps/calibration.yaml (its public CLI, nothing run)."""
    r = subprocess.run([sys.executable, "-m", "noisy_prompt.sweep", "calibration", "--dry-run"], capture_output=True,
                       text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("cells:\n", 1)[1].splitlines()
    return [dict(kv.split("=", 1) for kv in line.split("[")[0].split()) for line in lines if line.strip()], r.stdout


def test_the_sweep_file_expands_to_the_cells_the_targets_need():
    cells, out = _sweep_cells()
    keys = [(c["model"], c["data"], c["noise"], int(c["seed"])) for c in cells]
    expected = {("zeroshot", "synthetic", "clean", 1)}
    expected |= {(m, "synthetic", n, s) for m in calibrate.PROMPT_MODELS for n in calibrate.PROMPT_NOISES for s in (1, 2, 3)}
    expected |= {("ft_ce", "synthetic_full", n, s) for n in calibrate.FT_NOISES for s in (1, 2, 3)}
    assert set(keys) == expected
    assert len(keys) == len(expected) + 1 and keys.count(("zeroshot", "synthetic", "clean", 1)) == 2  # plain + shift
    # the shift-naming zero-shot cell uses the world's own template, through the sweep's overrides
    from noisy_prompt.synthetic.captions import SHIFT_TEMPLATE

    raw = yaml.safe_load((REPO / "sweeps" / "calibration.yaml").read_text())
    assert raw["stages"][1]["overrides"] == [f"+data.templates=['{SHIFT_TEMPLATE}']"]
    assert SHIFT_TEMPLATE in out and "backbone=synthetic" in out


def test_sweep_commands_split_the_models_and_pass_the_overrides(tmp_path):
    one = calibrate.sweep_commands([1, 2, 3], 1, tmp_path, ["a.b=1"], python="py")
    assert one == [["py", "-m", "noisy_prompt.sweep", "calibration", "--cells", "seed=1,2,3", "--", "a.b=1",
                    f"paths.log_dir={tmp_path}"]]
    two = calibrate.sweep_commands([1], 2, tmp_path, [], force=True, python="py")
    models = [c[c.index("--cells") + 2].split("=", 1)[1].split(",") for c in two]
    assert sorted(m for part in models for m in part) == sorted(["zeroshot", "coop", "ptnl", "ft_ce"])
    assert all("--force" in c and c[-1] == f"paths.log_dir={tmp_path}" for c in two)
    # --quick's shortened recipes are settings: their records never mix with the calibration's
    assert set(calibrate.expected_settings(calibrate.QUICK_OVERRIDES)) == {"data.recipe.prompt.max_epochs",
                                                                           "data.recipe.tango.max_epochs"}
    assert calibrate.expected_settings([f"paths.log_dir={tmp_path}", "callbacks.progress.refresh_rate=0"]) == {}


# ---------------------------------------------------------------------------------------------
# --check-only over real records of a very short sweep (a few classes, one epoch)

TINY = ["data.reader_kwargs.num_classes=6", "data.reader_kwargs.num_train_per_class=16",
        "data.reader_kwargs.num_val_per_class=2", "data.reader_kwargs.num_test_per_class=4",
        "data.recipe.prompt.max_epochs=2"]


@pytest.mark.slow
def test_check_only_reads_the_records_of_a_short_sweep(tmp_path, capsys):
    logs, cache = tmp_path / "logs", tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    r = subprocess.run([sys.executable, "-m", "noisy_prompt.sweep", "calibration", "--cells", "model=zeroshot,coop",
                        "noise=clean,sym50", "seed=1", "--", *TINY, f"paths.log_dir={logs}", f"paths.cache_dir={cache}",
                        "callbacks.progress.refresh_rate=0"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    root = logs / "calibration"

    code = calibrate.main(["--check-only", str(root), "--seeds", "1", "--records-only", "--", *TINY])
    out = capsys.readouterr().out
    assert code == 1  # ft_ce, T8 and every seed std are not measured here
    written = sorted(root.glob("calibration__*.json"))
    assert len(written) == 1
    rec = json.loads(written[0].read_text())
    res = rec["results"]
    assert res["num_classes"] == 6 and res["zs"] is not None and res["zs_shift"] is not None
    coop50, clean = res["runs"]["coop"]["sym50"]["1"], res["runs"]["coop"]["clean"]["1"]
    assert 0.0 <= coop50["fit_noisy"] <= 1.0 and 0.0 <= coop50["fit_clean"] <= 1.0 and math.isfinite(coop50["loss"])
    assert "fit_noisy" not in clean and 0.0 <= clean["fit_clean"] <= 1.0  # no wrong label: no wrong-label fit
    rows = {(r["target"], r["check"]): r for r in rec["targets"]}
    assert rows[("T9", "CoOp sym50 train loss, worst seed")]["measured"] == round(coop50["loss"], 2)
    assert rows[("T10", "CoOp sym50 wrong labels predicted %")]["measured"] == round(100 * coop50["fit_noisy"], 2)
    assert rows[("T7", "ft_ce clean (full data)")]["measured"] is None and not rows[("T7", "ft_ce clean (full data)")]["ok"]
    assert rows[("T1", "exp(logit_scale)")]["measured"] is not None
    assert rows[("T10", "PTNL sym50 wrong labels predicted %")]["measured"] is None  # no PTNL record here
    assert "T10" in out and "per seed" in out and f"{coop50['acc']:.2f}" in out

    # The same records are not the calibration's without their settings: nothing is read, nothing passes.
    chosen, notes = calibrate.select_runs(root, "synthetic", [], [1])
    assert chosen == {} and any("not the calibration's" in n for n in notes)
    # A record made with other weights than the backbone's current ones is refused, with the reason.
    path = Path(coop50["run_dir"]) / "results.json"
    payload = json.loads(path.read_text())
    payload["weights_digest"] = "0" * 64
    path.write_text(json.dumps(payload))
    chosen, notes = calibrate.select_runs(root, "synthetic", TINY, [1])
    assert ("coop", "sym50", 1) not in chosen and ("coop", "clean", 1) in chosen and "zs_shift" in chosen
    assert any(n.startswith("stale, not read: coop/synthetic/sym50") for n in notes)


@pytest.mark.slow
def test_the_in_process_part_measures_tac_and_the_geometry_on_a_small_split():
    bundle, scale = calibrate.weights_scale({"model": "builtin:synthetic-clip"})
    assert scale > 1
    ip = calibrate.in_process(bundle, "synthetic", {"num_train_per_class": 8, "num_val_per_class": 0,
                                                    "num_test_per_class": 4, "num_classes": 6}, purify_k=3)
    assert 0 <= ip["res"]["tac_min_class"] <= ip["res"]["tac"] <= 100
    assert -1 <= ip["diag"]["median_true_class_cosine"] <= 1 and len(ip["names"]) == 6
    assert 0 <= ip["diag"]["purification_sym40_noisy_label_acc"] <= 100
