"""The task wrapper: one table cell for one seed, start to finish, always cleaning up.

Skips a finished cell (its results.json exists) unless `force=true`, resumes an interrupted one from
its last checkpoint, writes results.json (rank 0 only) or failed.json with the error, and closes
loggers in a `finally` so jobs of a multirun never share a W&B run.
"""
from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from noisy_prompt.config import cell_keys, config_hash, ctor_kwargs
from noisy_prompt.reporting.results import FAILED, RESULTS, git_revision, read_json, versions, write_json

log = logging.getLogger(__name__)


def _instantiate_group(cfg: DictConfig, group: str, **extra) -> list:
    node = cfg.get(group) or {}
    return [instantiate(c, **extra) for c in node.values() if c is not None and "_target_" in c]


def build_datamodule(cfg: DictConfig):
    noise = instantiate(cfg.noise)
    kwargs = ctor_kwargs(cfg, "data")
    target = kwargs.pop("_target_")
    backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
    # Called directly, not through instantiate: Hydra would turn the NoiseSpec dataclass back into a dict.
    return get_class(target)(**kwargs, noise=noise, backbone=backbone, seed=int(cfg.seed))


def build_module(cfg: DictConfig, dm):
    kwargs = ctor_kwargs(cfg, "model")
    target = kwargs.pop("_target_")
    # The datamodule publishes class descriptions where its dataset has them (None elsewhere).
    descriptions = getattr(dm, "class_descriptions", None)
    return get_class(target)(**kwargs, backbone=OmegaConf.to_container(cfg.backbone, resolve=True),
                             classnames=dm.classnames, templates=dm.templates, test_sets=dm.test_set_names,
                             seed=int(cfg.seed), class_descriptions=descriptions)


def finish_loggers(loggers: list, ok: bool) -> None:
    for lg in loggers:
        try:
            if type(lg).__name__ == "WandbLogger":
                import wandb

                wandb.finish(exit_code=0 if ok else 1)
            else:
                lg.finalize("success" if ok else "failed")
        except Exception:  # cleanup must never mask the job's own outcome
            log.exception("closing logger %s failed", type(lg).__name__)


def collect_metrics(module, dm) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, report in module.test_report.items():
        metrics[f"{name}/acc"] = report["acc"]
        if "acc_top5" in report:
            metrics[f"{name}/acc_top5"] = report["acc_top5"]
    if module.val_history:
        metrics["val/acc_last"] = module.val_history[-1]
        metrics["val/acc_best"] = max(module.val_history)
        if dm.val_from == "test":  # the test set was evaluated every epoch: the best-epoch number papers report
            metrics["test/acc_best"] = max(module.val_history + [metrics["test/acc"]])
    metrics.update(module.extra_metrics())
    return metrics


def run_cell(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    results_path = run_dir / RESULTS
    if results_path.is_file() and not cfg.get("force", False):
        log.info("cell already finished, skipping (force=true to rerun): %s", results_path)
        return read_json(results_path)
    (run_dir / FAILED).unlink(missing_ok=True)
    t0 = time.time()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    loggers: list = []
    trainer = None
    ok = False
    try:
        # Loggers first, so a job that fails while building data or model still has its (closed) W&B run.
        loggers = _instantiate_group(cfg, "logger")
        for lg in loggers:  # the resolved config, so every run is reproducible from its dashboard alone
            lg.log_hyperparams({k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"})
        dm = build_datamodule(cfg)
        dm.setup("fit")
        module = build_module(cfg, dm)
        from noisy_prompt.methods.base import REPORT_FILE

        module.report_path = str(run_dir / REPORT_FILE)
        callbacks = _instantiate_group(cfg, "callbacks")
        trainer = instantiate(cfg.trainer, default_root_dir=str(run_dir), logger=loggers or False,
                              callbacks=callbacks, enable_checkpointing=any("Checkpoint" in type(c).__name__ for c in callbacks))
        if module.trains:
            last = run_dir / "checkpoints" / "last.ckpt"
            trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last.is_file() else None)
        trainer.test(module, datamodule=dm, verbose=False)
        if (run_dir / REPORT_FILE).is_file():  # written by rank 0, also when ranks were spawned processes
            module.load_report(run_dir / REPORT_FILE)
        results = {
            "status": "ok",
            "cell": cell_keys(cfg),
            "cell_id": cfg.cell,
            "metrics": collect_metrics(module, dm),
            "noise": dm.noise_summary(),
            "config_hash": config_hash(cfg),
            "versions": versions(),
            "git_rev": git_revision(),
            "world_size": trainer.world_size,
            "wall_time_s": round(time.time() - t0, 2),
            "run_dir": str(run_dir),
        }
        results.update(module.extra_results())
        if trainer.is_global_zero:
            from noisy_prompt.reporting.artifacts import save_run_artifacts

            save_run_artifacts(cfg, module, dm, run_dir, loggers)
            write_json(results_path, results)
            OmegaConf.save(cfg, run_dir / "config.yaml", resolve=False)
            log.info("%s: test acc %.2f -> %s", cfg.cell, results["metrics"].get("test/acc", float("nan")), results_path)
        ok = True
        return results
    except BaseException as err:
        if trainer is None or trainer.is_global_zero:
            write_json(run_dir / FAILED, {"status": "failed", "cell": cell_keys(cfg), "cell_id": cfg.cell,
                                          "error": f"{type(err).__name__}: {err}",
                                          "traceback": traceback.format_exc(), "wall_time_s": round(time.time() - t0, 2)})
        raise
    finally:
        finish_loggers(loggers, ok)
