"""DP-SEP's Stochastic Entropy Perturbation loss over the positive branch (spec dpsep.md, SEP)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from noisy_prompt.losses.gce import check_logits_targets, upcast_low_precision


def sep_loss(
    logits: Tensor,
    targets: Tensor,
    lam: float = 0.1,
    sigma: float = 0.1,
    generator: torch.Generator | None = None,
    detach_p: bool = False,
) -> dict[str, Tensor]:
    """L_SEP = (λ/N) Σ_n Σ_c (p[n,c] + δ[n,c]) · log p[n,c] − (1/N) Σ_n log p[n, y_n].

    δ ~ N(0, σ²) is drawn fresh at every call, from `generator` when given (any device: the draw is
    moved to the logits' device) else torch's default RNG, in the compute dtype (the logits' dtype,
    float32 for float16/bfloat16 logits). Minimizing the first term with λ > 0
    raises the entropy of the prediction. `detach_p` stops the gradient through the p factor (the
    log p factor always carries it), the alternative reading of the paper.

    Returns `loss` (total), `entropy_term` (the λ-weighted perturbed negative entropy) and `ce`.
    With λ = 0 or σ = 0 no noise is drawn, so those presets do not consume random numbers.
    """
    if lam < 0:
        raise ValueError(f"sep_loss: lam must be >= 0, got lam={lam}")
    if sigma < 0:
        raise ValueError(f"sep_loss: sigma must be >= 0, got sigma={sigma}")
    check_logits_targets(logits, targets)

    log_p = F.log_softmax(upcast_low_precision(logits), dim=1)
    ce = -log_p.gather(1, targets.long().unsqueeze(1)).squeeze(1).mean()
    if lam == 0:
        entropy_term = torch.zeros((), device=logits.device, dtype=log_p.dtype)
    else:
        p = log_p.exp()
        if detach_p:
            p = p.detach()
        if sigma > 0:
            gen_device = generator.device if generator is not None else logits.device
            delta = torch.randn(logits.shape, generator=generator, device=gen_device, dtype=log_p.dtype)
            p = p + sigma * delta.to(logits.device)
        entropy_term = lam * (p * log_p).sum(dim=1).mean()
    return {"loss": entropy_term + ce, "entropy_term": entropy_term, "ce": ce}
