"""`python -m noisy_prompt.run model=dpsep data=ucf101 noise=inst60` — one cell, or a sweep with -m."""
from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from noisy_prompt import config as _config  # noqa: F401  (registers resolvers before composition)

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="run")
def main(cfg: DictConfig) -> float | None:
    from noisy_prompt.ddp_guard import check_strategy
    from noisy_prompt.task import run_cell

    check_strategy(cfg)
    results = run_cell(cfg, Path(HydraConfig.get().runtime.output_dir))
    return results.get("metrics", {}).get("test/acc")


if __name__ == "__main__":
    main()
