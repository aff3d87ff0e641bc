"""How a trained classifier predicts its own training images: the `TrainFit` callback.

Whether a method takes in its wrong labels (memorises them) or predicts the true class through them is
what the built-in world's calibration checks against real CLIP (targets T9 and T10 of
docs/synthetic-world.md: real CoOp at 50% noise predicts ~15-25% of its wrong training labels and ends
with a train loss well below ln C). At the end of training the callback runs the final classifier once
over the training set (no augmentation, eval mode: `selection.training_set_pass`) and hands the task
these numbers for results.json["metrics"] (fractions in [0, 1]):

  train_fit/noisy          wrongly labelled training images predicted as their given (wrong) label
  train_fit/true_of_noisy  wrongly labelled training images predicted as their true class
  train_fit/clean          correctly labelled training images predicted as their label
  train/loss_final         the method's logged `train/loss`, mean over the last training epoch (with
                           augmentation, as logged: CE for CoOp, GCE for PTNL)

The fit is recorded only where the true labels are known (a synthetic noise protocol, or a dataset that
publishes clean labels); the two `noisy` entries only where some label is wrong (never a 0 for "no wrong
label"). Enabled by conf/callbacks/default.yaml for models whose input is listed in `inputs` (default:
cached features, i.e. prompt tuning, where the pass costs nothing); `callbacks.train_fit.inputs=[features,images]`
adds fine-tuning methods at the price of one more pass over the training images.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from noisy_prompt.data.facts import DataSource
from noisy_prompt.methods import selection

PREFIX = "train_fit/"
LOSS_FINAL = "train/loss_final"


def fit_fractions(pred: Tensor, given: Tensor, true: Tensor) -> dict[str, float]:
    """The `train_fit/*` metrics of predictions `pred` on training items with given and true labels.

    A share over an empty group (no wrong label, or no right one) is left out rather than written as 0."""
    pred, given, true = (torch.as_tensor(t).long().cpu().reshape(-1) for t in (pred, given, true))
    if not (pred.numel() == given.numel() == true.numel()):
        raise ValueError(f"pred, given and true must have one entry per item; got {pred.numel()}, {given.numel()}, "
                         f"{true.numel()}")
    wrong = given != true
    out: dict[str, float] = {}
    if bool(wrong.any()):
        out[f"{PREFIX}noisy"] = float((pred[wrong] == given[wrong]).float().mean())
        out[f"{PREFIX}true_of_noisy"] = float((pred[wrong] == true[wrong]).float().mean())
    if bool((~wrong).any()):
        out[f"{PREFIX}clean"] = float((pred[~wrong] == given[~wrong]).float().mean())
    return out


def callback_metrics(callbacks: Iterable[Any]) -> dict[str, float]:
    """The results.json metrics the run's callbacks recorded (the task merges them into its metrics)."""
    out: dict[str, float] = {}
    for cb in callbacks:
        if isinstance(cb, TrainFit):
            out.update(cb.metrics)
    return out


class TrainFit(Callback):
    """Records `train_fit/*` and `train/loss_final` at the end of training (module docstring).

    The last epoch's loss is part of the callback's checkpoint state, so a run resumed after its last
    epoch (killed while testing) records the same numbers as an uninterrupted one. The numbers stay on
    the callback object (`metrics`) in the process that trained: with `trainer=ddp_spawn` training runs in
    spawned workers and nothing is recorded (the calibration then reports the targets as not measured).
    """

    def __init__(self, inputs: Sequence[str] = ("features",), loss_key: str = "train/loss"):
        self.inputs = tuple(str(i) for i in inputs)
        self.loss_key = str(loss_key)
        self.last_loss: float | None = None
        self.metrics: dict[str, float] = {}
        self._recorded = False

    @property
    def state_key(self) -> str:
        return "TrainFit"

    def applies_to(self, pl_module: Any) -> bool:
        # A method publishes what it reads (`input`) and whether it trains (`trains`, ClassifierModule).
        return getattr(pl_module, "input", None) in self.inputs and bool(getattr(pl_module, "trains", True))

    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        if stage == "fit":
            self.metrics, self._recorded = {}, False

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        value = trainer.callback_metrics.get(self.loss_key)
        if value is not None:
            self.last_loss = float(value)

    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._record(trainer, pl_module)

    def on_fit_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        # A run resumed from a checkpoint written after its last epoch trains nothing, and Lightning then
        # skips on_train_end: the final weights and the checkpointed loss give the same numbers here.
        if not self._recorded:
            self._record(trainer, pl_module)

    def _record(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._recorded = True
        if not self.applies_to(pl_module):
            return
        out: dict[str, float] = {}
        if self.last_loss is not None and math.isfinite(self.last_loss):
            out[LOSS_FINAL] = self.last_loss
        dm = trainer.datamodule  # what the data declares (DataFacts), through the one protocol methods use
        if isinstance(dm, DataSource) and dm.facts().clean_labels_known:
            preds, given, true, _ = selection.training_set_pass(
                pl_module, lambda x: {"pred": pl_module.logits(x).argmax(dim=-1)}, dm, desc="train fit: training set")
            out.update(fit_fractions(preds["pred"], given, true))
        self.metrics = out

    def state_dict(self) -> dict[str, Any]:
        # Plain numbers only: checkpoints are read with torch.load(weights_only=True).
        return {} if self.last_loss is None else {"last_loss": float(self.last_loss)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        value = state_dict.get("last_loss")
        self.last_loss = None if value is None else float(value)
