"""`last.ckpt` at the end of every training epoch, with the random-number state, so a resumed run
continues exactly as an uninterrupted one.

Lightning's ModelCheckpoint saves `last.ckpt` only together with a top-k or validation-time save (with
save_top_k=0 and validation every 5 epochs, a run killed at epoch 17 restarted from epoch 15 or from
scratch); `ResumeCheckpoint` saves it after every training epoch, whatever the validation cadence, and
atomically (written beside, then renamed). It is a `Checkpoint`, so Lightning runs it after the
module's own on_train_epoch_end (DP-SEP's derangement has advanced by then). Lightning's checkpoint holds the trainable state, optimiser, scheduler and loop counters, and the
methods add their own generators (DP-SEP's derangement, TANGO's mixup); the global torch / NumPy /
Python generators (e.g. augmentation drawn in the main process, losses that draw fresh noise from the
global stream) are not saved by Lightning. This callback stores them with each checkpoint and puts
them back when a run resumes from one. The training order is a function of (seed, epoch) already
(`EpochShuffleSampler`), so nothing else depends on how many epochs ran in this process.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint
import numpy as np
import torch


def check_resumable(path: str | Path) -> None:
    """Raise `UnsafeFileError` when `path` cannot be read with torch.load(weights_only=True).

    The project's checkpoints hold tensors, numbers, strings and containers only, so a file that needs
    more was not written by it (e.g. dropped into the run dir) and unpickling it could run code. Checked
    with mmap (the tensors are not read) before the run builds anything; Lightning then loads it with
    weights_only=True as well."""
    import zipfile

    from noisy_prompt.errors import safe_torch_load

    safe_torch_load(path, what="checkpoint", mmap=zipfile.is_zipfile(path),
                    remedy=f"Delete {path} (or rerun with force=true) to start this cell afresh; the run dir's "
                           "other files are kept.")


class ResumeCheckpoint(Checkpoint):
    """Writes `<dirpath>/last.ckpt` after every training epoch; its state is the global RNG state."""

    def __init__(self, dirpath: str | Path | None = None, filename: str = "last.ckpt"):
        self.dirpath = None if dirpath is None else str(dirpath)
        self.filename = filename

    @property
    def state_key(self) -> str:
        return "ResumeCheckpoint"

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if trainer.sanity_checking or getattr(trainer, "fast_dev_run", False):
            return
        folder = Path(self.dirpath or Path(trainer.default_root_dir) / "checkpoints")
        final = folder / self.filename
        tmp = folder / f".{self.filename}.tmp"
        # weights_only=False: the full training state (optimiser, loops, callbacks), said explicitly, which
        # also keeps Lightning's "weights_only was not set" notice out of the run's log.
        trainer.save_checkpoint(str(tmp), weights_only=False)  # collective: every rank calls it, rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, final)  # never a half-written last.ckpt
        trainer.strategy.barrier("ResumeCheckpoint")

    def state_dict(self) -> dict[str, Any]:
        # Plain tensors, lists and numbers only: checkpoints are read with torch.load(weights_only=True).
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "torch" in state_dict:
            torch.set_rng_state(torch.as_tensor(state_dict["torch"], dtype=torch.uint8))
        if "numpy" in state_dict:
            n = state_dict["numpy"]
            np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        if "python" in state_dict:
            py = state_dict["python"]
            random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
        if "cuda" in state_dict and torch.cuda.is_available() and len(state_dict["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
