"""Derangements π (π(i) ≠ i) that pair each class with a wrong class for DP-SEP's negative prompts."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

REORDER_MODES = ("random", "shift")
RESAMPLE_MODES = ("step", "epoch", "never")


def _check_n(n: int) -> None:
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2 classes, got n={n}")


def random_derangement(n: int, generator: torch.Generator) -> Tensor:
    """A uniformly random permutation of range(n) without fixed point (CPU LongTensor).

    Rejection of uniform permutations: every derangement is equally likely to be accepted, and
    about a fraction 1/e of permutations are derangements, so ~e draws are needed on average.
    """
    _check_n(n)
    identity = torch.arange(n)
    while True:
        perm = torch.randperm(n, generator=generator, device=generator.device).cpu()
        if bool((perm != identity).all()):
            return perm


def shift_derangement(n: int, k: int) -> Tensor:
    """π(i) = (i + k) mod n, with k in [1, n − 1]."""
    _check_n(n)
    if not 1 <= k <= n - 1:
        raise ValueError(f"shift_derangement: k must be in [1, {n - 1}] for n={n}, got k={k}")
    return (torch.arange(n) + k) % n


class DerangementSampler:
    """Holds the current π and redraws it on the configured event ('step', 'epoch' or 'never').

    The generator is seeded with `seed` (pass the run seed), so the sequence of π is repeatable;
    `state_dict`/`load_state_dict` carry the generator state, so a resumed run continues the same
    sequence (`resample` and `seed` stay as configured; only the position in the sequence is
    restored). Mode 'shift' is the fixed π(i) = (i + shift) mod n: it has nothing random to redraw,
    so on_step/on_epoch leave it unchanged whatever `resample` says.
    """

    def __init__(self, n: int, mode: str = "random", resample: str = "step", seed: int = 0, shift: int = 1):
        _check_n(n)
        if mode not in REORDER_MODES:
            raise ValueError(f"DerangementSampler: mode must be one of {REORDER_MODES}, got {mode!r}")
        if resample not in RESAMPLE_MODES:
            raise ValueError(
                f"DerangementSampler: resample must be one of {RESAMPLE_MODES}, got {resample!r}"
            )
        self.n, self.mode, self.resample, self.seed, self.shift = n, mode, resample, int(seed), int(shift)
        self._generator = torch.Generator().manual_seed(self.seed)
        if mode == "shift":
            self._current = shift_derangement(n, self.shift)
        else:
            self._current = random_derangement(n, self._generator)

    @property
    def current(self) -> Tensor:
        """The current π as a CPU LongTensor: position i of the negative prompts names class π(i)."""
        return self._current

    def _redraw(self) -> None:
        if self.mode == "random":
            self._current = random_derangement(self.n, self._generator)

    def on_step(self) -> None:
        """Call after every optimizer step."""
        if self.resample == "step":
            self._redraw()

    def on_epoch(self) -> None:
        """Call at the end (or start of the next) of every epoch."""
        if self.resample == "epoch":
            self._redraw()

    def state_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "mode": self.mode,
            "resample": self.resample,
            "seed": self.seed,
            "shift": self.shift,
            "generator_state": self._generator.get_state(),
            "current": self._current.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("n", "mode", "shift"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"DerangementSampler.load_state_dict: saved {key}={state.get(key)!r} does not match "
                    f"this sampler's {key}={getattr(self, key)!r}"
                )
        current = torch.as_tensor(state["current"], dtype=torch.long).clone()
        if current.shape != (self.n,):
            raise ValueError(
                f"DerangementSampler.load_state_dict: saved 'current' has shape {tuple(current.shape)}, "
                f"expected ({self.n},)"
            )
        self._generator.set_state(state["generator_state"])
        self._current = current
