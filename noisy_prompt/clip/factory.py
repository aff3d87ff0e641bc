"""The one place that turns a backbone config into a CLIP model.

A backbone config names an open_clip architecture and where its weights come from: a pretrained tag
(downloaded through open_clip's HF-hub cache), a local checkpoint file, or a `local-dir:` folder in
open_clip's format. `builtin:<name>` points at a model that ships inside this package (the synthetic
world's tiny CLIP).
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from noisy_prompt.errors import UserError

log = logging.getLogger(__name__)

# The one home of the weights shipped in the package: `builtin:<name>` is the folder of that name here
# (the synthetic world's CLIP is `builtin:synthetic-clip`, written by `python -m noisy_prompt.tools.pretrain`).
BUILTIN_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "synthetic" / "weights"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class WeightsNotFoundError(UserError, RuntimeError):
    """The backbone's weights are not where the config says (or not in the download cache offline)."""


@dataclass
class ClipBundle:
    model: nn.Module
    tokenizer: Callable[..., torch.Tensor]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    identity: str  # stable string naming architecture + weights; part of every feature-cache key
    name: str

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())


def resolve_model_name(model: str) -> str:
    if model.startswith("builtin:"):
        path = BUILTIN_WEIGHTS_DIR / model.split(":", 1)[1]
        if not (path / "open_clip_config.json").is_file():
            raise WeightsNotFoundError(
                f"built-in model '{model}' is missing: expected {path}/open_clip_config.json and weights. "
                "Rebuild it with `make pretrain` (noisy_prompt.tools.pretrain)."
            )
        return f"local-dir:{path}"
    return model


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith((".bin", ".pt", ".pth", ".safetensors"))


def _local_dir_weight_files(model_name: str) -> list[Path]:
    """The weight files of a `local-dir:` model, in a fixed order (what the cache key and the digest read)."""
    folder = Path(model_name.split(":", 1)[1])
    return sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt*"))


def _weights_identity(model_name: str, pretrained: str | None) -> str:
    if model_name.startswith("local-dir:"):
        files = _local_dir_weight_files(model_name)
        stamp = ",".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
        return f"{model_name}|{stamp}"
    if pretrained and Path(pretrained).is_file():
        st = Path(pretrained).stat()
        return f"{model_name}|{Path(pretrained).resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return f"{model_name}|{pretrained or 'random'}"


