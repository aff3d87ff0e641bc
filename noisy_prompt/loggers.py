"""The run's experiment loggers: which one is W&B, and closing them all at the end of a job.

W&B is recognised by class name (Lightning's `WandbLogger` or a subclass), so asking never imports
wandb, and `wandb` itself is imported only to finish a W&B run: a run without W&B never loads it.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

log = logging.getLogger(__name__)


def is_wandb(lg: Any) -> bool:
    """True for Lightning's WandbLogger (or a subclass of it)."""
    return any(cls.__name__ == "WandbLogger" for cls in type(lg).__mro__)


def finish_loggers(loggers: Iterable[Any], ok: bool) -> None:
    """Close every logger, so jobs of a multirun never share a W&B run; never raises."""
    for lg in loggers:
        try:
            if is_wandb(lg):
                import wandb

                wandb.finish(exit_code=0 if ok else 1)
            else:
                lg.finalize("success" if ok else "failed")
        except Exception:  # cleanup must never mask the job's own outcome
            log.exception("closing logger %s failed", type(lg).__name__)
