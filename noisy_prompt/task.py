"""The task wrapper: one table cell for one seed, start to finish, always cleaning up.

Holds the cell's lock for the whole run (a second process on the same cell waits or stops), skips a
finished cell only when its stored config hash equals this run's (force=true reruns it; another hash
stops with a message instead of returning the old number), resumes an interrupted one from its
last checkpoint (saved at the end of every epoch), writes results.json (rank 0 only, atomically) or
failed.json with the error, and closes loggers in a `finally` so jobs of a multirun never share a
W&B run.
"""
from __future__ import annotations

import logging
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

# The builders live below the task (noisy_prompt.build); task.build_module etc. remain importable names.
from noisy_prompt.build import (_instantiate_group, build_clip, build_datamodule, build_module,  # noqa: F401
                                check_backbone, data_digest_of, label_files_of, max_epochs_of)
from noisy_prompt.cell import (FAILED, RESULTS, CellId, StaleCellError, cell_lock, check_digests, config_diff,
                               finished_result, is_secondary_rank, read_json, write_json)
from noisy_prompt.clip.factory import weights_digest
from noisy_prompt.config import config_hash, result_config
from noisy_prompt.errors import UserError
from noisy_prompt.methods.train_fit import callback_metrics
from noisy_prompt.provenance import git_revision, versions
from noisy_prompt.resume import check_resumable

log = logging.getLogger(__name__)


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


def _failure(cell: CellId, cfg: DictConfig, err: BaseException, t0: float) -> dict[str, Any]:
    return {"status": "failed", "cell": cell.to_record(), "cell_id": cfg.cell, "config_hash": config_hash(cfg),
            "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(),
            "wall_time_s": round(time.time() - t0, 2)}


RUN_CONFIG = "run_config.json"  # the config hash and digests the checkpoints in this dir were made with


def _check_checkpoint_config(cfg: DictConfig, run_dir: Path, cell: CellId, chash: str, rconf: dict, t0: float,
                             digests: dict[str, str | None], label_files: dict[str, str] | None = None) -> None:
    """A checkpoint is resumed only by the configuration, weights and dataset content that wrote it;
    force=true starts afresh."""
    ckpt_dir = run_dir / "checkpoints"
    if is_secondary_rank():  # plain DDP re-runs this command per rank: rank 0 alone manages the dir
        return
    if cfg.get("force", False):
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    elif (ckpt_dir / "last.ckpt").is_file() and (run_dir / RUN_CONFIG).is_file():
        stored = read_json(run_dir / RUN_CONFIG)
        if stored.get("config_hash") != chash:
            diff = config_diff(stored.get("config") or {}, rconf)
            err = StaleCellError(f"{ckpt_dir / 'last.ckpt'} was written by a different configuration (hash "
                                 f"{stored.get('config_hash')}, this run {chash})" + (":\n  " + "\n  ".join(diff) if diff else "")
                                 + "\nRerun with force=true to start this cell afresh, or pick another sweep=NAME.")
            write_json(run_dir / FAILED, _failure(cell, cfg, err, t0))
            raise err
        try:
            check_digests(ckpt_dir / "last.ckpt", stored, digests, "start this cell afresh", label_files)
            check_resumable(ckpt_dir / "last.ckpt")  # refused before anything heavy if it would unpickle objects
        except UserError as err:
            write_json(run_dir / FAILED, _failure(cell, cfg, err, t0))
            raise
    write_json(run_dir / RUN_CONFIG, {"config_hash": chash, "config": rconf, **digests,
                                      **({"label_files": label_files} if label_files else {})})


