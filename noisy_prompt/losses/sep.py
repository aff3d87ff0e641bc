"""DP-SEP's Stochastic Entropy Perturbation loss over the positive branch (docs/methods.md, DP-SEP SEP loss)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from noisy_prompt.losses.gce import check_logits_targets, upcast_low_precision

SEP_SIGNS = ("intent", "printed")


def sep_loss(
    logits: Tensor,
    targets: Tensor,
    lam: float = 0.1,
    sigma: float = 0.1,
    generator: torch.Generator | None = None,
    detach_p: bool = False,
    sign: str = "intent",
    ce_weights: Tensor | None = None,
) -> dict[str, Tensor]:
    """L_SEP = (λ/N) Σ_n Σ_c (p[n,c] + δ[n,c]) · log p[n,c] − (1/N) Σ_n log p[n, y_n].

    δ ~ N(0, σ²) is drawn fresh at every call, from `generator` when given (any device: the draw is
    moved to the logits' device) else torch's default RNG, in the compute dtype (the logits' dtype,
    float32 for float16/bfloat16 logits). Minimizing the first term with λ > 0
    raises the entropy of the prediction. `detach_p` stops the gradient through the p factor (the
    log p factor always carries it), the alternative reading of the paper.

    `sign` is the reading of the entropy term's sign (docs/methods.md, DP-SEP SEP loss): "intent" (default) is the
    formula above, whose minimisation raises entropy (the paper's stated intent); "printed" is the sign
    the paper prints, −(λ/N) Σ Σ (p + δ) log p = λ·H(p) + noise, whose minimisation lowers entropy
    (soft bootstrapping).

    `ce_weights` (N,), when given, weights each sample's CE term: ce = Σ_n w_n·CE_n / N (the batch size,
    not Σ w, so a closed gate removes a sample's share instead of re-spreading it). DP-SEP's
    `par_mode: gate` passes detached 0/1 weights from `par_gate_weights`; None = every weight 1.

    Returns `loss` (total), `entropy_term` (the λ-weighted signed perturbed term) and `ce`.
    With λ = 0 or σ = 0 no noise is drawn, so those presets do not consume random numbers.
    """
    if lam < 0:
        raise ValueError(f"sep_loss: lam must be >= 0, got lam={lam}")
    if sigma < 0:
        raise ValueError(f"sep_loss: sigma must be >= 0, got sigma={sigma}")
    if sign not in SEP_SIGNS:
        raise ValueError(f"sep_loss: sign must be one of {SEP_SIGNS} (model.sep_sign), got {sign!r}")
    check_logits_targets(logits, targets)

    log_p = F.log_softmax(upcast_low_precision(logits), dim=1)
    ce_n = -log_p.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    if ce_weights is None:
        ce = ce_n.mean()
    else:
        if ce_weights.shape != ce_n.shape:
            raise ValueError(f"sep_loss: ce_weights must have shape {tuple(ce_n.shape)} (one weight per sample), "
                             f"got {tuple(ce_weights.shape)}")
        # Weighted terms are replaced, not multiplied, where the weight is 0, so an infinite CE of a
        # gated-out sample cannot turn the batch loss into NaN.
        w = ce_weights.detach().to(ce_n.dtype)
        ce = torch.where(w != 0, w * ce_n, torch.zeros_like(ce_n)).sum() / ce_n.shape[0]
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
        signed = lam if sign == "intent" else -lam
        entropy_term = signed * (p * log_p).sum(dim=1).mean()
    return {"loss": entropy_term + ce, "entropy_term": entropy_term, "ce": ce}
