"""Generalized cross-entropy (Zhang & Sabuncu, 2018), the loss PTNL uses instead of CE."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_logits_targets(logits: Tensor, targets: Tensor, *, name: str = "logits") -> None:
    """Raise a ValueError naming the argument when `logits` is not N×C or `targets` not N class ids.

    The range of the ids is checked only on CPU: on an accelerator the check would force a device
    sync every step, and `gather`/`cross_entropy` assert on out-of-range ids there anyway.
    """
    if logits.dim() != 2:
        raise ValueError(f"{name} must be 2-D (batch N × classes C), got shape {tuple(logits.shape)}")
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"targets must be 1-D with N={logits.shape[0]} entries to match {name}, "
            f"got shape {tuple(targets.shape)}"
        )
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"targets must hold integer class ids, got dtype {targets.dtype}")
    if targets.device.type == "cpu" and targets.numel() > 0:
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= logits.shape[1]:
            raise ValueError(
                f"targets must lie in [0, {logits.shape[1] - 1}] (C={logits.shape[1]}), got range [{lo}, {hi}]"
            )


def upcast_low_precision(t: Tensor) -> Tensor:
    """float16/bfloat16 → float32 (differentiably); other dtypes unchanged.

    CUDA autocast already runs softmax/log_softmax in float32, CPU autocast does not; a loss in
    bfloat16 keeps only ~3 significant digits, so the losses compute in float32 either way.
    """
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def gce_loss(logits: Tensor, targets: Tensor, q: float = 0.5) -> Tensor:
    """Mean over the batch of (1 − p_y^q)/q, with p = softmax(logits).

    q → 0 recovers CE, q = 1 gives 1 − p_y (MAE up to a factor); PTNL uses q = 0.5.
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"gce_loss: q must be in (0, 1], got q={q}")
    check_logits_targets(logits, targets)
    log_p = F.log_softmax(upcast_low_precision(logits), dim=1)
    log_p_y = log_p.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    # p_y^q through exp(q·log p_y): stays finite and differentiable when p_y underflows.
    return ((1.0 - torch.exp(q * log_p_y)) / q).mean()
