"""Pure cores of SSR, LSL, DivideMix and DeFT against values computed by hand on tiny inputs."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from noisy_prompt.losses.soft import mixup
from noisy_prompt.methods.baselines import core
from paths import CONF


# Four unit vectors in 2-D; cosines: 01 0.8, 02 0, 03 0.6, 12 0.6, 13 0.96, 23 0.8.
FEATS = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
LABELS = torch.tensor([0, 0, 1, 1])


def test_weighted_knn_vote_by_hand():
    vote = core.weighted_knn_vote(FEATS, LABELS, 2, k=2, block_size=3)
    want = torch.tensor([[0.8, 0.6], [0.8, 0.96], [0.6, 0.8], [0.96, 0.8]])
    torch.testing.assert_close(vote, want / want.sum(1, keepdim=True))
    # Blocks are a memory device only.
    torch.testing.assert_close(core.weighted_knn_vote(FEATS, LABELS, 2, k=2, block_size=1), vote)
    # Self included: sample 0's nearest is itself (cosine 1), then sample 1 (0.8).
    self_in = core.weighted_knn_vote(FEATS, LABELS, 2, k=2, exclude_self=False)
    torch.testing.assert_close(self_in[0], torch.tensor([1.0, 0.0]))


def test_knn_vote_is_divided_by_the_class_prior():
    labels = torch.tensor([0, 0, 0, 1])
    # Sample 0 sees labels 0, 0, 1 (k = 3, uniform weights): counts [2, 1] / prior [0.75, 0.25] = [8/3, 4].
    vote = core.weighted_knn_vote(FEATS, labels, 2, k=3, weighting="uniform")
    torch.testing.assert_close(vote[0], torch.tensor([0.4, 0.6]))
    raw = core.weighted_knn_vote(FEATS, labels, 2, k=3, weighting="uniform", prior_normalise=False)
    torch.testing.assert_close(raw[0], torch.tensor([2 / 3, 1 / 3]))
    with pytest.raises(ValueError, match="weighting"):
        core.weighted_knn_vote(FEATS, labels, 2, k=3, weighting="gaussian")
    with pytest.raises(ValueError, match=r"lie in \[0, 2\)"):
        core.weighted_knn_vote(FEATS, torch.tensor([0, 1, 2, 0]), 2, k=3)


def test_ssr_relabel_and_select_by_hand():
    probs = torch.tensor([[0.95, 0.05], [0.6, 0.4], [0.05, 0.95]])
    working, relabelled = core.ssr_relabel(probs, torch.tensor([1, 1, 0]), theta_r=0.9)
    assert working.tolist() == [0, 1, 1] and relabelled.tolist() == [True, False, True]
    # Exactly at the threshold is not "above" it.
    assert core.ssr_relabel(torch.tensor([[0.9, 0.1]]), torch.tensor([1]), 0.9)[0].tolist() == [1]

    vote = core.weighted_knn_vote(FEATS, LABELS, 2, k=2)
    clean, score = core.ssr_select(vote, LABELS, theta_s=1.0)
    assert clean.tolist() == [True, False, True, False]
    torch.testing.assert_close(score, torch.tensor([1.0, 0.8 / 0.96, 1.0, 0.8 / 0.96]))
    assert core.ssr_select(vote, LABELS, theta_s=0.8)[0].all()


def test_structural_labels_by_hand():
    # Nearest other sample: 0 -> 1, 1 -> 3, 2 -> 3, 3 -> 1. Sample 1 receives labels {0 (from 0), 1 (from 3)},
    # sample 3 receives {0 (from 1), 1 (from 2)}; samples 0 and 2 receive nothing and keep their own label.
    st, received = core.structural_labels(FEATS, LABELS, 2, k_st=1, block_size=2)
    torch.testing.assert_close(st, torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.5, 0.5]]))
    assert received.tolist() == [0, 2, 0, 2]
    st3, received3 = core.structural_labels(FEATS, LABELS, 2, k_st=3)  # everyone pushes to everyone
    assert received3.tolist() == [3, 3, 3, 3]
    torch.testing.assert_close(st3[0], torch.tensor([1 / 3, 2 / 3]))


def test_gmm_em_by_hand():
    x = torch.tensor([0.0, 0.2, 0.8, 1.0])
    weights, means, var, resp = core.gmm_1d(x, reg_covar=5e-4)
    # Median split, then the components stay at the two pairs: means 0.1 / 0.9, variance 0.01 + reg.
    torch.testing.assert_close(means, torch.tensor([0.1, 0.9], dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(var, torch.tensor([0.0105, 0.0105], dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(weights, torch.tensor([0.5, 0.5], dtype=torch.float64), atol=1e-6, rtol=0)
    assert resp[:, 0].round().tolist() == [1.0, 1.0, 0.0, 0.0]
    # Symmetric data: after the median split the components mirror each other (first M step: means 1/6 and
    # 5/6), so a point halfway between them has posterior 1/2 for each, and the means stay mirrored.
    _, m, _, r = core.gmm_1d(torch.tensor([0.0, 0.0, 0.5, 0.5, 1.0, 1.0]), n_iter=1)
    assert float(m.sum()) == pytest.approx(1.0) and float(m[0]) < 0.5
    assert r[2:4, 0].tolist() == pytest.approx([0.5, 0.5], abs=1e-9)


def test_gmm_clean_probability_is_the_low_loss_component():
    losses = torch.tensor([5.0, 1.0, 1.4, 4.6, 1.2])  # normalised: [1, 0, 0.1, 0.9, 0.05]
    p = core.gmm_clean_probability(losses)
    assert p.round().tolist() == [0.0, 1.0, 1.0, 0.0, 1.0]
    torch.testing.assert_close(core.normalise_losses(losses), torch.tensor([1.0, 0.0, 0.1, 0.9, 0.05]))
    assert core.normalise_losses(torch.ones(3)).tolist() == [0.0, 0.0, 0.0]
    # Deterministic: the same input gives the same output bit for bit.
    assert torch.equal(core.gmm_clean_probability(losses), p)
    with pytest.raises(ValueError, match="at least 2"):
        core.gmm_1d(torch.tensor([1.0]))


def test_refinement_sharpening_and_co_guessing_by_hand():
    nine_four = torch.tensor([[9 / 13, 4 / 13]])
    torch.testing.assert_close(core.sharpen(torch.tensor([[0.6, 0.4]]), 0.5), nine_four)
    # 0.5 * [1, 0] + 0.5 * [0.2, 0.8] = [0.6, 0.4], then sharpened.
    refined = core.refine_labels(torch.tensor([[1.0, 0.0]]), torch.tensor([0.5]), torch.tensor([[0.2, 0.8]]), 0.5)
    torch.testing.assert_close(refined, nine_four)
    # w = 1 keeps the given label.
    torch.testing.assert_close(core.refine_labels(torch.tensor([[0.0, 1.0]]), torch.tensor([1.0]),
                                                  torch.tensor([[0.9, 0.1]]), 0.5), torch.tensor([[0.0, 1.0]]))
    guess = core.co_guess([torch.tensor([[0.8, 0.2]]), torch.tensor([[0.4, 0.6]])], 0.5)
    torch.testing.assert_close(guess, nine_four)
    with pytest.raises(ValueError, match="temperature"):
        core.sharpen(torch.tensor([[0.5, 0.5]]), 0.0)


def test_divide_mix_schedules_and_regularisers_by_hand():
    assert core.linear_rampup(5.5, 1, 16) == pytest.approx(4.5 / 16)
    assert core.linear_rampup(0.5, 1, 16) == 0.0 and core.linear_rampup(100, 1, 16) == 1.0
    assert core.linear_rampup(0.0, 1, 0) == 1.0
    assert float(core.uniform_prior_penalty(torch.zeros(3, 4))) == pytest.approx(0.0, abs=1e-7)
    # Mean prediction [3/4, 1/4]: 1/2 log(1/2 / 3/4) + 1/2 log(1/2 / 1/4) = 1/2 log(4/3).
    logits = torch.tensor([[math.log(3.0), 0.0]])
    assert float(core.uniform_prior_penalty(logits)) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-5)
    assert float(core.confidence_penalty(torch.zeros(2, 2))) == pytest.approx(-math.log(2), rel=1e-6)


def test_deft_p_yes_and_verdicts_by_hand():
    p = core.deft_p_yes(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]]))
    torch.testing.assert_close(p, torch.tensor([[1 / (1 + math.exp(-2)), 0.5]]))
    torch.testing.assert_close(p, torch.softmax(torch.tensor([[2.0, 0.0], [0.0, 0.0]]), dim=1)[:, :1].T)
    # Verdicts are read from the margin pos − neg = logit(p_yes).
    margin = torch.logit(torch.tensor([[0.7, 0.6], [0.4, 0.3], [0.6, 0.9]], dtype=torch.float64)).float()
    labels = torch.tensor([0, 0, 0])
    assert core.deft_clean_verdict(margin, labels).tolist() == [True, False, True]
    assert core.deft_clean_verdict(margin, labels, require_argmax=True).tolist() == [True, False, False]
    assert core.deft_clean_verdict(torch.tensor([[0.0, -2.0]]), torch.tensor([0])).tolist() == [False]  # p_yes 0.5
    assert core.deft_clean_verdict(margin, labels, threshold=0.65).tolist() == [True, False, False]
    torch.testing.assert_close(core.deft_margin(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.5, 1.0]])),
                               torch.tensor([[1.5, -1.0]]))


def test_deft_verdicts_do_not_tie_where_p_yes_saturates():
    # pos − neg of 18 and 25: sigmoid rounds both to exactly 1.0 in float32, so argmax over p_yes picks
    # class 0 for both rows and the samples labelled 1 were judged noisy (DeFT's released code too).
    pos = torch.tensor([[30.0, 37.0, 0.0], [30.0, 37.0, 0.0]])
    neg = torch.tensor([[12.0, 12.0, 5.0], [12.0, 12.0, 5.0]])
    assert core.deft_p_yes(pos, neg)[0, :2].tolist() == [1.0, 1.0]  # the saturation this guards against
    margin = core.deft_margin(pos, neg)
    labels = torch.tensor([1, 0])
    assert core.deft_clean_verdict(margin, labels, require_argmax=True).tolist() == [True, False]
    assert core.deft_clean_verdict(margin, labels).tolist() == [True, True]  # both above the threshold


def _em_reference(x, iters=20_000, reg=5e-4):
    """A direct NumPy EM for a 2-component 1-D GMM from the same median split, run for a fixed, large number of
    iterations (no stopping rule): the converged fit the module's verdicts are compared with."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    resp = np.zeros((len(x), 2))
    order = np.argsort(x, kind="stable")
    resp[order[: len(x) // 2], 0] = 1.0
    resp[order[len(x) // 2:], 1] = 1.0
    for _ in range(iters):
        nk = resp.sum(0)
        w, mu = nk / len(x), (resp * x[:, None]).sum(0) / nk
        var = (resp * (x[:, None] - mu) ** 2).sum(0) / nk + reg
        logp = -0.5 * (x[:, None] - mu) ** 2 / var - 0.5 * np.log(2 * np.pi * var) + np.log(w)
        logp -= logp.max(1, keepdims=True)
        resp = np.exp(logp)
        resp /= resp.sum(1, keepdims=True)
    return resp[:, int(np.argmin(mu))]


def _losses_at_80_noise(n, clean_fraction, seed):
    g = torch.Generator().manual_seed(seed)
    nc = int(n * clean_fraction)
    clean = torch.rand(nc, generator=g).pow(3) * 1.5  # small CE losses of the clean fifth
    noisy = (2.0 + 0.8 * torch.randn(n - nc, generator=g)).abs()  # the mislabelled rest
    return torch.cat([clean, noisy])


@pytest.mark.parametrize("clean_fraction", [0.1, 0.2])
def test_dividemix_split_is_the_converged_fit_at_80_percent_noise(clean_fraction, caplog):
    losses = _losses_at_80_noise(2000, clean_fraction, seed=0)
    ref = torch.as_tensor(_em_reference(core.normalise_losses(losses).numpy())) > 0.5
    from omegaconf import OmegaConf

    gmm = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "dividemix.yaml").gmm)  # model=dividemix's fit
    with caplog.at_level("WARNING", logger="noisy_prompt.methods.baselines.core"):
        p = core.gmm_clean_probability(losses, **gmm)
    assert "cap" not in caplog.text
    assert float(((p > 0.5) != ref).float().mean()) < 0.005
    # DivideMix's released settings (10 iterations, tol 1e-2) stop far from that fit here.
    early = core.gmm_clean_probability(losses, n_iter=10, tol=1e-2)
    assert float(((early > 0.5) != ref).float().mean()) > 0.1


def test_gmm_cap_is_reached_only_with_a_warning(caplog):
    losses = _losses_at_80_noise(500, 0.2, seed=1)
    with caplog.at_level("WARNING", logger="noisy_prompt.methods.baselines.core"):
        core.gmm_clean_probability(losses, n_iter=3)
    assert "stopped at the cap of 3 iterations" in caplog.text and "model.gmm.n_iter" in caplog.text


def test_deft_losses_by_hand():
    pos = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)
    neg = torch.tensor([[0.0, 0.0]], requires_grad=True)
    out = core.deft_losses(pos, neg, torch.tensor([0]), torch.tensor([1]))
    assert float(out["l_cls"].detach()) == pytest.approx(math.log(4 / 3), rel=1e-5)  # CE of softmax [3/4, 1/4]
    assert float(out["l_yes"]) == pytest.approx(-math.log(3 / 4), rel=1e-5)  # p_yes_0 = sigmoid(log 3)
    assert float(out["l_no"]) == pytest.approx(math.log(2), rel=1e-5)  # p_no_1 = 1/2
    out["l_neg"].backward()
    assert pos.grad is None or float(pos.grad.abs().sum()) == 0.0  # p_yes reads detached positive logits
    assert float(neg.grad.abs().sum()) > 0

    # A sample judged noisy: no CE, and its p_yes target becomes the positive prediction (class 0, not 1).
    noisy = core.deft_losses(pos.detach(), neg.detach(), torch.tensor([1]), torch.tensor([0]),
                             clean=torch.tensor([False]))
    assert float(noisy["l_cls"]) == 0.0
    assert float(noisy["l_yes"]) == pytest.approx(-math.log(3 / 4), rel=1e-5)


def test_complementary_labels_differ_and_cover_the_others():
    gen = torch.Generator().manual_seed(0)
    labels = torch.zeros(2000, dtype=torch.long)
    comp = core.complementary_labels(labels, 4, gen)
    assert (comp != labels).all() and set(comp.tolist()) == {1, 2, 3}
    with pytest.raises(ValueError, match="at least 2 classes"):
        core.complementary_labels(labels, 1)


def test_class_balanced_weights_by_hand():
    w = core.class_balanced_weights(torch.tensor([0, 0, 1, 2]), torch.tensor([True, True, True, False]), 3)
    torch.testing.assert_close(w, torch.tensor([0.25, 0.25, 0.5, 0.0]))
    assert core.class_balanced_weights(torch.tensor([0, 1]), torch.tensor([False, False]), 2).tolist() == [0.0, 0.0]


def test_mixup_max_keeps_the_larger_weight_on_the_own_row():
    x, t = torch.randn(6, 3), F.one_hot(torch.arange(6) % 3, 3).float()
    for seed in range(8):
        gen_a, gen_b = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        _, _, lam_raw, perm_raw = mixup(x, t, 4.0, gen_a)
        x_mix, t_mix, lam, perm = core.mixup_max(x, t, 4.0, gen_b)
        assert lam == pytest.approx(max(lam_raw, 1 - lam_raw)) and lam >= 0.5
        assert torch.equal(perm, perm_raw)
        torch.testing.assert_close(x_mix, lam * x + (1 - lam) * x[perm])
        torch.testing.assert_close(t_mix.sum(1), torch.ones(6))


def test_feature_consistency_and_sce():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    loss = core.feature_consistency(p, z)
    assert float(loss) == pytest.approx(-0.5)  # cosines 1 and 0
    loss.backward()
    assert z.grad is None  # stop-gradient on z
    logits, y = torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([0])
    # CE log(4/3) + RCE: p_1 = 1/4 times -log(1e-4).
    want = math.log(4 / 3) + 0.25 * -math.log(1e-4)
    assert float(core.symmetric_cross_entropy(logits, y)) == pytest.approx(want, rel=1e-5)


def test_verdict_stats_by_hand():
    stats = core.verdict_stats(torch.tensor([1, 1, 0, 0]).bool(), torch.tensor([0, 1, 2, 3]),
                               torch.tensor([0, 0, 2, 3]), suggested=torch.tensor([0, 0, 2, 0]))
    assert stats == pytest.approx({"clean_fraction": 0.5, "num_clean": 2.0, "precision": 0.5, "recall": 1 / 3,
                                   "noisy_label_acc": 0.75, "soft_label_acc": 0.75})
    assert core.verdict_stats(torch.zeros(2).bool(), torch.tensor([0, 1])) == {"clean_fraction": 0.0,
                                                                               "num_clean": 0.0}
