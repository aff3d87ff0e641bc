"""Resume: a run killed mid-training continues from its last completed epoch and ends exactly as an
uninterrupted run (CPU); a finished cell is skipped; a checkpoint of another config is not resumed."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import noisy_prompt.config  # noqa: F401
from noisy_prompt.cell import StaleCellError
from noisy_prompt.clip.factory import weights_digest
from noisy_prompt.data.readers import data_digest
from noisy_prompt.task import run_cell

CONF = Path(__file__).resolve().parent.parent / "conf"
TESTS = Path(__file__).resolve().parent


def _cfg(tiny_backbone, tmp_path, epochs):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="run", overrides=[
            "model=coop", "model.n_ctx=4", "noise=sym50", f"backbone.model={tiny_backbone['model']}", "logger=none",
            "figures=false", f"paths.log_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}",
            "data.reader_kwargs.num_train_per_class=6", "data.reader_kwargs.num_val_per_class=2",
            "data.reader_kwargs.num_test_per_class=2", "data.shots=4", f"data.recipe.prompt.max_epochs={epochs}",
            "callbacks.progress.refresh_rate=0"])


def test_finished_cell_is_skipped_and_another_configs_checkpoint_is_not_resumed(tiny_backbone, tmp_path):
    cfg = _cfg(tiny_backbone, tmp_path, 2)
    run_dir = Path(cfg.run_dir)
    first = run_cell(cfg, run_dir)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    # a finished cell is skipped: same results, nothing retrained
    assert run_cell(cfg, run_dir)["wall_time_s"] == first["wall_time_s"]
    # the record names the weights' contents; a record made with other weights under the same name is refused
    assert first["weights_digest"] == weights_digest(tiny_backbone["model"], None)
    stored = json.loads((run_dir / "results.json").read_text())
    (run_dir / "results.json").write_text(json.dumps({**stored, "weights_digest": "0" * 16}))
    with pytest.raises(StaleCellError, match="other backbone weights"):
        run_cell(cfg, run_dir)
    # ... and so is one made from other dataset content under the same name (an edited world)
    assert first["data_digest"] == data_digest("synthetic")
    (run_dir / "results.json").write_text(json.dumps({**stored, "data_digest": "0" * 16}))
    with pytest.raises(StaleCellError, match="other dataset content"):
        run_cell(cfg, run_dir)
    (run_dir / "results.json").write_text(json.dumps(stored))
    # the C x C transition matrix is in noise.json only
    assert "transition" not in first["noise"]
    transition = json.loads((run_dir / "noise.json").read_text())["transition"]
    assert len(transition) == len(transition[0]) > 1
    # a crash (no results.json) and a rerun with another epoch count in the same dir (an edited preset):
    # the 2-epoch checkpoint is not silently continued as if it were the 3-epoch run's
    (run_dir / "results.json").unlink()
    # a checkpoint left by a crash is resumed only with the weights and dataset content that wrote it
    run_config = json.loads((run_dir / "run_config.json").read_text())
    assert run_config["data_digest"] == data_digest("synthetic") and run_config["weights_digest"] == first["weights_digest"]
    (run_dir / "run_config.json").write_text(json.dumps({**run_config, "data_digest": "0" * 16}))
    with pytest.raises(StaleCellError, match="last.ckpt was made with other dataset content"):
        run_cell(cfg, run_dir)
    (run_dir / "run_config.json").write_text(json.dumps(run_config))
    with pytest.raises(StaleCellError, match="max_epochs: 2 -> 3"):
        run_cell(_cfg(tiny_backbone, tmp_path, 3), run_dir)
    # force=true starts afresh: all 3 epochs run in this process
    cfg3 = _cfg(tiny_backbone, tmp_path, 3)
    cfg3.force = True
    assert run_cell(cfg3, run_dir)["status"] == "ok"
    report = json.loads((run_dir / "module_report.json").read_text())
    assert len(report["history"]["train/loss"]) == 3


def _run(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "noisy_prompt.run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_sigkill_mid_training_resumes_from_last_epoch_and_ends_equal(tiny_backbone, tmp_path):
    # DP-SEP: derangement, fresh SEP noise and the per-epoch views all have to continue identically.
    # Validation only at the last epoch: the checkpoint must not wait for it.
    args = ["model=dpsep", "model.n_ctx=2", "noise=sym50", f"backbone.model={tiny_backbone['model']}", "logger=none",
            "figures=false", "data.reader_kwargs.num_train_per_class=6", "data.reader_kwargs.num_val_per_class=1",
            "data.reader_kwargs.num_test_per_class=2", "data.shots=4", "data.recipe.prompt.max_epochs=4",
            "data.recipe.prompt.val_every=4", "+callbacks.killer._target_=_kill_at_epoch.KillAtEpoch",
            "callbacks.progress.refresh_rate=0"]
    base = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
            "NOISY_PROMPT_CACHE": str(tmp_path / "cache")}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    ref = _run(args, {**base, "NOISY_PROMPT_LOGS": str(tmp_path / "ref")}, cwd)
    assert ref.returncode == 0, ref.stderr[-3000:]

    env = {**base, "NOISY_PROMPT_LOGS": str(tmp_path / "killed")}
    killed = _run(args, {**env, "NP_TEST_KILL_AT_EPOCH": "3"}, cwd)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (run_dir,) = [p.parent.parent for p in (tmp_path / "killed").rglob("last.ckpt")]
    assert not (run_dir / "results.json").exists()
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2  # epochs 0, 1, 2 completed, with no validation among them

    resumed = _run(args, env, cwd)  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint" in resumed.stderr
    # saved and loaded with weights_only said explicitly: no Lightning notice about it, on screen or in the log
    for proc in (ref, killed, resumed):
        assert "weights_only" not in proc.stderr + proc.stdout
    assert "weights_only" not in (run_dir / "run.log").read_text()
    report = json.loads((run_dir / "module_report.json").read_text())
    assert len(report["history"]["train/loss"]) == 1  # only epoch 3 ran in the resumed process

    (ref_dir,) = [p.parent.parent for p in (tmp_path / "ref").rglob("last.ckpt")]
    a = torch.load(ref_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((d / "results.json").read_text())["metrics"] for d in (ref_dir, run_dir))
    assert ra["test/acc"] == rb["test/acc"] and ra["val/acc_last"] == rb["val/acc_last"]
