"""The head-comparison probe (`python -m noisy_prompt.tools.headfit`) and the class-specific
contexts it adds to the prompt encoder."""
import numpy as np
import pytest
import torch

from noisy_prompt.clip import PromptTextEncoder
from noisy_prompt.data.datamodule import LabeledFeatures, collate_batch
from noisy_prompt.tools import headfit


def test_class_specific_contexts_equal_a_shared_one_when_equal_and_move_each_class_alone(synthetic_clip):
    model, tok = synthetic_clip
    names = ["red circle", "blue striped star", "green square"]
    enc = PromptTextEncoder(model, tok, names, n_ctx=4)
    assert enc.path == "prefix"
    ctx = torch.randn(4, enc.width, generator=torch.Generator().manual_seed(0)) * 0.3
    with torch.no_grad():
        shared = enc(ctx)
        per_class = enc(ctx.unsqueeze(0).repeat(3, 1, 1))
        torch.testing.assert_close(per_class, shared, atol=1e-5, rtol=0)
        moved = ctx.unsqueeze(0).repeat(3, 1, 1)
        moved[1] = torch.randn(4, enc.width, generator=torch.Generator().manual_seed(5)) * 3.0  # this tower barely heeds small moves
        out = enc(moved)
        assert torch.allclose(out[[0, 2]], shared[[0, 2]], atol=1e-5) and not torch.allclose(out[1], shared[1], atol=1e-3)
        # class order picks the matching rows of the per-class contexts
        torch.testing.assert_close(enc(moved, torch.tensor([1, 0])), out[[1, 0]], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="one row per class"):
        enc(torch.zeros(2, 4, enc.width))


def test_feature_stats_and_effective_rank():
    assert headfit.effective_rank(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert headfit.effective_rank(torch.ones(7)) == pytest.approx(7.0)
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=gen)
    labels = torch.arange(4).repeat_interleave(10)
    tight = centres[labels] + 0.05 * torch.randn(40, 16, generator=gen)
    loose = centres[labels] + 0.8 * torch.randn(40, 16, generator=gen)
    a, b = headfit.feature_stats(tight, labels), headfit.feature_stats(loose, labels)
    assert a["cos_within"] > 0.99 > b["cos_within"] and a["cos_within"] > a["cos_between"]
    assert a["within_var_share"] < 0.05 < b["within_var_share"]
    assert a["erank_class_means"] <= 3.0 + 1e-6 and b["erank_within"] > a["erank_all"]


def test_spread_and_instance_offsets():
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(3).repeat_interleave(5)
    x = torch.nn.functional.normalize(torch.randn(3, 8, generator=gen)[labels] + 0.1 * torch.randn(15, 8, generator=gen), dim=-1)
    means = torch.stack([x[labels == c].mean(0) for c in range(3)])
    torch.testing.assert_close(headfit.spread_features(x, labels, means, 1.0), x)
    wider = headfit.spread_features(x, labels, means, 3.0)
    assert headfit.feature_stats(wider, labels)["cos_within"] < headfit.feature_stats(x, labels)["cos_within"]
    torch.testing.assert_close(headfit.spread_features(x, labels, means, 3.0).mean(0), means[labels].mean(0), atol=1e-6, rtol=0)
    o1, o2 = headfit.instance_offsets(6, 8, 0.5, "train-seed1"), headfit.instance_offsets(6, 8, 0.5, "train-seed1")
    assert torch.equal(o1, o2) and torch.allclose(o1.norm(dim=1), torch.full((6,), 0.5))
    assert not torch.allclose(o1, headfit.instance_offsets(6, 8, 0.5, "test"))


class _DM:
    """What train_head and headfit.train_fit need of the datamodule: features, labels, epochs, loaders."""

    def __init__(self, feats, given, clean, seed=1):
        from noisy_prompt.data.datamodule import EpochShuffleSampler

        self.train_set = LabeledFeatures(feats.unsqueeze(0), given, clean)
        self.train_eval_set = self.train_set
        self.sampler = EpochShuffleSampler(len(given), seed)

    def set_epoch(self, epoch):
        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.train_set, batch_size=16, sampler=self.sampler, collate_fn=collate_batch)

    def train_eval_dataloader(self):
        return torch.utils.data.DataLoader(self.train_eval_set, batch_size=64, collate_fn=collate_batch)


@pytest.mark.parametrize("per_image_variation", [False, True])
def test_a_free_head_fits_wrong_labels_only_when_images_of_a_class_differ(per_image_variation):
    """The probe's logic: with images of one class identical, no head can predict a wrong label on them;
    with full-rank per-image variation, a free class-vector head under CE memorises them."""
    gen = torch.Generator().manual_seed(0)
    C, per, D = 4, 20, 64
    clean = np.repeat(np.arange(C), per)
    given = clean.copy()
    flip = np.arange(len(given)) % 2 == 0
    given[flip] = (given[flip] + 1 + np.arange(flip.sum()) % (C - 1)) % C  # half the labels wrong, never the true one
    centres = torch.nn.functional.normalize(torch.randn(C, D, generator=gen), dim=-1)
    feats = centres[torch.as_tensor(clean)]
    if per_image_variation:
        feats = feats + headfit.instance_offsets(len(clean), D, 1.0, "t")
    dm = _DM(feats, given, clean)
    head = headfit.FreeClassHead(centres, torch.tensor(100.0))
    history = headfit.train_head(head, dm, headfit.loss_of("ce", 0.5), {"lr": 0.01, "warmup_epochs": 0}, epochs=30)
    fit = headfit.train_fit(head, dm)
    assert len(history) == 30 and fit["train/mislabelled"] == pytest.approx(50.0)
    if per_image_variation:
        assert fit["train/fit_noisy"] > 80 and history[-1] < history[0] / 3
    else:
        assert fit["train/fit_noisy"] == 0.0


def test_headfit_refuses_what_it_cannot_honour(tmp_path):
    with pytest.raises(SystemExit, match="one cell per call"):
        headfit.main(["--root", str(tmp_path), "--", "-m", "noise=sym50"])
    with pytest.raises(SystemExit, match="set by headfit"):
        headfit.main(["--root", str(tmp_path), "--", f"paths.cache_dir={tmp_path}"])
    with pytest.raises(SystemExit, match="HEAD=LR"):
        headfit.parse_lrs(["coop:0.1"])
    with pytest.raises(SystemExit, match="not a number"):
        headfit.parse_lrs(["coop=fast"])
    assert headfit.parse_lrs(["linear=0.05", "csc=0.02"]) == {"linear": 0.05, "csc": 0.02}
