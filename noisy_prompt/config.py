"""OmegaConf resolvers and small config helpers shared by the run, the sweeps and the tests."""
from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

from noisy_prompt.cell import HASH_ONLY_NON_RESULT_KEYS, NON_RESULT_KEYS


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


RESULT_NODES: tuple[str, ...] = ("model", "data", "noise", "backbone")


def _pop_dotted(tree: dict, key: str) -> None:
    *parents, last = key.split(".")
    for part in parents:
        tree = tree.get(part)
        if not isinstance(tree, dict):
            return
    tree.pop(last, None)


def result_config(cfg: DictConfig) -> dict:
    """What determines the result, resolved: the result nodes, the seed, the epochs and the training set,
    less the keys that only say where/how the run is stored or placed (`cell.NON_RESULT_KEYS` under those
    nodes, and `cell.HASH_ONLY_NON_RESULT_KEYS`: paths, caches, workers, batch sizes of memory-only passes).

    Stored in results.json beside its hash, so a stale cell can name the keys that changed."""
    resolved = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in RESULT_NODES}
    resolved["seed"] = int(cfg.seed)
    resolved["max_epochs"] = cfg.trainer.max_epochs
    resolved["train_data"] = str(cfg.get("train_data") or cfg.data.name)
    for key in sorted(NON_RESULT_KEYS | HASH_ONLY_NON_RESULT_KEYS):
        if "." in key and key.split(".", 1)[0] in RESULT_NODES:
            _pop_dotted(resolved, key)
    return resolved


def config_hash(cfg: DictConfig) -> str:
    """Hash of `result_config(cfg)`."""
    return hashlib.sha256(json.dumps(result_config(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]
