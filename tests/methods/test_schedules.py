"""methods/schedules.py alone: the per-epoch LR factor (Dassl's constant warm-up, then a cosine over
max_epochs that starts afresh after the warm-up) at the start, middle and end of training, against torch's
own CosineAnnealingLR, through `build_optimizer`'s LambdaLR as the optimiser sees it, and the bad inputs that
the configuration checks stop before they reach it."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from noisy_prompt.build import max_epochs_of
from noisy_prompt.errors import ConfigError
from noisy_prompt.methods.base import ClassifierModule, build_optimizer
from noisy_prompt.methods.schedules import warmup_cosine_factor

# DP-SEP's recipe (PTNL's): lr 0.002, cosine over 50 epochs, 1 warm-up epoch at a constant 1e-5.
LR, E, WARM, WARM_LR = 0.002, 50, 1, 1e-5


# ----------------------------------------------------------------------------------- no warm-up


def test_cosine_starts_at_one_halves_in_the_middle_and_reaches_zero_at_max_epochs():
    assert warmup_cosine_factor(0, 10, LR) == 1.0
    assert warmup_cosine_factor(5, 10, LR) == pytest.approx(0.5, abs=1e-15)
    assert warmup_cosine_factor(10, 10, LR) == pytest.approx(0.0, abs=1e-15)
    # a quarter and three quarters of the way: (1 + cos(pi/4)) / 2 and (1 - cos(pi/4)) / 2
    assert warmup_cosine_factor(25, 100, LR) == pytest.approx((1 + math.sqrt(0.5)) / 2, rel=1e-14)
    assert warmup_cosine_factor(75, 100, LR) == pytest.approx((1 - math.sqrt(0.5)) / 2, rel=1e-14)
    # the last epoch that trains (E - 1) still has a small positive LR
    assert 0.0 < warmup_cosine_factor(9, 10, LR) < 0.03


def test_factor_decreases_strictly_and_stays_in_zero_one():
    values = [warmup_cosine_factor(e, 20, LR) for e in range(21)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(b < a for a, b in zip(values, values[1:]))


def test_after_max_epochs_the_factor_stays_at_zero_where_a_periodic_cosine_would_rise():
    # torch's CosineAnnealingLR climbs back after T_max; this schedule clamps at the end (LR 0), so a run
    # longer than its schedule (the bug class of tests/test_task.py::test_trainer_max_epochs_drives_the_lr_schedule) is visible as LR 0, not as a
    # second cycle.
    assert [warmup_cosine_factor(e, 10, LR) for e in (10, 11, 15, 20, 100)] == [pytest.approx(0.0, abs=1e-15)] * 5


def test_equals_torch_cosine_annealing_over_max_epochs():
    # Dassl's scheduler is torch's CosineAnnealingLR(T_max=max_epoch, eta_min=0): same LR at every epoch.
    for max_epochs in (1, 2, 7, 50):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
        ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_epochs)
        for epoch in range(max_epochs + 1):
            assert warmup_cosine_factor(epoch, max_epochs, LR) * LR == pytest.approx(ref.get_last_lr()[0], abs=1e-12)
            opt.step()
            ref.step()


def test_the_base_lr_only_matters_during_warm_up():
    assert [warmup_cosine_factor(e, 10, 0.5) for e in range(11)] == [warmup_cosine_factor(e, 10, 3e-4)
                                                                   for e in range(11)]


# -------------------------------------------------------------------------------------- warm-up


def test_warm_up_epochs_run_at_the_constant_warmup_lr():
    for epoch in range(3):
        assert warmup_cosine_factor(epoch, E, LR, warmup_epochs=3, warmup_lr=WARM_LR) * LR == pytest.approx(WARM_LR)
    # warmup_lr 0 freezes the warm-up epochs (factor exactly 0)
    assert warmup_cosine_factor(0, E, LR, warmup_epochs=1, warmup_lr=0.0) == 0.0


def test_the_cosine_starts_afresh_after_the_warm_up():
    # Dassl's ConstantWarmupScheduler steps its successor from 0 after the warm-up: epoch w + t of a
    # warm-up run has the LR of epoch t of the same run without warm-up (start, middle, end).
    for warm in (1, 3):
        for t in (0, 1, E // 2, E - 1, E):
            assert warmup_cosine_factor(warm + t, E, LR, warm, WARM_LR) == warmup_cosine_factor(t, E, LR)
    assert warmup_cosine_factor(WARM, E, LR, WARM, WARM_LR) == 1.0  # the first epoch after warm-up: full LR
    assert warmup_cosine_factor(WARM + E // 2, E, LR, WARM, WARM_LR) == pytest.approx(0.5, abs=1e-15)
    # so the last epoch that trains (E - 1) is t = E - 1 - w of the cosine, not its end
    assert warmup_cosine_factor(E - 1, E, LR, WARM, WARM_LR) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * (E - 1 - WARM) / E)), rel=1e-14)


def test_the_optimiser_sees_the_recipe_lrs_through_build_optimizer():
    opt, sched = build_optimizer([torch.zeros(1, requires_grad=True)],
                                 {"lr": LR, "warmup_epochs": WARM, "warmup_lr": WARM_LR}, E)
    lrs = []
    for _ in range(E):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(WARM_LR)  # start: the warm-up epoch
    assert lrs[1] == pytest.approx(LR)  # first cosine epoch: the full LR
    assert lrs[1 + E // 2] == pytest.approx(LR / 2)  # middle of the cosine
    assert 0.0 < lrs[-1] < LR * 1e-2  # end: the last epoch trains at a small positive LR
    assert all(b < a for a, b in zip(lrs[1:], lrs[2:]))
    # build_optimizer's warm-up default is 1e-5 at 0 warm-up epochs: no warm-up at all
    opt, _ = build_optimizer([torch.zeros(1, requires_grad=True)], {"lr": LR}, E)
    assert opt.param_groups[0]["lr"] == pytest.approx(LR)


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("lr", 0, "a learning rate > 0"),  # the warm-up factor divides by it
    ("lr", -0.002, "a learning rate > 0"),
    ("warmup_epochs", -1, "an integer >= 0"),
    ("warmup_lr", -1e-5, "a number >= 0"),
    ("lr", "fast", "a learning rate > 0"),
])
def test_bad_schedule_keys_are_named_before_the_schedule_runs(key, value, expected):
    # warmup_cosine_factor itself does not check its arguments: the preflight's config check (which the
    # constructor of every method also runs) names the bad key, its value and what was expected.
    problems = ClassifierModule.config_problems({"optim": {key: value}})
    assert problems == [f"model.optim.{key}={value!r}: expected {expected}"]
    assert ClassifierModule.config_problems({"optim": {"lr": LR, "warmup_epochs": WARM, "warmup_lr": WARM_LR}}) == []


@pytest.mark.parametrize("value", [0, -3, 2.5, True, None, "50"])
def test_the_schedule_length_must_be_a_positive_integer(value):
    # max_epochs reaches the schedule only through max_epochs_of (the task and the preflight call it).
    with pytest.raises(ConfigError, match=r"trainer.max_epochs must be a positive integer, got .*model.max_epochs=<n>"):
        max_epochs_of(OmegaConf.create({"trainer": {"max_epochs": value}}))
