"""OmegaConf resolvers and small config helpers shared by the run, the sweeps and the tests."""
from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf


def _precision() -> str:
    import torch

    return "16-mixed" if torch.cuda.is_available() else "32-true"


def _git_rev() -> str:
    from noisy_prompt.reporting.results import git_revision

    return git_revision()[:12]


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("np_precision"):
        OmegaConf.register_new_resolver("np_precision", _precision)
    if not OmegaConf.has_resolver("np_git_rev"):
        OmegaConf.register_new_resolver("np_git_rev", _git_rev, use_cache=True)


register_resolvers()

# Keys of a group config that describe the run rather than being constructor arguments.
NON_CTOR_KEYS = {"model": {"name", "batch_size", "val_every"}, "data": {"recipe", "anchor_source"}}


def ctor_kwargs(cfg: DictConfig, group: str) -> dict:
    node = OmegaConf.to_container(cfg[group], resolve=True)
    return {k: v for k, v in node.items() if k not in NON_CTOR_KEYS.get(group, set())}


def cell_keys(cfg: DictConfig) -> dict:
    return {"model": cfg.model.name, "data": cfg.data.name, "noise": cfg.noise.name,
            "backbone": cfg.backbone.name, "seed": int(cfg.seed),
            "train_data": cfg.get("train_data") or cfg.data.name, "sweep": cfg.sweep}


def config_hash(cfg: DictConfig) -> str:
    """Hash of what determines the result: not paths, loggers or the force flag."""
    resolved = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data", "noise", "backbone")}
    resolved["seed"] = int(cfg.seed)
    resolved["max_epochs"] = cfg.trainer.max_epochs
    for drop in ("data_dir", "cache_dir", "num_workers"):
        resolved.get("data", {}).pop(drop, None)
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]
