"""Refuse the one DDP setup that silently multiplies a sweep.

Lightning's plain `ddp` re-launches the command line for each extra rank; inside a Hydra multirun
every extra rank would start its own copy of the whole sweep (Lightning #15737/#18175).
"""
from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from noisy_prompt.errors import UserError


class DDPInMultirunError(UserError, RuntimeError):
    """trainer.strategy=ddp with several devices inside a multirun."""


def _device_count(devices) -> int:
    if isinstance(devices, int):
        return devices
    if isinstance(devices, str):
        if devices in ("auto", "-1"):
            import torch

            return max(1, torch.cuda.device_count())
        return len([d for d in devices.split(",") if d.strip()]) if "," in devices else int(devices)
    return len(devices) if devices is not None else 1


def check_strategy(cfg: DictConfig) -> None:
    strategy = str(cfg.trainer.get("strategy", "auto"))
    if strategy not in ("ddp", "ddp_find_unused_parameters_true"):
        return
    if _device_count(cfg.trainer.get("devices", 1)) <= 1 and int(cfg.trainer.get("num_nodes", 1)) <= 1:
        return
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise DDPInMultirunError(
            "trainer.strategy=ddp with more than one device inside a Hydra multirun (-m) would re-launch the whole "
            "sweep once per extra rank. Use one of: trainer=ddp_spawn inside multirun; plain trainer=ddp (or torchrun) "
            "for a single run without -m; or one GPU per job (trainer.devices=1) with jobs in parallel."
        )