def weights_digest(model: str, pretrained: str | None) -> str | None:
    """sha256 of the weight files a backbone loads from disk (a built-in or local-dir model, a checkpoint file).

    A finished cell is reused by its config hash, and the config names the weights, not their contents: a
    rebuilt built-in world (`make pretrain`) or an overwritten checkpoint keeps the same name. The run
    records this digest and refuses to reuse a result made with other weights. None for open_clip tags,
    whose name is their identity, and for a path that does not exist (the loader reports that).
    """
    try:
        name = resolve_model_name(model)
    except WeightsNotFoundError:
        return None
    if name.startswith("local-dir:"):
        files = _local_dir_weight_files(name)
    elif pretrained and _looks_like_path(pretrained) and Path(pretrained).is_file():
        files = [Path(pretrained)]
    else:
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _how_to_provide(model: str, pretrained: str) -> str:
    return (
        f"To provide weights for {model}: on a machine with internet run\n"
        f"  python -c \"import open_clip; open_clip.create_model('{model}', pretrained='{pretrained}')\"\n"
        "and copy the HF cache (HF_HOME) here, or point backbone.pretrained at a local checkpoint file, "
        "or set backbone.model=local-dir:/path/to/folder (open_clip_config.json + weights)."
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def weights_problem(model: str, pretrained: str | None = None, *, allow_random: bool = False, name: str | None = None,
                    check_cache: bool = True, **_: Any) -> WeightsNotFoundError | None:
    """What stops `create_clip` from finding the weights, found without building the model (None: nothing).

    Checks the name's form, a checkpoint file or local-dir folder, and (`check_cache`) an open_clip tag: known
    for the architecture, and, offline (HF_HUB_OFFLINE=1), already in the download cache. Online, a tag
    that is not cached yet is not a problem: create_clip downloads it."""
    try:
        model_name = resolve_model_name(model)
    except WeightsNotFoundError as err:
        return err
    has_schema = model_name.startswith(("local-dir:", "hf-hub:"))
    if not has_schema and not pretrained and not allow_random:
        return WeightsNotFoundError(
            f"backbone '{name or model}' has no pretrained weights (backbone.pretrained is empty). "
            "Set backbone.pretrained to a tag (e.g. openai), a checkpoint file or use backbone.model=local-dir:/path. "
            "Random weights are only for tests (backbone.allow_random=true)."
        )
    if pretrained and _looks_like_path(pretrained) and not Path(pretrained).is_file():
        return WeightsNotFoundError(
            f"backbone '{name or model}': weights file not found: {pretrained}\n" + _how_to_provide(model, "<tag>")
        )
    if model_name.startswith("local-dir:"):
        folder = Path(model_name.split(":", 1)[1])
        if not (folder / "open_clip_config.json").is_file():
            return WeightsNotFoundError(f"local-dir model folder {folder} has no open_clip_config.json")
    if not check_cache or has_schema or not pretrained or _looks_like_path(pretrained):
        return None
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        known = open_clip.list_pretrained_tags_by_model(model_name)
        return WeightsNotFoundError(f"backbone '{name or model}': open_clip has no pretrained tag '{pretrained}' for "
                                    f"{model_name} (backbone.pretrained); known tags: {', '.join(known) or 'none'}")
    if _offline():
        try:
            open_clip.pretrained.download_pretrained(cfg)  # offline: only looks in the cache
        except Exception as err:  # huggingface_hub's cache miss comes in several types
            return WeightsNotFoundError(
                f"backbone '{name or model}': weights '{pretrained}' for {model_name} are not in the download cache "
                f"(HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}) and HF_HUB_OFFLINE=1 forbids "
                f"downloading them ({type(err).__name__}).\n" + _how_to_provide(model, pretrained))
    return None


def create_clip(
    model: str,
    pretrained: str | None = None,
    *,
    allow_random: bool = False,
    device: str | torch.device = "cpu",
    name: str | None = None,
    logit_scale_factor: float = 1.0,
    **_: Any,
) -> ClipBundle:
    """Build an open_clip model with its tokenizer and preprocessing constants, all frozen-ready (fp32).

    `allow_random` exists only for tests: a real run on random weights is refused, because open_clip
    would otherwise only log a warning and the run would silently report chance-level numbers.
    `logit_scale_factor` (config `+backbone.logit_scale_factor=F`, default 1: the weights' own scale)
    multiplies the model's logit scale, so every method sees a compressed (F < 1) or sharper (F > 1)
    image-text geometry; a what-if probe of the built-in world. Image features do not depend on it.
    """
    import open_clip

    try:
        factor = float(logit_scale_factor)
    except (TypeError, ValueError):
        factor = float("nan")
    if not (0 < factor < float("inf")):
        from noisy_prompt.errors import ConfigError

        raise ConfigError(f"backbone.logit_scale_factor={logit_scale_factor!r}: expected a finite number > 0 (1 = as the weights have it)")
    problem = weights_problem(model, pretrained, allow_random=allow_random, name=name, check_cache=False)
    if problem is not None:
        raise problem
    model_name = resolve_model_name(model)
    has_schema = model_name.startswith(("local-dir:", "hf-hub:"))
    try:
        clip = open_clip.create_model(
            model_name,
            pretrained=None if has_schema else (pretrained or None),
            require_pretrained=not allow_random,
            device=device,
        )
    except RuntimeError as err:
        if pretrained and not _looks_like_path(pretrained):
            raise WeightsNotFoundError(
                f"could not load pretrained weights '{pretrained}' for {model_name} "
                f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}): {err}\n" + _how_to_provide(model, pretrained)
            ) from err
        raise
    clip.eval()
    if factor != 1.0:  # logit_scale is stored as a log
        with torch.no_grad():
            clip.logit_scale.add_(torch.log(torch.tensor(factor, dtype=clip.logit_scale.dtype)))
    tokenizer = open_clip.get_tokenizer(model_name)
    pp = getattr(clip.visual, "preprocess_cfg", {}) or {}
    size = pp.get("size", getattr(clip.visual, "image_size", 224))
    image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(pp.get("mean", OPENAI_MEAN))
    std = tuple(pp.get("std", OPENAI_STD))
    return ClipBundle(
        model=clip,
        tokenizer=tokenizer,
        image_size=image_size,
        mean=mean,
        std=std,
        identity=_weights_identity(model_name, pretrained),
        name=name or model,
    )


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module
