"""methods/selection.py alone: the label-issue metrics and ranking on hand-made examples, the csv schema,
and the training-set pass on a fake loader (no CLIP, no training)."""
from __future__ import annotations

import csv
import itertools

import pytest
import torch
from torch import nn

from noisy_prompt.data.facts import DataFacts
from noisy_prompt.methods.selection import (
    LABEL_ISSUE_COLUMNS,
    LabelIssueReport,
    LabelIssuesFileError,
    Verdicts,
    auroc,
    label_issue_metrics,
    read_label_issues_csv,
    report_from_log_probs,
    suspicion_order,
    suspicion_ranks,
    training_set_pass,
    write_label_issues_csv,
)

# 8 samples, 3 of them mislabelled (2, 5, 7). The ranking puts 5 and 2 first, then a clean one (0), then 7.
GIVEN = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
TRUE = torch.tensor([0, 1, 0, 0, 1, 1, 0, 2])
SCORE = torch.tensor([0.30, 0.90, 0.20, 0.80, 0.95, 0.10, 0.70, 0.40])
# The verdict flags 2, 0 and 4 as noisy: precision 1/3, recall 1/3.
NOISY_VERDICT = torch.tensor([True, False, True, False, True, False, False, False])
SUGGESTED = torch.tensor([0, 1, 0, 0, 1, 2, 0, 2])  # fixes 2 and 7, not 5


def test_ranking_is_ascending_score_with_ties_by_index():
    assert suspicion_order(SCORE).tolist() == [5, 2, 0, 7, 6, 3, 1, 4]
    assert suspicion_order(torch.tensor([0.5, 0.1, 0.5, 0.1])).tolist() == [1, 3, 0, 2]
    ranks = suspicion_ranks(torch.tensor([0.5, 0.1, 0.5, 0.1]))
    assert ranks.tolist() == [3, 1, 4, 2]


def test_metrics_on_a_hand_made_example():
    m = label_issue_metrics(SCORE, GIVEN, TRUE, NOISY_VERDICT, SUGGESTED, ks=(1, 2, 4, 100))
    p = "label_issues/"
    assert m[p + "num_train"] == 8 and m[p + "num_noisy"] == 3 and m[p + "num_flagged"] == 3
    assert m[p + "noise_rate"] == pytest.approx(3 / 8)
    assert m[p + "verdict_precision"] == pytest.approx(1 / 3)  # only sample 2 of {0, 2, 4} is wrong
    assert m[p + "verdict_recall"] == pytest.approx(1 / 3)
    # top-3 = {5, 2, 0}: two of the three wrong labels
    assert m[p + "precision_at_noisy"] == pytest.approx(2 / 3)
    assert m[p + "precision_at_1"] == 1.0 and m[p + "recall_at_1"] == pytest.approx(1 / 3)
    assert m[p + "precision_at_2"] == 1.0 and m[p + "recall_at_2"] == pytest.approx(2 / 3)
    assert m[p + "precision_at_4"] == pytest.approx(3 / 4) and m[p + "recall_at_4"] == 1.0
    assert p + "precision_at_100" not in m  # k beyond the training set is left out, not 0
    # AUROC: of the 15 (noisy, clean) pairs, only (7 @ 0.40, 0 @ 0.30) is misordered
    assert m[p + "auroc"] == pytest.approx(14 / 15)
    assert m[p + "suggested_acc"] == pytest.approx(7 / 8)
    assert m[p + "suggested_acc_noisy"] == pytest.approx(2 / 3)


def test_metrics_without_truth_or_verdicts_or_noise():
    p = "label_issues/"
    assert label_issue_metrics(SCORE, GIVEN, None, NOISY_VERDICT) == {p + "num_train": 8.0, p + "num_flagged": 3.0}
    clean = label_issue_metrics(SCORE, GIVEN, GIVEN.clone(), torch.zeros(8, dtype=torch.bool), ks=(2,))
    # nothing flagged and nothing noisy: no precision/recall/auroc is invented
    assert clean[p + "num_noisy"] == 0 and clean[p + "precision_at_2"] == 0.0
    for key in ("verdict_precision", "verdict_recall", "precision_at_noisy", "recall_at_2", "auroc"):
        assert p + key not in clean


