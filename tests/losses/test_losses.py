"""Unit tests for noisy_prompt.losses (GCE, SEP, PAR, schedule, derangements, TANGO's soft losses)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from noisy_prompt.losses import (
    DerangementSampler,
    alpha_schedule,
    dpsep_total,
    gce_loss,
    masked_cross_entropy,
    mixup,
    par_gate_weights,
    par_losses,
    random_derangement,
    sep_loss,
    shift_derangement,
    soft_cross_entropy,
)


def logits_of(*rows: list[float]) -> torch.Tensor:
    """Logits whose softmax is each row normalised (log of unnormalised probabilities)."""
    return torch.tensor(rows, dtype=torch.float64).log()


def entropy(logits: torch.Tensor) -> torch.Tensor:
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


# ---------------------------------------------------------------- GCE
def test_gce_matches_hand_computed_closed_form():
    # softmax rows: [0.25, 0.5, 0.25] and [0.25, 0.25, 0.5]; labels pick p_y = 0.5 and 0.25.
    logits = logits_of([1, 2, 1], [1, 1, 2])
    targets = torch.tensor([1, 0])
    # q = 0.5: (1 - sqrt(0.5)) / 0.5 = 0.585786437..., (1 - sqrt(0.25)) / 0.5 = 1.0
    assert gce_loss(logits, targets, q=0.5).item() == pytest.approx((0.5857864376269049 + 1.0) / 2, abs=1e-12)
    # q = 1: 1 - p_y = 0.5 and 0.75
    assert gce_loss(logits, targets, q=1.0).item() == pytest.approx(0.625, abs=1e-12)


def test_gce_tends_to_ce_as_q_goes_to_zero():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=g, dtype=torch.float64) * 3
    targets = torch.randint(0, 5, (8,), generator=g)
    ce = F.cross_entropy(logits, targets).item()
    # (1 - p^q)/q = -log p - q·log²p/2 + O(q²): at q = 1e-4 the gap is ~1e-4 × log²p/2, far below 1e-3 relative.
    assert gce_loss(logits, targets, q=1e-4).item() == pytest.approx(ce, rel=1e-3)
    assert abs(gce_loss(logits, targets, q=0.5).item() - ce) > 0.05  # the check above is not vacuous


def test_gce_rejects_bad_q_and_bad_targets():
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="q must be in"):
        gce_loss(logits, torch.tensor([0, 1]), q=0.0)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 2\]"):
        gce_loss(logits, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="N=2"):
        gce_loss(logits, torch.tensor([0, 1, 2]))


# ---------------------------------------------------------------- SEP
def test_sep_entropy_gradient_step_raises_entropy_of_confident_prediction():
    logits = torch.tensor([[6.0, 0.5, -1.0], [0.0, 4.0, 0.0]], dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 1])
    out = sep_loss(logits, targets, lam=0.5, sigma=0.0)
    # σ = 0: the term is exactly -λ × mean entropy.
    assert out["entropy_term"].item() == pytest.approx(-0.5 * entropy(logits.detach()).mean().item(), rel=1e-12)
    out["entropy_term"].backward()
    before = entropy(logits.detach())
    # a descent step on the term raises entropy (by ~1% and ~4% here); the ascent step lowers it
    assert (entropy(logits.detach() - logits.grad) > before * 1.005).all()
    assert (entropy(logits.detach() + logits.grad) < before).all()


def test_sep_is_stochastic_when_sigma_positive_and_ce_part_is_cross_entropy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, generator=g)
    targets = torch.randint(0, 4, (6,), generator=g)
    a = sep_loss(logits, targets, lam=0.1, sigma=0.1)
    b = sep_loss(logits, targets, lam=0.1, sigma=0.1)
    assert a["loss"].item() != b["loss"].item()
    assert torch.allclose(a["ce"], F.cross_entropy(logits, targets), atol=1e-6)
    assert torch.allclose(a["loss"], a["entropy_term"] + a["ce"])
    # same seeded generator -> same draw
    c = sep_loss(logits, targets, generator=torch.Generator().manual_seed(7))
    d = sep_loss(logits, targets, generator=torch.Generator().manual_seed(7))
    assert c["loss"].item() == d["loss"].item()
    # λ = 0 is plain CE
    assert sep_loss(logits, targets, lam=0.0, sigma=0.3)["loss"].item() == pytest.approx(a["ce"].item(), abs=1e-7)


def test_sep_perturbation_is_zero_mean():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 5, generator=g, dtype=torch.float64) * 2
    targets = torch.randint(0, 5, (4,), generator=g)
    lam, sigma, draws = 0.1, 0.1, 4000
    exact = sep_loss(logits, targets, lam=lam, sigma=0.0)["loss"].item()
    gen = torch.Generator().manual_seed(3)
    losses = torch.tensor([sep_loss(logits, targets, lam=lam, sigma=sigma, generator=gen)["loss"].item() for _ in range(draws)])
    # δ enters linearly: loss - exact = (λσ/N) Σ z·log p with z ~ N(0, 1), so each draw is Gaussian with
    # std s = λσ·‖log p‖/N; the mean of `draws` draws has std s/√draws. 5 standard errors: a random seed
    # would fail with probability ~6e-7.
    log_p = F.log_softmax(logits, dim=1)
    s = lam * sigma * log_p.pow(2).sum().sqrt().item() / logits.shape[0]
    assert abs(losses.mean().item() - exact) < 5 * s / math.sqrt(draws)
    # the spread is the predicted one (sample std has relative error ~1/√(2·draws) ≈ 1.1%)
    assert losses.std().item() == pytest.approx(s, rel=0.1)


def test_sep_detach_p_keeps_value_changes_gradient():
    logits = torch.tensor([[3.0, 0.0, -1.0]], dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0])
    grads, values = [], []
    for detach in (False, True):
        logits.grad = None
        out = sep_loss(logits, targets, lam=1.0, sigma=0.0, detach_p=detach)
        out["entropy_term"].backward()
        grads.append(logits.grad.clone())
        values.append(out["entropy_term"].item())
    assert values[0] == pytest.approx(values[1], abs=1e-12)
    assert not torch.allclose(grads[0], grads[1])
    # the default (p not detached) is the exact gradient of -λ·H
    logits.grad = None
    sep_loss(logits, targets, lam=1.0, sigma=0.0)["entropy_term"].backward()
    (exact,) = torch.autograd.grad(-entropy(logits).mean(), logits)
    assert torch.allclose(logits.grad, exact) and torch.allclose(grads[0], exact)


def test_sep_rejects_negative_hyperparameters():
    with pytest.raises(ValueError, match="sigma"):
        sep_loss(torch.zeros(1, 2), torch.tensor([0]), sigma=-0.1)
    with pytest.raises(ValueError, match="lam"):
        sep_loss(torch.zeros(1, 2), torch.tensor([0]), lam=-1.0)


# ---------------------------------------------------------------- PAR
def par_example():
    # p_pos rows [0.25, 0.5, 0.25], [0.5, 0.25, 0.25]; p_neg rows [0.25, 0.25, 0.5], [1/8, 2/8, 5/8]
    logits_pos = logits_of([1, 2, 1], [2, 1, 1])
    logits_neg = logits_of([1, 1, 2], [1, 2, 5])
    cos_pos = torch.tensor([[0.1, 0.3, 0.2], [0.2, 0.1, 0.4]], dtype=torch.float64)
    cos_neg = torch.tensor([[0.0, 0.5, 0.1], [0.3, 0.2, 0.1]], dtype=torch.float64)
    targets = torch.tensor([1, 2])
    return logits_pos, logits_neg, cos_pos, cos_neg, targets


def test_par_hand_computed_values():
    out = par_losses(*par_example(), mu_pos=0.5, mu_neg=0.5)
    # s_pos = [0.5, 0.25], s_neg = [0.25, 0.625]
    # A_pos = mean(max(0, .5 - .5), max(0, .5 - .25)) = mean(0, 0.25) = 0.125
    assert out["a_pos"].item() == pytest.approx(0.125, abs=1e-12)
    # A_neg = mean(max(0, .25 - .5 + .5), max(0, .625 - .25 + .5)) = mean(0.25, 0.875) = 0.5625
    assert out["a_neg"].item() == pytest.approx(0.5625, abs=1e-12)
    # MC: cos_neg - cos_pos at the labels = 0.5 - 0.3 = 0.2 and 0.1 - 0.4 = -0.3 -> mean(0.2, 0) = 0.1
    assert out["mc"].item() == pytest.approx(0.1, abs=1e-12)
    sep = {"loss": torch.tensor(2.0, dtype=torch.float64)}
    assert dpsep_total(sep, out, alpha=0.4, beta=3.0).item() == pytest.approx(2.0 + 0.125 + 0.4 * 0.5625 + 3 * 0.1)


def test_par_is_exactly_zero_when_margins_hold_and_has_gradient_when_violated():
    # s_pos = 0.8 >= μ_pos, s_pos - s_neg = 0.7 >= μ_neg, cos_pos > cos_neg at the labels.
    logits_pos = logits_of([8, 1, 1], [1, 1, 8]).requires_grad_()
    logits_neg = logits_of([1, 8, 1], [1, 8, 1]).requires_grad_()
    cos_pos = torch.tensor([[0.3, 0.1, 0.1], [0.1, 0.1, 0.3]], dtype=torch.float64)
    cos_neg = torch.tensor([[0.2, 0.9, 0.1], [0.1, 0.9, 0.25]], dtype=torch.float64)
    out = par_losses(logits_pos, logits_neg, cos_pos, cos_neg, torch.tensor([0, 2]))
    assert all(out[k].item() == 0.0 for k in ("a_pos", "a_neg", "mc"))

    logits_pos, logits_neg, cos_pos, cos_neg, targets = par_example()
    logits_pos.requires_grad_()
    logits_neg.requires_grad_()
    par_losses(logits_pos, logits_neg, cos_pos, cos_neg, targets)["a_neg"].backward()
    assert logits_pos.grad.abs().sum() > 0 and logits_neg.grad.abs().sum() > 0


def test_par_rejects_mismatched_shapes():
    logits_pos, logits_neg, cos_pos, cos_neg, targets = par_example()
    with pytest.raises(ValueError, match="cos_neg"):
        par_losses(logits_pos, logits_neg, cos_pos, cos_neg[:, :2], targets)


# ---------------------------------------------------------------- α schedule
def test_alpha_schedule_endpoints_and_range():
    assert alpha_schedule(1, 50, alpha_min=0.1) == pytest.approx(0.1 + 0.9 / 50)
    assert alpha_schedule(50, 50, alpha_min=0.1) == 1.0
    assert alpha_schedule(7, 7, alpha_min=0.3) == 1.0
    values = [alpha_schedule(e, 10) for e in range(1, 11)]
    assert all(b > a for a, b in zip(values, values[1:]))
    for bad in (0, 51, -1):
        with pytest.raises(ValueError, match="counted from 1"):
            alpha_schedule(bad, 50)


# ---------------------------------------------------------------- derangements
@pytest.mark.parametrize("n", [2, 3, 4, 7, 100])
def test_random_derangement_never_has_a_fixed_point(n):
    g = torch.Generator().manual_seed(n)
    draws = torch.stack([random_derangement(n, g) for _ in range(300)])
    assert (draws != torch.arange(n)).all()
    assert (draws.sort(dim=1).values == torch.arange(n)).all()  # each is a permutation
    assert draws.dtype == torch.long


def test_random_derangement_is_uniform_over_derangements():
    # n = 4 has 9 derangements; 9000 draws -> each count ~ Binomial(9000, 1/9), std ≈ 29.8; allow 5 std.
    g = torch.Generator().manual_seed(0)
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(9000):
        key = tuple(random_derangement(4, g).tolist())
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 9
    assert all(abs(c - 1000) < 150 for c in counts.values())


def test_derangement_input_validation():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="n >= 2"):
        random_derangement(1, g)
    with pytest.raises(ValueError, match="n >= 2"):
        DerangementSampler(1)
    assert shift_derangement(5, 2).tolist() == [2, 3, 4, 0, 1]
    for bad_k in (0, 5, -1):
        with pytest.raises(ValueError, match=r"k must be in \[1, 4\]"):
            shift_derangement(5, bad_k)
    with pytest.raises(ValueError, match="resample"):
        DerangementSampler(5, resample="batch")
    with pytest.raises(ValueError, match="mode"):
        DerangementSampler(5, mode="cyclic")
    with pytest.raises(ValueError, match="k must be"):
        DerangementSampler(5, mode="shift", shift=5)


def _sequence(sampler: DerangementSampler, steps: int) -> list[list[int]]:
    out = []
    for _ in range(steps):
        sampler.on_step()
        out.append(sampler.current.tolist())
    return out


def test_sampler_is_repeatable_per_seed_and_seeds_differ():
    a = _sequence(DerangementSampler(10, seed=1), 5)
    b = _sequence(DerangementSampler(10, seed=1), 5)
    c = _sequence(DerangementSampler(10, seed=2), 5)
    assert a == b
    assert a != c


def test_sampler_resamples_at_configured_frequency():
    step = DerangementSampler(10, resample="step", seed=0)
    before = step.current.clone()
    step.on_epoch()
    assert torch.equal(step.current, before)  # epoch boundary is not a step
    for _ in range(5):
        step.on_step()
        assert not torch.equal(step.current, before)
        before = step.current.clone()

    epoch = DerangementSampler(10, resample="epoch", seed=0)
    before = epoch.current.clone()
    for _ in range(5):
        epoch.on_step()
    assert torch.equal(epoch.current, before)
    epoch.on_epoch()
    assert not torch.equal(epoch.current, before)

    never = DerangementSampler(10, resample="never", seed=0)
    before = never.current.clone()
    for _ in range(3):
        never.on_step()
        never.on_epoch()
    assert torch.equal(never.current, before)

    shift = DerangementSampler(6, mode="shift", shift=2)
    shift.on_step()
    shift.on_epoch()
    assert shift.current.tolist() == [2, 3, 4, 5, 0, 1]


def test_sampler_state_round_trip_continues_the_sequence(tmp_path):
    original = DerangementSampler(12, seed=5)
    _sequence(original, 3)
    path = tmp_path / "sampler.pt"
    torch.save(original.state_dict(), path)
    expected_current = original.current.tolist()
    expected = _sequence(original, 4)

    resumed = DerangementSampler(12, seed=99)  # a fresh sampler, different position in another stream
    resumed.load_state_dict(torch.load(path, weights_only=True))
    assert resumed.current.tolist() == expected_current
    assert _sequence(resumed, 4) == expected

    with pytest.raises(ValueError, match="n=12"):
        DerangementSampler(13).load_state_dict(original.state_dict())


# ---------------------------------------------------------------- TANGO pieces
def test_soft_cross_entropy_equals_ce_for_one_hot_targets():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(5, 6, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 6, (5,), generator=g)
    one_hot = F.one_hot(targets, 6).to(logits.dtype)
    ce = F.cross_entropy(logits, targets)
    assert torch.allclose(soft_cross_entropy(logits, one_hot), ce)
    assert torch.allclose(soft_cross_entropy(F.log_softmax(logits, 1), one_hot, from_log_probs=True), ce)
    soft = torch.softmax(torch.randn(5, 6, generator=g, dtype=torch.float64), 1)
    assert torch.allclose(soft_cross_entropy(logits, soft), F.cross_entropy(logits, soft))
    # a class ruled out (log p = -inf) with zero target weight leaves the loss finite
    log_p = torch.tensor([[0.0, -math.inf]], dtype=torch.float64)
    assert soft_cross_entropy(log_p, torch.tensor([[1.0, 0.0]], dtype=torch.float64), from_log_probs=True).item() == 0.0


def test_mixup_is_reproducible_and_keeps_targets_normalised():
    data = torch.Generator().manual_seed(5)
    x = torch.randn(8, 3, 4, 4, generator=data)
    targets = torch.softmax(torch.randn(8, 10, generator=data), 1)
    a = mixup(x, targets, alpha=1.0, generator=torch.Generator().manual_seed(11))
    b = mixup(x, targets, alpha=1.0, generator=torch.Generator().manual_seed(11))
    c = mixup(x, targets, alpha=1.0, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2] and torch.equal(a[3], b[3])
    assert a[2] != c[2]
    x_mix, t_mix, lam, perm = a
    assert 0.0 <= lam <= 1.0
    assert sorted(perm.tolist()) == list(range(8))
    assert torch.allclose(x_mix, lam * x + (1 - lam) * x[perm])
    assert torch.allclose(t_mix.sum(1), torch.ones(8), atol=1e-6)
    assert (t_mix >= 0).all()
    x0, t0, lam0, perm0 = mixup(x, targets, alpha=0.0)
    assert lam0 == 1.0 and torch.equal(x0, x) and perm0.tolist() == list(range(8))


def test_mixup_lambda_follows_beta_distribution():
    # Beta(0.5, 0.5): mean 1/2, variance α²/((2α)²(2α+1)) = 1/8. 3000 draws: the sample mean has std
    # ≈ 0.0065 and the sample variance std ≈ 0.0016; tolerances are ~5 of those.
    g = torch.Generator().manual_seed(6)
    x, t = torch.zeros(4, 2), torch.full((4, 2), 0.5)
    lams = torch.tensor([mixup(x, t, alpha=0.5, generator=g)[2] for _ in range(3000)], dtype=torch.float64)
    assert lams.mean().item() == pytest.approx(0.5, abs=0.03)
    assert lams.var().item() == pytest.approx(0.125, abs=0.008)


def test_masked_cross_entropy_mean_over_selected_rows():
    g = torch.Generator().manual_seed(8)
    log_probs = F.log_softmax(torch.randn(6, 4, generator=g, dtype=torch.float64), 1)
    targets = torch.randint(0, 4, (6,), generator=g)
    mask = torch.tensor([True, False, True, True, False, False])
    expected = F.nll_loss(log_probs[mask], targets[mask])
    assert torch.allclose(masked_cross_entropy(log_probs, targets, mask), expected)


def test_masked_cross_entropy_empty_mask_is_zero_and_backpropagates():
    logits = torch.randn(4, 3, dtype=torch.float64).requires_grad_()
    log_probs = F.log_softmax(logits, 1)
    # an excluded row with an infinite loss must not leak NaN either
    log_probs = torch.cat([log_probs[:3], torch.tensor([[-math.inf, 0.0, 0.0]], dtype=torch.float64)])
    targets = torch.tensor([0, 1, 2, 0])
    loss = masked_cross_entropy(log_probs, targets, torch.zeros(4, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()
    # and with the finite rows selected the infinite one still stays out
    logits.grad = None
    log_probs = torch.cat([F.log_softmax(logits, 1)[:3], log_probs[3:].detach()])
    loss = masked_cross_entropy(log_probs, targets, torch.tensor([True, True, False, False]))
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_low_precision_logits_are_computed_in_float32():
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(6, 5, generator=g) * 4
    targets = torch.randint(0, 5, (6,), generator=g)
    half = logits.to(torch.bfloat16)
    for fn in (lambda z: gce_loss(z, targets), lambda z: sep_loss(z, targets, sigma=0.0)["loss"],
               lambda z: soft_cross_entropy(z, F.one_hot(targets, 5).float())):
        out = fn(half)
        assert out.dtype == torch.float32
        assert out.item() == pytest.approx(fn(half.float()).item(), abs=1e-6)
    assert sep_loss(half, targets, generator=torch.Generator().manual_seed(0))["loss"].dtype == torch.float32


# ---------------------------------------------------------------- readings of the garbled parts (switches)
def test_sep_sign_printed_negates_the_term_and_lowers_entropy_where_intent_raises_it():
    logits = torch.tensor([[6.0, 0.5, -1.0], [0.0, 4.0, 0.0]], dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 1])
    h = entropy(logits.detach())
    steps = {}
    for sign in ("intent", "printed"):
        logits.grad = None
        out = sep_loss(logits, targets, lam=0.5, sigma=0.0, sign=sign)
        # σ = 0: intent = −λ·mean H (minimising raises H); printed = +λ·mean H (minimising lowers H)
        expected = -0.5 * h.mean().item() if sign == "intent" else 0.5 * h.mean().item()
        assert out["entropy_term"].item() == pytest.approx(expected, rel=1e-12)
        assert out["ce"].item() == pytest.approx(F.cross_entropy(logits.detach(), targets).item(), rel=1e-12)
        out["entropy_term"].backward()
        steps[sign] = entropy(logits.detach() - logits.grad)
    assert (steps["intent"] > h * 1.005).all()
    assert (steps["printed"] < h * 0.995).all()
    with pytest.raises(ValueError, match="model.sep_sign"):
        sep_loss(logits, targets, sign="inverted")


def test_par_gate_weights_hand_computed():
    logits_pos, logits_neg, _, _, targets = par_example()
    # s_pos = [0.5, 0.25], s_neg = [0.25, 0.625]
    # μ_pos 0.4, μ_neg 0.2: row 0 holds both hinges (0.5 ≥ 0.4, 0.25 ≥ 0.2); row 1 fails A_pos (0.25 < 0.4)
    w = par_gate_weights(logits_pos, logits_neg, targets, mu_pos=0.4, mu_neg=0.2)
    assert w.tolist() == [1.0, 0.0]
    # μ_neg 0.3: row 0 now fails the polarity margin (0.25 < 0.3)
    assert par_gate_weights(logits_pos, logits_neg, targets, mu_pos=0.4, mu_neg=0.3).tolist() == [0.0, 0.0]
    # μ_pos 0.2, μ_neg −0.5: row 1's margin is −0.375 ≥ −0.5 and 0.25 ≥ 0.2: both open
    assert par_gate_weights(logits_pos, logits_neg, targets, mu_pos=0.2, mu_neg=-0.5).tolist() == [1.0, 1.0]
    lp = logits_pos.clone().requires_grad_()
    assert not par_gate_weights(lp, logits_neg, targets).requires_grad  # detached weights
    with pytest.raises(ValueError, match="logits_neg"):
        par_gate_weights(logits_pos, logits_neg[:, :2], targets)


def test_gate_zeroes_ce_exactly_for_samples_whose_hinges_fail():
    logits_pos, logits_neg, _, _, targets = par_example()
    logits_pos = logits_pos.clone().requires_grad_()
    w = par_gate_weights(logits_pos, logits_neg, targets, mu_pos=0.4, mu_neg=0.2)  # [1, 0]
    out = sep_loss(logits_pos, targets, lam=0.0, sigma=0.0, ce_weights=w)
    ce_rows = F.cross_entropy(logits_pos.detach(), targets, reduction="none")
    # Σ w·CE / N with N = 2: row 0's CE (−log 0.5) over 2; row 1 contributes exactly nothing
    assert out["ce"].item() == pytest.approx(ce_rows[0].item() / 2, rel=1e-12)
    assert out["ce"].item() == pytest.approx(math.log(2) / 2, rel=1e-12)
    out["loss"].backward()
    assert torch.equal(logits_pos.grad[1], torch.zeros(3, dtype=torch.float64))
    assert logits_pos.grad[0].abs().sum() > 0
    # an infinite CE on a gated-out row cannot turn the loss into NaN
    inf_row = torch.tensor([[0.0, -math.inf, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    finite = sep_loss(inf_row, torch.tensor([1, 0]), lam=0.0, ce_weights=torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert finite["ce"].item() == pytest.approx(math.log(3) / 2, rel=1e-12)
    # all weights 1 = plain CE
    ones = sep_loss(logits_pos.detach(), targets, lam=0.0, ce_weights=torch.ones(2, dtype=torch.float64))
    assert ones["ce"].item() == pytest.approx(ce_rows.mean().item(), rel=1e-12)
    with pytest.raises(ValueError, match="ce_weights"):
        sep_loss(logits_pos.detach(), targets, ce_weights=torch.ones(3))


def test_a_pos_reduction_sum_drops_the_one_over_n():
    example = par_example()
    mean = par_losses(*example, mu_pos=0.5, mu_neg=0.5)
    total = par_losses(*example, mu_pos=0.5, mu_neg=0.5, a_pos_reduction="sum")
    # hinges max(0, .5 − .5) = 0 and max(0, .5 − .25) = 0.25: mean 0.125, sum 0.25
    assert mean["a_pos"].item() == pytest.approx(0.125, abs=1e-12)
    assert total["a_pos"].item() == pytest.approx(0.25, abs=1e-12)
    # the other terms keep their 1/N
    assert total["a_neg"].item() == mean["a_neg"].item() and total["mc"].item() == mean["mc"].item()
    with pytest.raises(ValueError, match="model.a_pos_reduction"):
        par_losses(*example, a_pos_reduction="max")


def test_mixup_keep_larger_is_max_of_lambda_and_its_complement():
    data = torch.Generator().manual_seed(5)
    x = torch.randn(6, 3, generator=data)
    targets = torch.softmax(torch.randn(6, 4, generator=data), 1)
    for seed in range(20):
        plain = mixup(x, targets, alpha=4.0, generator=torch.Generator().manual_seed(seed))
        larger = mixup(x, targets, alpha=4.0, generator=torch.Generator().manual_seed(seed), keep_larger=True)
        assert larger[2] == pytest.approx(max(plain[2], 1 - plain[2]), abs=1e-15)
        assert larger[2] >= 0.5 and torch.equal(larger[3], plain[3])
        assert torch.allclose(larger[0], larger[2] * x + (1 - larger[2]) * x[larger[3]])
