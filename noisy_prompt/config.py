"""OmegaConf resolvers and small config helpers shared by the run, the sweeps and the tests."""
from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf


def _precision() -> str:
    import torch

    return "16-mixed" if torch.cuda.is_available() else "32-true"


def _git_rev() -> str:
    from noisy_prompt.provenance import git_revision

    return git_revision()[:12]


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("np_precision"):
        OmegaConf.register_new_resolver("np_precision", _precision)
    if not OmegaConf.has_resolver("np_git_rev"):
        OmegaConf.register_new_resolver("np_git_rev", _git_rev, use_cache=True)
    if not OmegaConf.has_resolver("np_settings_tag"):
        from noisy_prompt.cell import resolve_settings_tag

        OmegaConf.register_new_resolver("np_settings_tag", resolve_settings_tag)


register_resolvers()

# Keys of a group config that describe the run rather than being constructor arguments.
# The generic readers' options (data=folder / data=csv: root, train, ...) reach their reader through
# data.reader_kwargs, which interpolates them.
NON_CTOR_KEYS = {"model": {"name", "batch_size", "val_every"},
                 "data": {"recipe", "anchor_source", "root", "train", "val", "test", "classnames", "split"}}


def ctor_kwargs(cfg: DictConfig, group: str) -> dict:
    node = OmegaConf.to_container(cfg[group], resolve=True)
    return {k: v for k, v in node.items() if k not in NON_CTOR_KEYS.get(group, set())}


def result_config(cfg: DictConfig) -> dict:
    """What determines the result, resolved: not paths, loggers, hardware or the force flag.

    Stored in results.json beside its hash, so a stale cell can name the keys that changed."""
    resolved = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data", "noise", "backbone")}
    resolved["seed"] = int(cfg.seed)
    resolved["max_epochs"] = cfg.trainer.max_epochs
    resolved["train_data"] = str(cfg.get("train_data") or cfg.data.name)
    for drop in ("data_dir", "cache_dir", "num_workers", "eval_batch_size", "device", "cache_images", "cache_images_mb"):
        resolved.get("data", {}).pop(drop, None)
    model = resolved.get("model", {})
    model.pop("block_size", None)  # memory, not results
    for sub, key in (("anchors", "encode_batch_size"), ("source", "log_dir")):
        if isinstance(model.get(sub), dict):
            model[sub].pop(key, None)
    return resolved


def config_hash(cfg: DictConfig) -> str:
    """Hash of `result_config(cfg)`."""
    return hashlib.sha256(json.dumps(result_config(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]
