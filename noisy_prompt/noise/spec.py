"""NoiseSpec: what a `conf/noise/*.yaml` file instantiates (`_target_: noisy_prompt.noise.NoiseSpec`).

A spec names one table cell's noise by itself: protocol, rate and the switches that distinguish the
papers' conventions. It validates what it can at construction (so a bad config fails before any data
is loaded) and the rest once the label vector / shot count is known.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from noisy_prompt.noise import protocols as P

PROTOCOLS = ("clean", "sym", "asym", "inst", "ptnl_fewshot", "pair", "real")
ASYM_VARIANTS = ("cyclic", "superclass")
FEWSHOT_CONSTRUCTING = ("ptnl_fewshot", "pair")


@dataclass(frozen=True)
class NoiseSpec:
    """One noise setting.

    protocol: clean | sym | asym | inst | ptnl_fewshot | pair | real (see docs/noise.md).
    rate: fraction in [0, 1); 0 for clean and real.
    exclude_true: sym only; True = new label among the C-1 other classes (DP-SEP / NLPrompt),
        False = among all C classes (DeFT / TANGO CIFAR-100).
    asym_variant: cyclic (y -> y+1 mod C) or superclass (next class within the CIFAR-100 superclass).
    pixel_scale: inst only; multiplies the raw 0..255 pixel features (1.0 = Xia / DeFT raw pixels).
    first_half_clean: ptnl_fewshot / pair; clean shots from the first half of each class pool (PTNL).
    replace_if_short: ptnl_fewshot / pair; sample with replacement where a class is too small
        (PTNL's code) instead of failing.
    """

    name: str
    protocol: str
    rate: float = 0.0
    exclude_true: bool = True
    asym_variant: str = "cyclic"
    pixel_scale: float = 1.0
    first_half_clean: bool = True
    replace_if_short: bool = False

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"noise '{self.name}': unknown protocol '{self.protocol}'; "
                             f"valid protocols: {', '.join(PROTOCOLS)}")
        try:
            rate = float(self.rate)
        except (TypeError, ValueError):
            raise ValueError(f"noise '{self.name}' (protocol '{self.protocol}'): rate must be a number, "
                             f"got {self.rate!r}") from None
        object.__setattr__(self, "rate", rate)
        if math.isnan(rate) or not 0.0 <= rate < 1.0:
            raise ValueError(f"noise '{self.name}' (protocol '{self.protocol}'): rate {rate} is outside [0, 1) "
                             "(rates are fractions, e.g. 0.4 for 40%)")
        if self.protocol in ("clean", "real") and rate != 0.0:
            raise ValueError(f"noise '{self.name}' (protocol '{self.protocol}'): rate {rate} must be 0; "
                             f"'{self.protocol}' adds no synthetic noise")
        if self.asym_variant not in ASYM_VARIANTS:
            raise ValueError(f"noise '{self.name}' (protocol '{self.protocol}', rate {rate}): unknown asym_variant "
                             f"'{self.asym_variant}'; valid: {', '.join(ASYM_VARIANTS)}")
        if self.protocol == "asym":
            P._check_asym_rate(self.asym_variant, rate)
        if not (self.pixel_scale > 0 and math.isfinite(self.pixel_scale)):
            raise ValueError(f"noise '{self.name}' (protocol '{self.protocol}', rate {rate}): pixel_scale must be "
                             f"a positive number, got {self.pixel_scale}")

    @property
    def is_fewshot_constructing(self) -> bool:
        """True where the protocol builds the few-shot set itself instead of corrupting a sampled one."""
        return self.protocol in FEWSHOT_CONSTRUCTING

    @property
    def needs_pixels(self) -> bool:
        """True where `apply` needs flattened 32x32 RGB pixel features."""
        return self.protocol == "inst" and self.rate > 0

    def apply(self, labels: Any, num_classes: int, seed: int, dataset_id: str,
              features: np.ndarray | None = None, superclass_of: Sequence[int] | None = None,
              clean_labels: Any | None = None) -> P.NoiseResult:
        """Noise a label vector (global protocols). `clean_labels` is read by `real` only."""
        proto = self.protocol
        if self.is_fewshot_constructing:
            raise ValueError(f"noise '{self.name}' (protocol '{proto}', rate {self.rate}) builds the few-shot "
                             "set itself: call build_fewshot on the train pool instead of apply")
        if proto == "clean":
            return P.clean_noise(labels, num_classes)
        if proto == "real":
            return P.real_noise(labels, num_classes, clean_labels=clean_labels)
        if proto == "sym":
            return P.sym_noise(labels, num_classes, self.rate, seed, dataset_id, exclude_true=self.exclude_true)
        if proto == "asym" and self.asym_variant == "cyclic":
            return P.asym_cyclic_noise(labels, num_classes, self.rate, seed, dataset_id)
        if proto == "asym":
            if superclass_of is None:
                raise ValueError(f"noise '{self.name}' (protocol 'asym' superclass, rate {self.rate}): needs a "
                                 "superclass map (superclass_of), which a dataset publishes through its reader "
                                 "(DatasetSplits.superclass_of; CIFAR-100's reader reads its coarse labels): "
                                 "this dataset publishes none")
            return P.asym_superclass_noise(labels, num_classes, self.rate, seed, dataset_id, superclass_of)
        if proto == "inst":
            if features is None and self.rate > 0:
                raise ValueError(f"noise '{self.name}' (protocol 'inst', rate {self.rate}): needs per-sample "
                                 "features (flattened 32x32 RGB pixels), none given")
            if features is None:
                return P.clean_noise(labels, num_classes)
            return P.inst_noise(labels, num_classes, self.rate, seed, dataset_id, features,
                                pixel_scale=self.pixel_scale)
        raise AssertionError(f"unhandled protocol {proto}")  # __post_init__ rejects unknown names

    def build_fewshot(self, pool_labels: Any, num_classes: int, shots: int, seed: int,
                      dataset_id: str) -> P.FewShotNoise:
        """Build the noisy K-shot set from the train pool (ptnl_fewshot, pair)."""
        if not self.is_fewshot_constructing:
            raise ValueError(f"noise '{self.name}' (protocol '{self.protocol}', rate {self.rate}) does not build "
                             "a few-shot set: sample the shots first, then call apply on their labels")
        return P.ptnl_fewshot(pool_labels, num_classes, shots, self.rate, seed, dataset_id,
                              first_half_clean=self.first_half_clean, pair=self.protocol == "pair",
                              replace_if_short=self.replace_if_short)
