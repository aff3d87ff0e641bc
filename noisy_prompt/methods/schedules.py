"""Learning-rate schedules as epoch -> factor functions (Dassl's constant warm-up + cosine)."""
from __future__ import annotations

import math


def warmup_cosine_factor(epoch: int, max_epochs: int, base_lr: float, warmup_epochs: int = 0, warmup_lr: float = 0.0) -> float:
    """LR multiplier at 0-based `epoch`: constant `warmup_lr` for the warm-up epochs, then a cosine over
    `max_epochs` that starts afresh after warm-up (as Dassl's ConstantWarmupScheduler wraps its successor)."""
    if epoch < warmup_epochs:
        return warmup_lr / base_lr
    t = epoch - warmup_epochs
    return 0.5 * (1.0 + math.cos(math.pi * min(t, max_epochs) / max(1, max_epochs)))
