"""Best-epoch and last-epoch test accuracy for methods whose validation split is the test split.

Where a data config sets `val_from: test` (the full-data TANGO tables; a DP-SEP cell with the
overrides `data.val_from=test model.val_every=1`, as the readings sweeps do), Lightning's validation
loop evaluates the test split every `val_every` epochs. DeFT and TANGO report the best of those
epochs, DP-SEP the last, and the paper does not always say which, so both go into results.json
(docs/methods.md, DP-SEP readings, docs/methods.md, TANGO training step). Validation never draws from a random generator that
training uses, so evaluating the test split every epoch leaves the trained weights unchanged.

The curve is a plain list in `REPORT_ATTRS`, so it reaches results.json also when the ranks ran in
spawned processes, and it is saved in checkpoints so a resumed run keeps the epochs before the cut.
"""
from __future__ import annotations

from noisy_prompt.methods.base import ClassifierModule


def best_and_last(curve: list[list[float]], last_acc: float | None, last_epoch: int) -> dict[str, float]:
    """{test/acc_best, test/acc_best_epoch, test/acc_last, test/acc_last_epoch} from per-epoch test accuracies.

    `curve` holds [epoch (1-based), acc %] pairs; `last_acc` is the final test evaluation after the
    last trained epoch `last_epoch` (it replaces that epoch's point, and with val_every > 1 it adds the
    last epoch to the curve). Ties go to the earliest epoch. Empty when there is nothing.
    """
    points = {int(e): float(a) for e, a in curve}
    if last_acc is not None:
        points[int(last_epoch)] = float(last_acc)
    if not points:
        return {}
    best_epoch = min(points, key=lambda e: (-points[e], e))
    last_epoch = max(points)
    return {"test/acc_best": points[best_epoch], "test/acc_best_epoch": float(best_epoch),
            "test/acc_last": points[last_epoch], "test/acc_last_epoch": float(last_epoch)}


class EpochCurveModule(ClassifierModule):
    """A ClassifierModule that records the test accuracy of every validated epoch when validation is the test split."""

    REPORT_ATTRS = (*ClassifierModule.REPORT_ATTRS, "test_curve", "epochs_trained")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.test_curve: list[list[float]] = []  # [epoch counted from 1, test acc %]
        self.epochs_trained = 0

    def validation_is_test(self) -> bool:
        # A fact the data publishes (data.val_from=test), never a dataset name.
        return self.facts.val_is_test

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.trainer.sanity_checking or not self.validation_is_test() or not self.val_history:
            return
        epoch = self.current_epoch + 1
        self.test_curve = [p for p in self.test_curve if p[0] != epoch] + [[epoch, float(self.val_history[-1])]]

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self.epochs_trained = self.current_epoch + 1

    def extra_metrics(self) -> dict[str, float]:
        out = dict(super().extra_metrics())
        if self.test_curve:
            out.update(best_and_last(self.test_curve, self.test_report.get("test", {}).get("acc"), self.epochs_trained))
        return out

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["epoch_curve"] = {"test_curve": [list(p) for p in self.test_curve],
                                     "epochs_trained": self.epochs_trained}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("epoch_curve")
        if state:
            self.test_curve = [list(p) for p in state["test_curve"]]
            self.epochs_trained = int(state["epochs_trained"])
