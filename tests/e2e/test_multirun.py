"""Multirun behaviour users depend on: distinct dirs per job, one W&B run per job, a failing job leaves
a marker and the others go on, finished cells are skipped, nothing is written into the cwd."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SMALL = ["data.reader_kwargs.num_train_per_class=6", "data.reader_kwargs.num_val_per_class=2",
         "data.reader_kwargs.num_test_per_class=2", "data.shots=4", "data.recipe.prompt.max_epochs=1",
         "callbacks=none", "figures=false"]


def _run(args, env_extra, cwd):
    env = {**os.environ, **env_extra, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "noisy_prompt.run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_wandb_offline_two_jobs_two_runs_and_failure_marker(tiny_backbone, tmp_path):
    logs, cwd = tmp_path / "logs", tmp_path / "cwd"
    cwd.mkdir()
    env = {"NOISY_PROMPT_LOGS": str(logs), "NOISY_PROMPT_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline",
           "WANDB_DIR": str(tmp_path / "wandb"), "WANDB_SILENT": "true"}
    # n_ctx=40 cannot fit the tiny CLIP's 32-token context: that job must fail, the other must finish.
    args = ["-m", "model=coop", "model.n_ctx=4,40", "noise=sym50", f"backbone.model={tiny_backbone['model']}",
            "logger=wandb", "sweep=mr", "cell=coop_ctx${model.n_ctx}", *SMALL]
    proc = _run(args, env, cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the swept model.n_ctx (and the SMALL overrides) are settings: each job's dir carries their tag
    (ok_dir,) = (logs / "mr" / "coop_ctx4").glob("seed1__*")
    (bad_dir,) = (logs / "mr" / "coop_ctx40").glob("seed1__*")
    results = json.loads((ok_dir / "results.json").read_text())
    assert results["status"] == "ok" and 0 <= results["metrics"]["test/acc"] <= 100
    failed = json.loads((bad_dir / "failed.json").read_text())
    assert "context length" in failed["error"] and not (bad_dir / "results.json").exists()
    runs = [sorted((d / "wandb").glob("offline-run-*")) for d in (ok_dir, bad_dir)]
    assert all(len(r) == 1 for r in runs), runs
    assert runs[0][0].name.split("-")[-1] != runs[1][0].name.split("-")[-1]
    assert list(cwd.iterdir()) == []  # nothing written into the cwd

    # rerun: the finished cell is skipped, the failed one is retried (and fails again)
    proc = _run(args + ["logger=none"], env, cwd)
    assert "already finished, skipping" in proc.stderr + proc.stdout
    assert (bad_dir / "failed.json").exists()


@pytest.mark.slow
def test_single_run_from_another_cwd_writes_results_and_figures(tiny_backbone, tmp_path):
    logs, cwd = tmp_path / "logs", tmp_path / "elsewhere"
    cwd.mkdir()
    env = {"NOISY_PROMPT_LOGS": str(logs), "NOISY_PROMPT_CACHE": str(tmp_path / "cache")}
    proc = _run(["model=dpsep", "noise=sym50", f"backbone.model={tiny_backbone['model']}", "logger=csv",
                 *[a for a in SMALL if not a.startswith(("figures", "callbacks"))]], env, cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (logs / "adhoc" / "dpsep" / "synthetic" / "sym50" / "synthetic").glob("seed1__*")
    res = json.loads((run_dir / "results.json").read_text())
    settings = res["cell"].pop("settings")
    assert settings.pop("backbone.model") == tiny_backbone["model"]  # another CLIP under the same name: a setting
    assert res["cell"] == {"model": "dpsep", "data": "synthetic", "noise": "sym50", "backbone": "synthetic",
                           "seed": 1, "train_data": "synthetic", "sweep": "adhoc"}
    assert settings == {"data.reader_kwargs.num_train_per_class": "6", "data.reader_kwargs.num_val_per_class": "2",
                        "data.reader_kwargs.num_test_per_class": "2", "data.shots": "4",
                        "data.recipe.prompt.max_epochs": "1"}
    assert res["noise"]["realised_rate"] == pytest.approx(0.5)
    assert {"test/acc", "test/acc_top5"} <= set(res["metrics"])
    for key in ("config_hash", "versions", "git_rev", "wall_time_s", "world_size"):
        assert key in res
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    for fig in ("confusion_test.png", "per_class_test.png", "noise_transition.png", "curves.png"):
        assert (run_dir / "figures" / fig).stat().st_size > 0, fig
    assert list(cwd.iterdir()) == []