def run_cell(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    cell = CellId.from_config(cfg)
    with cell_lock(run_dir, float(cfg.get("lock_wait_s", 0) or 0)):
        return _run_locked(cfg, run_dir, cell)


def _run_locked(cfg: DictConfig, run_dir: Path, cell: CellId) -> dict[str, Any]:
    results_path = run_dir / RESULTS
    t0 = time.time()
    chash, rconf = config_hash(cfg), result_config(cfg)
    label_files = label_files_of(cfg)
    digests = {"weights_digest": weights_digest(str(cfg.backbone.model), cfg.backbone.get("pretrained")),
               "data_digest": data_digest_of(cfg, label_files)}
    if not cfg.get("force", False):
        try:
            stored = finished_result(run_dir, chash, rconf, **digests, label_files=label_files)
        except StaleCellError as err:
            write_json(run_dir / FAILED, _failure(cell, cfg, err, t0))
            raise
        if stored is not None:
            log.info("cell already finished, skipping (force=true to rerun): %s", results_path)
            return stored
    (run_dir / FAILED).unlink(missing_ok=True)
    _check_checkpoint_config(cfg, run_dir, cell, chash, rconf, t0, digests, label_files)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    loggers: list = []
    trainer = None
    ok = False
    try:
        from noisy_prompt.preflight import preflight

        preflight(cfg)  # config, dataset and weights, all problems at once, before anything heavy
        max_epochs = max_epochs_of(cfg)
        # Loggers first, so a job that fails while building data or model still has its (closed) W&B run.
        loggers = _instantiate_group(cfg, "logger")
        for lg in loggers:  # the resolved config, so every run is reproducible from its dashboard alone
            lg.log_hyperparams({k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"})
        bundle = build_clip(cfg)
        dm = build_datamodule(cfg, bundle)
        dm.setup("fit")
        module = build_module(cfg, dm, bundle)
        del bundle
        from noisy_prompt.methods.base import PREDICTOR_FILE, REPORT_FILE

        module.report_path = str(run_dir / REPORT_FILE)
        # Rank 0 saves what `python -m noisy_prompt.predict` needs after testing, with the run's facts.
        module.predictor_path = str(run_dir / PREDICTOR_FILE)
        module.predictor_meta = {**digests, "feature_dtype": dm.feature_dtype, "cell": str(cfg.cell),
                                 "run_dir": str(run_dir)}
        callbacks = _instantiate_group(cfg, "callbacks")
        for cb in callbacks:  # checkpoints live in this cell's dir, whatever run_dir the config resolved to
            if type(cb).__name__ in ("ResumeCheckpoint", "ModelCheckpoint"):
                cb.dirpath = str(run_dir / "checkpoints")
        trainer = instantiate(cfg.trainer, default_root_dir=str(run_dir), logger=loggers or False, max_epochs=max_epochs,
                              callbacks=callbacks, enable_checkpointing=any("Checkpoint" in type(c).__name__ for c in callbacks))
        if module.trains:
            last = run_dir / "checkpoints" / "last.ckpt"
            if last.is_file():
                log.info("resuming %s from %s", cfg.cell, last)
            # weights_only=True: tensors and plain containers only (resume.check_resumable vetted the file)
            trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last.is_file() else None, weights_only=True)
        trainer.test(module, datamodule=dm, verbose=False)
        if (run_dir / REPORT_FILE).is_file():  # written by rank 0, also when ranks were spawned processes
            module.load_report(run_dir / REPORT_FILE)
        noise = dm.noise_summary()
        results = {
            "status": "ok",
            "cell": cell.to_record(),
            "cell_id": cfg.cell,
            "metrics": {**collect_metrics(module, dm), **callback_metrics(callbacks)},  # + TrainFit's train_fit/*
            # The C x C transition matrix goes to noise.json only (10^6 numbers for ImageNet).
            "noise": {k: v for k, v in noise.items() if k != "transition"},
            "config_hash": chash,
            "config": rconf,
            **digests,
            **({"label_files": label_files} if label_files else {}),  # the files behind data_digest
            "versions": versions(),
            "git_rev": git_revision(),
            "world_size": trainer.world_size,
            "wall_time_s": round(time.time() - t0, 2),
            "run_dir": str(run_dir),
        }
        results.update(module.extra_results())
        if trainer.is_global_zero:
            from noisy_prompt.reporting.artifacts import save_run_artifacts

            save_run_artifacts(cfg, module, dm, run_dir, loggers, noise=noise)
            OmegaConf.save(cfg, run_dir / "config.yaml", resolve=False)
            write_json(results_path, results)  # last: its presence means the cell is finished
            log.info("%s: test acc %.2f -> %s", cfg.cell, results["metrics"].get("test/acc", float("nan")), results_path)
        ok = True
        return results
    except BaseException as err:
        if trainer is None or trainer.is_global_zero:
            write_json(run_dir / FAILED, _failure(cell, cfg, err, t0))
        raise
    finally:
        finish_loggers(loggers, ok)