def test_auroc_equals_pair_counting_with_ties():
    g = torch.Generator().manual_seed(0)
    score = torch.randint(0, 5, (40,), generator=g).float()  # many ties
    positive = torch.rand(40, generator=g) < 0.4
    pos, neg = score[positive].tolist(), score[~positive].tolist()
    brute = sum(1.0 if a < b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg)) / (len(pos) * len(neg))
    assert auroc(score, positive) == pytest.approx(brute)
    assert auroc(score, torch.zeros(40, dtype=torch.bool)) is None


def test_report_from_log_probs_scores_the_given_label():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]])
    given = torch.tensor([0, 0, 2])
    r = report_from_log_probs(torch.log_softmax(logits, 1) + 5.0, given)  # any normalisation
    probs = torch.softmax(logits, 1)
    assert r.suggested.tolist() == [0, 2, 0]  # ties go to the first class (torch's argmax)
    assert r.score.tolist() == pytest.approx([probs[0, 0].item(), probs[1, 0].item(), 1 / 3])
    assert r.suggested_prob.tolist() == pytest.approx(probs.max(1).values.tolist())
    with pytest.raises(ValueError, match="N = 3"):
        report_from_log_probs(torch.zeros(2, 3), given)


def _verdicts(n: int) -> Verdicts:
    clean = ~NOISY_VERDICT[:n]
    return Verdicts(epoch=1, given=GIVEN[:n], true=TRUE[:n], clean_mask=clean, score=torch.linspace(0, 1, n),
                    suggested=SUGGESTED[:n], confidence=torch.ones(n))


def test_csv_schema_round_trip(tmp_path):
    names = ["cat", "dog", "owl"]
    report = LabelIssueReport(given=GIVEN, suggested=SUGGESTED, suggested_prob=torch.full((8,), 0.9), score=SCORE,
                              true=TRUE, verdicts=_verdicts(8), paths=[f"/data/{i}.png" for i in range(8)])
    rows = read_label_issues_csv(write_label_issues_csv(tmp_path / "a.csv", names, report))
    assert tuple(rows[0]) == LABEL_ISSUE_COLUMNS
    assert [r["verdict"] for r in rows] == ["noisy" if v else "clean" for v in NOISY_VERDICT.tolist()]
    assert [int(r["rank"]) for r in rows] == suspicion_ranks(SCORE).tolist()
    assert rows[5]["path"] == "/data/5.png" and rows[5]["given_class"] == "owl" and rows[5]["true_class"] == "dog"
    assert [int(r["method_label"]) for r in rows] == SUGGESTED.tolist()
    assert not (tmp_path / "a.csv.tmp").exists()
    # no verdicts, no truth, no paths: those columns are empty, the others filled
    bare = LabelIssueReport(given=GIVEN, suggested=SUGGESTED, suggested_prob=torch.ones(8), score=SCORE)
    rows = read_label_issues_csv(write_label_issues_csv(tmp_path / "b.csv", names, bare))
    for col in ("path", "verdict", "method_score", "method_label", "true_label", "true_class"):
        assert {r[col] for r in rows} == {""}
    with pytest.raises(ValueError, match="shape"):
        LabelIssueReport(given=GIVEN, suggested=SUGGESTED[:3], suggested_prob=torch.ones(8), score=SCORE)


def test_reading_an_old_or_missing_report_is_a_clear_error(tmp_path):
    with pytest.raises(LabelIssuesFileError, match="no label-issue report"):
        read_label_issues_csv(tmp_path / "none.csv")
    old = tmp_path / "old.csv"  # the schema before the one report (TANGO's columns)
    with old.open("w", newline="") as fh:
        csv.writer(fh).writerows([["index", "given_label", "given_class", "clean_verdict", "q_score"], [0, 1, "a", 1, 0.5]])
    with pytest.raises(LabelIssuesFileError, match="missing columns path"):
        read_label_issues_csv(old)


