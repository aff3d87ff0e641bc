"""`python -m noisy_prompt.run model=dpsep data=ucf101 noise=inst60` — one cell, or a sweep with -m."""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from noisy_prompt import config as _config  # noqa: F401  (registers resolvers before composition)

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("noisy_prompt.run")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="run")
def main(cfg: DictConfig) -> float | None:
    from noisy_prompt.cell import CellLockedError
    from noisy_prompt.ddp_guard import check_strategy
    from noisy_prompt.task import run_cell

    check_strategy(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with open_dict(cfg):  # the resolved dir (with its settings tag), also for interpolations inside the job
        cfg.run_dir = str(run_dir)
    try:
        results = run_cell(cfg, run_dir)
    except CellLockedError:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        # Another process is running this very cell (its result will be there): not a failure of it.
        log.exception("cell %s is being run by another process; skipped here", cfg.cell)
        return None
    except Exception:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        # In a sweep one failing cell must not stop the others: run_cell left failed.json with the error.
        log.exception("cell %s failed; recorded in %s, continuing the sweep", cfg.cell, run_dir / "failed.json")
        return None
    return results.get("metrics", {}).get("test/acc")


if __name__ == "__main__":
    main()
