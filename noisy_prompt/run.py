"""`python -m noisy_prompt.run model=dpsep data=ucf101 noise=inst60` — one cell, or a sweep with -m."""
from __future__ import annotations

import logging
import os
import sys
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
    from noisy_prompt.errors import UserError
    from noisy_prompt.task import run_cell

    check_strategy(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with open_dict(cfg):  # the resolved dir (with its settings tag), also for interpolations inside the job
        cfg.run_dir = str(run_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        results = run_cell(cfg, run_dir)
    except CellLockedError as err:
        if not multirun:
            _user_error(err)
        # Another process is running this very cell (its result will be there): not a failure of it.
        _to_log_files(err, f"cell {cfg.cell} is being run by another process; skipped here")
        log.warning("cell %s is being run by another process; skipped here: %s", cfg.cell, err)
        return None
    except UserError as err:
        if not multirun:
            _user_error(err)
        # In a sweep one failing cell must not stop the others: run_cell left failed.json with the error.
        _to_log_files(err, f"cell {cfg.cell} failed")
        log.error("cell %s failed (recorded in %s), continuing the sweep:\n%s", cfg.cell, run_dir / "failed.json", err)
        return None
    except Exception:
        if not multirun:
            raise
        log.exception("cell %s failed; recorded in %s, continuing the sweep", cfg.cell, run_dir / "failed.json")
        return None
    return results.get("metrics", {}).get("test/acc")


def _to_log_files(err: BaseException, what: str) -> None:
    """The traceback of a user error, into the job's log files (run.log) only: the screen gets its message."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s; traceback:", (what,),
                            (type(err), err, err.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _user_error(err: BaseException) -> None:
    """A mistake in the input: its message alone on stderr, exit status 1. The traceback is in run.log and
    failed.json; HYDRA_FULL_ERROR=1 re-raises, so Hydra prints it on screen too."""
    _to_log_files(err, "run stopped by a user error")
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    print(f"Error: {err}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
