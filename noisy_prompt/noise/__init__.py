"""Label-noise protocols (docs/noise.md) and the NoiseSpec that Hydra's `noise/` configs instantiate."""
from noisy_prompt.noise.protocols import (
    FewShotNoise,
    NoiseResult,
    asym_cyclic_noise,
    asym_superclass_noise,
    clean_noise,
    dataset_identity,
    inst_noise,
    noise_rng,
    ptnl_fewshot,
    real_noise,
    sym_noise,
)
from noisy_prompt.noise.spec import PROTOCOLS, NoiseSpec

__all__ = [
    "FewShotNoise",
    "NoiseResult",
    "NoiseSpec",
    "PROTOCOLS",
    "asym_cyclic_noise",
    "asym_superclass_noise",
    "clean_noise",
    "dataset_identity",
    "inst_noise",
    "noise_rng",
    "ptnl_fewshot",
    "real_noise",
    "sym_noise",
]
