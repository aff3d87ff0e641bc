"""DP-SEP's Polarity Alignment Reweighting objectives, total loss and α schedule (docs/methods.md, DP-SEP)."""
from __future__ import annotations

import torch
from torch import Tensor

from noisy_prompt.losses.gce import check_logits_targets, upcast_low_precision

A_POS_REDUCTIONS = ("mean", "sum")
PAR_MODES = ("additive", "gate")


def par_gate_weights(
    logits_pos: Tensor, logits_neg: Tensor, targets: Tensor, mu_pos: float = 0.5, mu_neg: float = 0.5
) -> Tensor:
    """Detached per-sample CE weights of `par_mode: gate` (docs/methods.md, DP-SEP, "Readings"), shape (N,).

    w_n = 1 where both PAR hinges hold, s_pos_n ≥ μ_pos and s_pos_n − s_neg_n ≥ μ_neg (s = softmax
    probability at the given label, positive / negative branch), else 0: PAR read as a *reweighting*
    of CE, so a sample whose prompts disagree with its label stops pulling the prompt towards it.
    """
    check_logits_targets(logits_pos, targets, name="logits_pos")
    if tuple(logits_neg.shape) != tuple(logits_pos.shape):
        raise ValueError(
            f"par_gate_weights: logits_neg must have the shape of logits_pos {tuple(logits_pos.shape)}, "
            f"got {tuple(logits_neg.shape)}"
        )
    with torch.no_grad():
        idx = targets.long().unsqueeze(1)
        s_pos = upcast_low_precision(logits_pos).softmax(dim=1).gather(1, idx).squeeze(1)
        s_neg = upcast_low_precision(logits_neg).softmax(dim=1).gather(1, idx).squeeze(1)
        return ((s_pos >= mu_pos) & (s_pos - s_neg >= mu_neg)).to(s_pos.dtype)


def par_losses(
    logits_pos: Tensor,
    logits_neg: Tensor,
    cos_pos: Tensor,
    cos_neg: Tensor,
    targets: Tensor,
    mu_pos: float = 0.5,
    mu_neg: float = 0.5,
    a_pos_reduction: str = "mean",
) -> dict[str, Tensor]:
    """A_pos, A_neg and MC, each a batch mean of a hinge (all N×C inputs, targets N class ids).

    With s_pos = p_pos[n, y_n], s_neg = p_neg[n, y_n] (p = softmax of the logits):
      a_pos = mean max(0, μ_pos − s_pos)
      a_neg = mean max(0, s_neg − s_pos + μ_neg)
      mc    = mean max(0, cos_neg[n, y_n] − cos_pos[n, y_n])   (raw cosines, spec [choice])

    `a_pos_reduction`: "mean" (default, as eqs. 3–4) or "sum" (eq. 2 as printed, without 1/N), the
    switch `model.a_pos_reduction`.
    """
    if a_pos_reduction not in A_POS_REDUCTIONS:
        raise ValueError(
            f"par_losses: a_pos_reduction must be one of {A_POS_REDUCTIONS} (model.a_pos_reduction), "
            f"got {a_pos_reduction!r}"
        )
    check_logits_targets(logits_pos, targets, name="logits_pos")
    shape = tuple(logits_pos.shape)
    for name, t in (("logits_neg", logits_neg), ("cos_pos", cos_pos), ("cos_neg", cos_neg)):
        if tuple(t.shape) != shape:
            raise ValueError(
                f"par_losses: {name} must have the shape of logits_pos {shape}, got {tuple(t.shape)}"
            )
    idx = targets.long().unsqueeze(1)
    s_pos = upcast_low_precision(logits_pos).softmax(dim=1).gather(1, idx).squeeze(1)
    s_neg = upcast_low_precision(logits_neg).softmax(dim=1).gather(1, idx).squeeze(1)
    c_pos = cos_pos.gather(1, idx).squeeze(1)
    c_neg = cos_neg.gather(1, idx).squeeze(1)
    a_pos = torch.relu(mu_pos - s_pos)
    return {
        "a_pos": a_pos.mean() if a_pos_reduction == "mean" else a_pos.sum(),
        "a_neg": torch.relu(s_neg - s_pos + mu_neg).mean(),
        "mc": torch.relu(c_neg - c_pos).mean(),
    }


def dpsep_total(sep: dict[str, Tensor], par: dict[str, Tensor], alpha: float, beta: float) -> Tensor:
    """L = L_SEP + A_pos + α·A_neg + β·MC, from the dicts of `sep_loss` and `par_losses`."""
    return sep["loss"] + par["a_pos"] + alpha * par["a_neg"] + beta * par["mc"]


def alpha_schedule(epoch: int, max_epochs: int, alpha_min: float = 0.1) -> float:
    """α_e = α_min + (1 − α_min)·e/E with e counted from 1 (Lightning's current_epoch + 1).

    Written as 1 − (1 − α_min)·(E − e)/E, the same value, so that α(E) is exactly 1.0.
    """
    if max_epochs < 1:
        raise ValueError(f"alpha_schedule: max_epochs must be >= 1, got {max_epochs}")
    if not 1 <= epoch <= max_epochs:
        raise ValueError(
            f"alpha_schedule: epoch must be in [1, {max_epochs}] (counted from 1), got {epoch}"
        )
    if not 0.0 <= alpha_min <= 1.0:
        raise ValueError(f"alpha_schedule: alpha_min must be in [0, 1], got {alpha_min}")
    return 1.0 - (1.0 - alpha_min) * (max_epochs - epoch) / max_epochs