class _Fake(nn.Module):
    """The module side of training_set_pass: no trainer, one linear layer."""

    def __init__(self):
        super().__init__()
        self._trainer = None
        self.lin = nn.Linear(2, 3)
        self.seen_training = []

    @property
    def device(self):
        return torch.device("cpu")

    def data_source(self):  # not fitted: no data of its own
        return None


class _DM:
    """A DataSource (data/facts.py) serving a training set in the given batch order."""

    def __init__(self, order):
        self.order = order

    def facts(self):
        return DataFacts()

    def set_epoch(self, epoch):
        pass

    def test_dataloader(self):
        return []

    def train_paths(self):
        return None

    def num_train(self):
        return sum(len(chunk) for chunk in self.order)

    def train_eval_dataloader(self):
        return [{"x": torch.tensor([[float(i), 1.0] for i in chunk]), "label": torch.tensor([i % 3 for i in chunk]),
                 "clean_label": torch.tensor([0 for _ in chunk]), "index": torch.tensor(chunk)} for chunk in self.order]


def test_training_set_pass_places_outputs_by_index_and_restores_modes():
    m = _Fake().train()

    def outputs(x):
        m.seen_training.append(m.training)
        return {"x0": x[:, 0], "logits": m.lin(x)}

    out, given, clean, _ = training_set_pass(m, outputs, _DM([[3, 0], [2, 4, 1]]))
    assert out["x0"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]  # dataset order, whatever the loader's order
    assert given.tolist() == [0, 1, 2, 0, 1] and out["logits"].shape == (5, 3)
    assert m.seen_training == [False, False] and m.training  # eval inside, train mode restored
    with pytest.raises(ValueError, match="exactly once"):
        training_set_pass(m, outputs, _DM([[0, 1], [1]]))
    with pytest.raises(RuntimeError, match="train_eval_dataloader"):
        training_set_pass(m, outputs, None)
    half = type("OnlyLoader", (), {"train_eval_dataloader": _DM.train_eval_dataloader})()  # not a DataSource
    with pytest.raises(RuntimeError, match="DataSource.*got OnlyLoader"):
        training_set_pass(m, outputs, half)


class _Shuffled(_DM):
    """Clean labels that differ from the given ones, so that a misplaced clean label shows."""

    def train_eval_dataloader(self):
        return [{"x": torch.tensor([[float(i), 1.0] for i in chunk]), "label": torch.tensor([i % 3 for i in chunk]),
                 "clean_label": torch.tensor([10 + i for i in chunk]), "index": torch.tensor(chunk)}
                for chunk in self.order]


def test_training_set_pass_places_clean_labels_by_index_and_returns_the_data():
    m = _Fake()
    dm = _Shuffled([[4, 1], [0, 3, 2]])
    out, given, clean, got = training_set_pass(m, lambda x: {"x0": x[:, 0]}, dm)
    assert clean.tolist() == [10, 11, 12, 13, 14] and given.tolist() == [0, 1, 2, 0, 1]
    assert out["x0"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] and got is dm
    assert given.dtype == clean.dtype == torch.long


def test_training_set_pass_defaults_to_the_modules_own_data_source():
    dm = _Shuffled([[1, 0]])
    m = _Fake()
    m.data_source = lambda: dm  # a fitted module reaches its datamodule through data_source()
    out, _, clean, got = training_set_pass(m, lambda x: {"x0": x[:, 0]})
    assert got is dm and clean.tolist() == [10, 11] and out["x0"].tolist() == [0.0, 1.0]


