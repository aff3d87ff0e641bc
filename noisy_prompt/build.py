"""Building a run's parts from its composed config: the one CLIP, the datamodule, the method, and the
facts checked before anything is built (epochs, backbone against data, the data's digests).

Below the task (`noisy_prompt.task` runs a cell with these) and the preflight and report commands that
also need them, so none of those imports another.
"""
from __future__ import annotations

from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from noisy_prompt.cell import parse_settings, task_overrides
from noisy_prompt.config import ctor_kwargs
from noisy_prompt.data.readers import DIGESTS, data_digest
from noisy_prompt.errors import ConfigError


def max_epochs_of(cfg: DictConfig) -> int:
    """The one number of epochs of a run: `trainer.max_epochs` (which defaults to model.max_epochs).

    The module's LR schedule and DP-SEP's alpha schedule receive it, and the datamodule caches as many
    augmented views (data.views interpolates it), so whichever documented key the user sets, they agree.
    """
    value = cfg.trainer.get("max_epochs")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"trainer.max_epochs must be a positive integer, got {value!r}: set the number of "
                         "epochs with model.max_epochs=<n> (trainer.max_epochs follows it)")
    steps = cfg.trainer.get("max_steps")
    if steps not in (None, -1):
        raise ConfigError(f"trainer.max_steps={steps} is not supported: the LR and alpha schedules are per epoch; "
                         "set model.max_epochs=<n> instead")
    overrides = parse_settings(task_overrides(cfg))
    if "model.max_epochs" in overrides and "trainer.max_epochs" in overrides and int(cfg.model.max_epochs) != value:
        raise ConfigError(f"model.max_epochs={cfg.model.max_epochs} and trainer.max_epochs={value} disagree: "
                         "set only model.max_epochs")
    return int(value)


def check_backbone(cfg: DictConfig) -> None:
    """The synthetic world's tiny CLIP on a real dataset would report meaningless numbers without error."""
    if cfg.backbone.get("synthetic_world_only", False) and cfg.data.get("real_images", False) \
            and not cfg.get("allow_synthetic_backbone", False):
        raise ConfigError(f"backbone={cfg.backbone.name} is the synthetic world's 32-pixel CLIP; data={cfg.data.name} "
                         "is a real dataset. Leave backbone at the dataset's default (its paper's CLIP) or pick one "
                         "(backbone=vit_b16|vit_b32|rn50|siglip); allow_synthetic_backbone=true forces it (tests).")


def _instantiate_group(cfg: DictConfig, group: str, **extra) -> list:
    node = cfg.get(group) or {}
    return [instantiate(c, **extra) for c in node.values() if c is not None and "_target_" in c]


def build_clip(cfg: DictConfig):
    """The run's one CLIP, handed to the datamodule (features) and the method (its frozen/trained parts)."""
    from noisy_prompt.clip.factory import create_clip

    return create_clip(**OmegaConf.to_container(cfg.backbone, resolve=True))


def build_datamodule(cfg: DictConfig, clip_bundle=None):
    noise = instantiate(cfg.noise)
    kwargs = ctor_kwargs(cfg, "data")
    target = kwargs.pop("_target_")
    backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
    # Called directly, not through instantiate: Hydra would turn the NoiseSpec dataclass back into a dict.
    return get_class(target)(**kwargs, noise=noise, backbone=backbone, seed=int(cfg.seed), clip_bundle=clip_bundle)


def _reader_of(cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    """(reader name, reader kwargs) of the configured dataset."""
    kwargs = cfg.data.get("reader_kwargs")
    return (str(cfg.data.get("reader") or cfg.data.name),
            OmegaConf.to_container(kwargs, resolve=True) if kwargs is not None else {})


def label_files_of(cfg: DictConfig) -> dict[str, str] | None:
    """{label file: sha256} of the configured dataset (relative to the data root for the papers' datasets,
    absolute for a user's CSV or class names file); None: none to pin."""
    from noisy_prompt.data.label_files import label_file_hashes

    name, kwargs = _reader_of(cfg)
    return label_file_hashes(name, cfg.data.get("data_dir"), **kwargs)


def data_digest_of(cfg: DictConfig, label_files: dict[str, str] | None = None) -> str | None:
    """The digest the configured dataset publishes of its content (the datamodule's reader and its
    arguments), else that of its label files (`label_files`, hashed once by the caller); None for datasets
    that have neither."""
    name, kwargs = _reader_of(cfg)
    if label_files and name not in DIGESTS:
        from noisy_prompt.data.label_files import fold

        return fold(label_files)
    return data_digest(name, cfg.data.get("data_dir"), **kwargs)


def record_staleness(record: dict[str, Any], cache: dict | None = None) -> list[str]:
    """Why a run record (a results.json) cannot stand for its own config today: one line per digest that
    its backbone or dataset now has and the record lacks or holds with another value (cell.digest_mismatches);
    a line when the weights or data cannot be read to check; empty when the record is current. Datasets
    that publish no digest and open_clip tags are not checked (nothing to check against), as in a run.
    `cache` (a dict the caller keeps for one pass over many records) saves rehashing the same weights."""
    from noisy_prompt.cell import digest_mismatches
    from noisy_prompt.clip.factory import weights_digest

    config = record.get("config") or {}
    backbone, data = config.get("backbone") or {}, config.get("data") or {}
    if not backbone.get("model") or not (data.get("reader") or data.get("name")):
        return ["its config names no backbone model or dataset, so its digests cannot be checked"]
    try:
        cache = {} if cache is None else cache
        wkey = (str(backbone["model"]), backbone.get("pretrained"))
        if wkey not in cache:
            cache[wkey] = weights_digest(str(backbone["model"]), backbone.get("pretrained"))
        now = {"weights_digest": cache[wkey], "data_digest": data_digest_of(OmegaConf.create({"data": data}))}
    except Exception as err:  # the weights or data are gone: the record cannot be checked against them
        return [f"its weights or data cannot be read now ({type(err).__name__}: {err})"]
    return digest_mismatches(record, now)


def build_module(cfg: DictConfig, dm, clip_bundle=None, max_epochs: int | None = None):
    kwargs = ctor_kwargs(cfg, "model")
    target = kwargs.pop("_target_")
    kwargs["max_epochs"] = max_epochs_of(cfg) if max_epochs is None else int(max_epochs)  # the task computes it once
    if clip_bundle is not None:
        kwargs["clip_bundle"] = clip_bundle
    # What the data publishes reaches the method here, once, beside its class names: the class descriptions
    # where the dataset has them (None elsewhere) and its facts (data/facts.py, DataFacts).
    return get_class(target)(**kwargs, backbone=OmegaConf.to_container(cfg.backbone, resolve=True),
                             classnames=dm.classnames, templates=dm.templates, test_sets=dm.test_set_names,
                             seed=int(cfg.seed), class_descriptions=dm.class_descriptions, facts=dm.facts())
