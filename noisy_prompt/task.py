"""The task: one table cell for one seed, as a thin sequence of builds inside the cell's session.

`noisy_prompt.session` owns everything around the run (the lock, skipping a finished cell, refusing a
stale one or a checkpoint of another configuration, run_config.json, failed.json, closing the loggers);
`noisy_prompt.build` builds the parts from the composed config. What is left here is the order:
preflight, loggers, CLIP, data, method, callbacks, trainer, fit (resumed from the last checkpoint), test,
then the run's artifacts and results.json (rank 0 only, atomically, last).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Checkpoint
from omegaconf import DictConfig, OmegaConf

# The builders live below the task (noisy_prompt.build); task.build_module etc. remain importable names.
from noisy_prompt.build import (_instantiate_group, build_clip, build_datamodule, build_module,  # noqa: F401
                                check_backbone, data_digest_of, label_files_of, max_epochs_of)
from noisy_prompt.loggers import finish_loggers  # noqa: F401  (importable from here as before)
from noisy_prompt.methods.train_fit import callback_metrics
from noisy_prompt.session import RUN_CONFIG, CellSession, session  # noqa: F401

log = logging.getLogger(__name__)


def collect_metrics(module, dm) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, report in module.test_report.items():
        metrics[f"{name}/acc"] = report["acc"]
        if "acc_top5" in report:
            metrics[f"{name}/acc_top5"] = report["acc_top5"]
    if module.val_history:
        metrics["val/acc_last"] = module.val_history[-1]
        metrics["val/acc_best"] = max(module.val_history)
        if dm.facts().val_is_test:  # the test set was evaluated every epoch: the best-epoch number papers report
            metrics["test/acc_best"] = max(module.val_history + [metrics["test/acc"]])
    metrics.update(module.extra_metrics())
    return metrics


def run_cell(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    with session(cfg, run_dir) as s:
        if s.finished is not None:
            return s.finished
        return _run(cfg, s)


def _run(cfg: DictConfig, s: CellSession) -> dict[str, Any]:
    from noisy_prompt.methods.base import PREDICTOR_FILE, REPORT_FILE
    from noisy_prompt.preflight import preflight
    from noisy_prompt.reporting.artifacts import save_run_artifacts

    run_dir = s.run_dir
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    preflight(cfg)  # config, dataset and weights, all problems at once, before anything heavy
    max_epochs = max_epochs_of(cfg)
    # Loggers first, so a job that fails while building data or model still has its (closed) W&B run.
    s.loggers = _instantiate_group(cfg, "logger")
    for lg in s.loggers:  # the resolved config, so every run is reproducible from its dashboard alone
        lg.log_hyperparams({k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"})
    bundle = build_clip(cfg)
    dm = build_datamodule(cfg, bundle)
    dm.setup("fit")
    module = build_module(cfg, dm, bundle, max_epochs)
    del bundle
    module.report_path = str(run_dir / REPORT_FILE)
    # Rank 0 saves what `python -m noisy_prompt.predict` needs after testing, with the run's facts.
    module.predictor_path = str(run_dir / PREDICTOR_FILE)
    module.predictor_meta = {**s.digests, "feature_dtype": dm.feature_dtype, "cell": str(cfg.cell),
                             "run_dir": str(run_dir)}
    callbacks = _instantiate_group(cfg, "callbacks")
    for cb in callbacks:  # checkpoints live in this cell's dir, whatever run_dir the config resolved to
        if isinstance(cb, Checkpoint) and hasattr(cb, "dirpath"):
            cb.dirpath = str(s.checkpoint_dir)
    s.trainer = trainer = instantiate(
        cfg.trainer, default_root_dir=str(run_dir), logger=s.loggers or False, max_epochs=max_epochs,
        callbacks=callbacks, enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks))
    if module.trains:
        last = s.resume_from
        if last is not None:
            log.info("resuming %s from %s", cfg.cell, last)
        # weights_only=True: tensors and plain containers only (the session vetted the file on entry)
        trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last is not None else None, weights_only=True)
    trainer.test(module, datamodule=dm, verbose=False)
    if (run_dir / REPORT_FILE).is_file():  # written by rank 0, also when ranks were spawned processes
        module.load_report(run_dir / REPORT_FILE)
    noise = dm.noise_summary()
    # + the callbacks' metrics (TrainFit's train_fit/*, train/loss_final)
    results = s.record({**collect_metrics(module, dm), **callback_metrics(callbacks)}, noise, trainer.world_size)
    results.update(module.extra_results())
    if trainer.is_global_zero:
        save_run_artifacts(cfg, module, dm, run_dir, s.loggers, noise=noise)
        s.save(results)  # config.yaml, then results.json, last
    return results
