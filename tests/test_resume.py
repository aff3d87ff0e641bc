"""An interrupted cell resumes from its last checkpoint instead of starting over."""
from pathlib import Path

from hydra import compose, initialize_config_dir

import noisy_prompt.config  # noqa: F401
from noisy_prompt.task import run_cell

CONF = Path(__file__).resolve().parent.parent / "conf"


def _cfg(tiny_backbone, tmp_path, epochs):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="run", overrides=[
            "model=coop", "model.n_ctx=4", "noise=sym50", f"backbone.model={tiny_backbone['model']}", "logger=none",
            "figures=false", f"paths.log_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}",
            "data.reader_kwargs.num_train_per_class=6", "data.reader_kwargs.num_val_per_class=2",
            "data.reader_kwargs.num_test_per_class=2", "data.shots=4", f"data.recipe.prompt.max_epochs={epochs}",
            "callbacks.progress.refresh_rate=0"])


def test_interrupted_cell_resumes_from_last_checkpoint(tiny_backbone, tmp_path):
    cfg = _cfg(tiny_backbone, tmp_path, 2)
    run_dir = Path(cfg.run_dir)
    first = run_cell(cfg, run_dir)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    # a finished cell is skipped: same results, nothing retrained
    assert run_cell(cfg, run_dir)["wall_time_s"] == first["wall_time_s"]
    # simulate a crash after epoch 2 of a 3-epoch run: no results.json, a checkpoint from epoch 2
    (run_dir / "results.json").unlink()
    resumed = run_cell(_cfg(tiny_backbone, tmp_path, 3), run_dir)
    assert resumed["status"] == "ok"
    # only the third epoch ran in this process: the run continued instead of starting from epoch 1
    import json

    report = json.loads((run_dir / "module_report.json").read_text())
    assert len(report["history"]["train/loss"]) == 1
