"""The TrainFit callback (noisy_prompt/methods/train_fit.py): how a trained classifier predicts its own
training labels, recorded for results.json (train_fit/*, train/loss_final), on a tiny Lightning run."""
from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from noisy_prompt.data.facts import DataFacts
from noisy_prompt.methods.train_fit import LOSS_FINAL, TrainFit, callback_metrics, fit_fractions


def test_fit_fractions_count_memorised_recovered_and_clean_labels():
    pred, true, given = [0, 1, 2, 3, 2, 1], [0, 1, 2, 3, 0, 1], [0, 1, 3, 0, 2, 1]
    fit = fit_fractions(torch.tensor(pred), torch.tensor(given), torch.tensor(true))
    # items 2, 3, 4 are mislabelled: 4 is predicted as its wrong label, 2 and 3 as their true class
    assert fit == pytest.approx({"train_fit/noisy": 1 / 3, "train_fit/true_of_noisy": 2 / 3, "train_fit/clean": 1.0})
    # no wrong label: the wrong-label shares are undefined, left out (never a 0)
    assert fit_fractions(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0, 1])) == {"train_fit/clean": 1.0}
    assert set(fit_fractions(torch.tensor([1]), torch.tensor([1]), torch.tensor([0]))) == {"train_fit/noisy",
                                                                                           "train_fit/true_of_noisy"}
    with pytest.raises(ValueError, match="one entry per item"):
        fit_fractions(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([0]))


class _Items(Dataset):
    def __init__(self, x, given, true):
        self.x, self.given, self.true = x, given, true

    def __len__(self):
        return len(self.given)

    def __getitem__(self, i):
        return {"x": self.x[i], "label": self.given[i], "clean_label": self.true[i], "index": i}


class _DM(L.LightningDataModule):
    """The DataSource protocol (noisy_prompt.data.facts) over three tensors."""

    def __init__(self, x, given, true, known=True):
        super().__init__()
        self.items = _Items(x, given, true)
        self._facts = DataFacts(clean_labels_known=known)

    def facts(self):
        return self._facts

    def set_epoch(self, epoch):
        pass

    def test_dataloader(self):
        return self.train_eval_dataloader()

    def train_paths(self):
        return None

    def num_train(self):
        return len(self.items)

    def train_dataloader(self):
        return DataLoader(self.items, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))

    def train_eval_dataloader(self):
        return DataLoader(self.items, batch_size=64)


class _Tiny(L.LightningModule):
    """A linear classifier over fixed features: `input` and `trains` as ClassifierModule publishes them."""

    trains = True

    def __init__(self, d, C, input="features"):
        super().__init__()
        self.lin = nn.Linear(d, C)
        self.input = input

    def logits(self, x):
        return self.lin(x)

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self.logits(batch["x"]), batch["label"])
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["label"]))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _data(noisy: bool, C=4, per=16, d=32):
    gen = torch.Generator().manual_seed(0)
    true = torch.arange(C).repeat_interleave(per)
    x = torch.randn(C, d, generator=gen)[true] + 0.8 * torch.randn(len(true), d, generator=gen)  # per-item variation
    given = true.clone()
    if noisy:
        flip = torch.arange(len(true)) % 2 == 0
        given[flip] = (true[flip] + 1) % C
    return x, given, true


def _fit(module, dm, cb, epochs=3, **kw):
    extra = kw.pop("extra", [])
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=bool(extra),
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[cb, *extra])
    trainer.fit(module, datamodule=dm, **kw)
    return trainer


@pytest.mark.parametrize("noisy", [True, False])
def test_train_fit_records_fractions_and_the_last_epoch_loss(noisy):
    torch.manual_seed(0)
    x, given, true = _data(noisy)
    module, cb = _Tiny(x.shape[1], 4), TrainFit()
    trainer = _fit(module, _DM(x, given, true), cb)
    m = cb.metrics
    assert m[LOSS_FINAL] == pytest.approx(float(trainer.callback_metrics["train/loss"]))
    with torch.no_grad():
        pred = module.logits(x).argmax(1)
    wrong = given != true
    if noisy:  # half the labels wrong: both shares defined and equal to an independent count
        assert set(m) == {LOSS_FINAL, "train_fit/noisy", "train_fit/true_of_noisy", "train_fit/clean"}
        assert m["train_fit/noisy"] == pytest.approx(float((pred[wrong] == given[wrong]).float().mean()))
        assert m["train_fit/true_of_noisy"] == pytest.approx(float((pred[wrong] == true[wrong]).float().mean()))
    else:  # no wrong label: the wrong-label shares are not defined, so not recorded
        assert set(m) == {LOSS_FINAL, "train_fit/clean"}
    assert m["train_fit/clean"] == pytest.approx(float((pred[~wrong] == given[~wrong]).float().mean()))
    assert all(0.0 <= v <= 1.0 for k, v in m.items() if k.startswith("train_fit/"))
    assert callback_metrics([object(), cb]) == m


def test_train_fit_only_where_its_numbers_mean_something():
    x, given, true = _data(True)
    # true labels unknown (real noise without annotations): the loss only
    cb = TrainFit()
    _fit(_Tiny(x.shape[1], 4), _DM(x, given, true, known=False), cb, epochs=1)
    assert set(cb.metrics) == {LOSS_FINAL}
    # a model whose input is not listed (fine-tuning on images, by default): nothing
    cb = TrainFit()
    _fit(_Tiny(x.shape[1], 4, input="images"), _DM(x, given, true), cb, epochs=1)
    assert cb.metrics == {}
    cb = TrainFit(inputs=["features", "images"])
    _fit(_Tiny(x.shape[1], 4, input="images"), _DM(x, given, true), cb, epochs=1)
    assert "train_fit/noisy" in cb.metrics


def test_a_run_resumed_after_its_last_epoch_records_the_same_numbers(tmp_path):
    from noisy_prompt.resume import ResumeCheckpoint

    x, given, true = _data(True)
    torch.manual_seed(0)
    first = TrainFit()
    _fit(_Tiny(x.shape[1], 4), _DM(x, given, true), first, epochs=2, extra=[ResumeCheckpoint(tmp_path)])
    again = TrainFit()  # a new process: the callback starts empty, the checkpoint holds the last loss
    torch.manual_seed(1)
    _fit(_Tiny(x.shape[1], 4), _DM(x, given, true), again, epochs=2, ckpt_path=str(tmp_path / "last.ckpt"),
         weights_only=True)
    assert again.metrics == pytest.approx(first.metrics) and LOSS_FINAL in again.metrics
