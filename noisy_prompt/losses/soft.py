"""Soft-label CE, Mixup and masked CE: the pieces of TANGO's training loss (docs/methods.md, TANGO training step)."""
from __future__ import annotations

import scipy.special
import torch
import torch.nn.functional as F
from torch import Tensor

from noisy_prompt.losses.gce import check_logits_targets, upcast_low_precision


def soft_cross_entropy(
    logits_or_logprobs: Tensor, soft_targets: Tensor, from_log_probs: bool = False
) -> Tensor:
    """Mean over the batch of −Σ_c t[n,c]·log p[n,c].

    `from_log_probs=True` takes log-probabilities as given (TANGO's TAC yields them directly);
    otherwise log_softmax is applied. A zero target weight contributes exactly 0 even where
    log p = −inf, so a class the model rules out cannot turn the loss into NaN.
    """
    if logits_or_logprobs.dim() != 2 or tuple(soft_targets.shape) != tuple(logits_or_logprobs.shape):
        raise ValueError(
            "soft_cross_entropy: expected N×C inputs and soft_targets of the same shape, got "
            f"{tuple(logits_or_logprobs.shape)} and {tuple(soft_targets.shape)}"
        )
    x = upcast_low_precision(logits_or_logprobs)
    log_p = x if from_log_probs else F.log_softmax(x, dim=1)
    weighted = torch.where(soft_targets != 0, soft_targets * log_p, torch.zeros_like(log_p))
    return -weighted.sum(dim=1).mean()


def mixup(
    x: Tensor,
    targets: Tensor,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
    keep_larger: bool = False,
) -> tuple[Tensor, Tensor, float, Tensor]:
    """Mix each sample with a random other one of the batch: x' = λ·x + (1 − λ)·x[perm].

    `targets` are soft labels N×C (mixed the same way, so rows summing to 1 still do). λ ~ Beta(α, α)
    and the permutation both come from `generator` (else torch's default RNG), so a seeded generator
    makes the mix reproducible. λ is drawn by inverting the Beta CDF at one torch uniform, because
    torch's Beta sampler accepts no generator. α = 0 means no mixing (λ = 1, identity permutation).
    `keep_larger=True` takes λ = max(λ, 1 − λ), so each mixed sample stays closer to its own image
    (SSR's Mixup, used with α = 4: TANGO's `mixup: ssr` reading).
    Returns (x_mix, targets_mix, λ, perm).
    """
    if alpha < 0:
        raise ValueError(f"mixup: alpha must be >= 0 (0 disables mixing), got alpha={alpha}")
    if x.dim() < 1 or targets.dim() != 2 or targets.shape[0] != x.shape[0]:
        raise ValueError(
            f"mixup: expected x with a batch dimension and soft targets N×C with the same N, got "
            f"x {tuple(x.shape)} and targets {tuple(targets.shape)}"
        )
    if not targets.is_floating_point():
        raise ValueError(
            f"mixup: targets must be soft labels (floating point N×C), got dtype {targets.dtype}"
        )
    n = x.shape[0]
    if alpha == 0:
        return x, targets, 1.0, torch.arange(n, device=x.device)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = float(torch.rand((), generator=generator, device=gen_device, dtype=torch.float64))
    lam = float(scipy.special.betaincinv(alpha, alpha, u))
    if keep_larger:
        lam = max(lam, 1.0 - lam)
    perm = torch.randperm(n, generator=generator, device=gen_device).to(x.device)
    x_mix = lam * x + (1.0 - lam) * x[perm]
    targets_mix = lam * targets + (1.0 - lam) * targets[perm]
    return x_mix, targets_mix, lam, perm


def masked_cross_entropy(log_probs: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Mean CE over the rows where `mask` is True; exactly 0 (with a zero gradient) when none is.

    Takes log-probabilities (TANGO's TAC output). Masked-out rows are replaced, not multiplied by
    0, so an infinite loss on an excluded row cannot leak NaN; no host sync is needed.
    """
    check_logits_targets(log_probs, targets, name="log_probs")
    if mask.dim() != 1 or mask.shape[0] != log_probs.shape[0]:
        raise ValueError(
            f"masked_cross_entropy: mask must be 1-D with N={log_probs.shape[0]} entries, "
            f"got shape {tuple(mask.shape)}"
        )
    mask = mask.to(dtype=torch.bool, device=log_probs.device)
    nll = -upcast_low_precision(log_probs).gather(1, targets.long().unsqueeze(1)).squeeze(1)
    nll = torch.where(mask, nll, torch.zeros_like(nll))
    return nll.sum() / mask.sum().clamp_min(1).to(nll.dtype)