@pytest.mark.parametrize("order", [[], [[0, 2]], [[1, 2]], [[0, 1, 5]]])
def test_training_set_pass_refuses_an_empty_or_gapped_loader(order):
    with pytest.raises(ValueError, match="each index 0..N-1 exactly once"):
        training_set_pass(_Fake(), lambda x: {"x0": x[:, 0]}, _DM(order))


def test_training_set_pass_keeps_integer_outputs_and_widens_half_precision():
    out, *_ = training_set_pass(_Fake(), lambda x: {"half": x[:, 0].half(), "idx": x[:, 0].long(),
                                                    "flag": x[:, 0] > 1}, _DM([[2, 0, 1]]))
    assert out["half"].dtype == torch.float32 and out["half"].tolist() == [0.0, 1.0, 2.0]
    assert out["idx"].dtype == torch.long and out["idx"].tolist() == [0, 1, 2]
    assert out["flag"].dtype == torch.bool and out["flag"].tolist() == [False, False, True]


def test_training_set_pass_restores_every_submodules_mode_even_when_outputs_fail():
    m = _Fake().train()
    m.frozen = nn.Linear(2, 2).eval()  # a frozen part stays in eval mode inside a training module
    seen = []

    def outputs(x):
        seen.append((m.training, m.lin.training, m.frozen.training))
        return {"x0": x[:, 0]}

    training_set_pass(m, outputs, _DM([[0, 1]]))
    assert seen == [(False, False, False)]
    assert (m.training, m.lin.training, m.frozen.training) == (True, True, False)

    def broken(x):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        training_set_pass(m, broken, _DM([[0, 1]]))
    assert (m.training, m.lin.training, m.frozen.training) == (True, True, False)


class _Precision:
    """A trainer's precision plugin: records that the forward ran inside its context, converts the input."""

    def __init__(self):
        self.inside = False
        self.entered = 0

    def forward_context(self):
        plugin = self

        class _Ctx:
            def __enter__(self):
                plugin.inside, plugin.entered = True, plugin.entered + 1

            def __exit__(self, *exc):
                plugin.inside = False

        return _Ctx()

    def convert_input(self, x):
        return x.double()


class _Attached(_Fake):
    """The fake module attached to a trainer (LightningModule.trainer reads `_trainer`)."""

    def __init__(self, plugin):
        super().__init__()
        self._trainer = type("Trainer", (), {"precision_plugin": plugin, "is_global_zero": True})()

    @property
    def trainer(self):
        return self._trainer


def test_training_set_pass_runs_under_the_trainers_precision():
    plugin = _Precision()
    seen = []
    out, *_ = training_set_pass(_Attached(plugin), lambda x: seen.append((plugin.inside, x.dtype)) or {"x0": x[:, 0]},
                                _DM([[1], [0]]))
    assert seen == [(True, torch.float64)] * 2 and plugin.entered == 1 and not plugin.inside
    assert out["x0"].dtype == torch.float32  # outputs widened to float32 whatever the precision


class _Sized(list):
    """A loader with a dataset, as a DataLoader has (its length sets whether a progress bar shows)."""

    def __init__(self, batches, n):
        super().__init__(batches)
        self.dataset = range(n)


def test_training_set_pass_shows_a_progress_bar_only_on_large_sets(monkeypatch, capsys):
    from noisy_prompt.methods import selection

    dm = _DM([[0, 1], [2]])
    batches = dm.train_eval_dataloader()
    dm.train_eval_dataloader = lambda: _Sized(batches, 3)
    monkeypatch.setattr(selection, "PROGRESS_MIN_IMAGES", 3)
    training_set_pass(_Fake(), lambda x: {"x0": x[:, 0]}, dm, desc="scoring 3 images")
    assert "scoring 3 images" in capsys.readouterr().err
    monkeypatch.setattr(selection, "PROGRESS_MIN_IMAGES", 4)
    training_set_pass(_Fake(), lambda x: {"x0": x[:, 0]}, dm, desc="scoring 3 images")
    assert "scoring 3 images" not in capsys.readouterr().err
