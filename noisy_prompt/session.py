"""`with session(cfg, run_dir) as s:` — everything around one cell's run that is not training.

On entry it takes the cell's lock (a second process on the same cell waits `lock_wait_s` or stops), then
decides what this run may do in the dir:

- a finished cell (results.json) whose stored config hash and digests equal this run's: `s.finished`
  holds that record and the caller returns it (force=true reruns instead);
- a finished cell of another hash, other weights or other dataset content: failed.json, StaleCellError;
- a checkpoint (`checkpoints/last.ckpt`) is resumed only by the configuration, weights and dataset
  content that wrote it (run_config.json records them; force=true deletes the checkpoints), and only if
  it loads with weights_only; otherwise failed.json and a StaleCellError / UnsafeFileError.

Inside the block, an exception leaves failed.json with the error (rank 0, once the trainer exists),
and on every exit the loggers handed to `s.loggers` are closed (failed or success). `s.save(results)`
writes config.yaml and then results.json, last: its presence means the cell is finished.
"""
from __future__ import annotations

import logging
import shutil
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from noisy_prompt.build import data_digest_of, label_files_of
from noisy_prompt.cell import (FAILED, RESULTS, CellId, StaleCellError, cell_lock, check_digests, config_diff,
                               finished_result, is_secondary_rank, read_json, write_json)
from noisy_prompt.clip.factory import weights_digest
from noisy_prompt.config import config_hash, result_config
from noisy_prompt.errors import UserError
from noisy_prompt.loggers import finish_loggers
from noisy_prompt.provenance import git_revision, versions
from noisy_prompt.resume import check_resumable

log = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"  # the config hash and digests the checkpoints in this dir were made with


@dataclass
class CellSession:
    """One run of one cell in its dir: its identity, hash and digests, and what it found there."""

    cfg: DictConfig
    run_dir: Path
    cell: CellId
    t0: float = field(default_factory=time.time)
    finished: dict[str, Any] | None = None  # the stored record when this very run already finished
    loggers: list = field(default_factory=list)  # closed when the session ends
    trainer: Any = None  # once set, only its global rank 0 writes failed.json

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.config_hash, self.config = config_hash(cfg), result_config(cfg)
        self.label_files = label_files_of(cfg)
        self.digests = {"weights_digest": weights_digest(str(cfg.backbone.model), cfg.backbone.get("pretrained")),
                        "data_digest": data_digest_of(cfg, self.label_files)}

    # ---- paths -------------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def resume_from(self) -> Path | None:
        """The checkpoint to continue from (vetted on entry), else None."""
        last = self.checkpoint_dir / "last.ckpt"
        return last if last.is_file() else None

    # ---- records -----------------------------------------------------------------------------------
    def _label_files(self) -> dict[str, Any]:
        return {"label_files": self.label_files} if self.label_files else {}

    def failure(self, err: BaseException) -> dict[str, Any]:
        return {"status": "failed", "cell": self.cell.to_record(), "cell_id": self.cfg.cell,
                "config_hash": self.config_hash, "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(), "wall_time_s": round(time.time() - self.t0, 2)}

    def fail(self, err: BaseException) -> None:
        write_json(self.run_dir / FAILED, self.failure(err))

    def record(self, metrics: dict[str, float], noise: dict[str, Any], world_size: int) -> dict[str, Any]:
        """results.json's content: identity, metrics, noise summary, hash, digests and provenance."""
        return {
            "status": "ok",
            "cell": self.cell.to_record(),
            "cell_id": self.cfg.cell,
            "metrics": metrics,
            # The C x C transition matrix goes to noise.json only (10^6 numbers for ImageNet).
            "noise": {k: v for k, v in noise.items() if k != "transition"},
            "config_hash": self.config_hash,
            "config": self.config,
            **self.digests,
            **self._label_files(),  # the files behind data_digest
            "versions": versions(),
            "git_rev": git_revision(),
            "world_size": world_size,
            "wall_time_s": round(time.time() - self.t0, 2),
            "run_dir": str(self.run_dir),
        }

    def save(self, results: dict[str, Any]) -> None:
        """config.yaml, then results.json (rank 0 calls it): the latter's presence means finished."""
        OmegaConf.save(self.cfg, self.run_dir / "config.yaml", resolve=False)
        write_json(self.run_dir / RESULTS, results)
        log.info("%s: test acc %.2f -> %s", self.cfg.cell, results["metrics"].get("test/acc", float("nan")),
                 self.run_dir / RESULTS)

    # ---- the checks on entry -----------------------------------------------------------------------
    def _check_finished(self) -> None:
        if self.cfg.get("force", False):
            return
        try:
            self.finished = finished_result(self.run_dir, self.config_hash, self.config, **self.digests,
                                            label_files=self.label_files)
        except StaleCellError as err:
            self.fail(err)
            raise
        if self.finished is not None:
            log.info("cell already finished, skipping (force=true to rerun): %s", self.run_dir / RESULTS)

    def _check_checkpoint(self) -> None:
        """A checkpoint is resumed only by the configuration, weights and dataset content that wrote it;
        force=true starts afresh."""
        if is_secondary_rank():  # plain DDP re-runs this command per rank: rank 0 alone manages the dir
            return
        ckpt_dir, chash, rconf = self.checkpoint_dir, self.config_hash, self.config
        if self.cfg.get("force", False):
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        elif (ckpt_dir / "last.ckpt").is_file() and (self.run_dir / RUN_CONFIG).is_file():
            stored = read_json(self.run_dir / RUN_CONFIG)
            if stored.get("config_hash") != chash:
                diff = config_diff(stored.get("config") or {}, rconf)
                err = StaleCellError(f"{ckpt_dir / 'last.ckpt'} was written by a different configuration (hash "
                                     f"{stored.get('config_hash')}, this run {chash})" + (":\n  " + "\n  ".join(diff) if diff else "")
                                     + "\nRerun with force=true to start this cell afresh, or pick another sweep=NAME.")
                self.fail(err)
                raise err
            try:
                check_digests(ckpt_dir / "last.ckpt", stored, self.digests, "start this cell afresh", self.label_files)
                check_resumable(ckpt_dir / "last.ckpt")  # refused before anything heavy if it would unpickle objects
            except UserError as err:
                self.fail(err)
                raise
        write_json(self.run_dir / RUN_CONFIG, {"config_hash": chash, "config": rconf, **self.digests,
                                               **self._label_files()})


@contextmanager
def session(cfg: DictConfig, run_dir: str | Path) -> Iterator[CellSession]:
    """The cell's lock, the skip / stale / digest / checkpoint checks, failed.json and the loggers' closing
    around one run (see the module docstring). When `s.finished` is set, the caller returns it."""
    run_dir = Path(run_dir)
    cell = CellId.from_config(cfg)
    with cell_lock(run_dir, float(cfg.get("lock_wait_s", 0) or 0)):
        s = CellSession(cfg, run_dir, cell)
        s._check_finished()
        if s.finished is not None:
            yield s
            return
        (run_dir / FAILED).unlink(missing_ok=True)
        s._check_checkpoint()
        ok = False
        try:
            yield s
            ok = True
        except BaseException as err:
            if s.trainer is None or s.trainer.is_global_zero:
                s.fail(err)
            raise
        finally:
            finish_loggers(s.loggers, ok)
