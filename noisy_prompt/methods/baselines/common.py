"""What the CLIP baselines (SSR, LSL, DivideMix, DeFT) share: a fine-tuned vision tower with a linear head,
a per-epoch clean/noisy verdict over the training set (`selection.Verdicts`), its history in results.json,
and the verdicts in the label-issue report every training method writes (`methods/selection.py`).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisy_prompt.methods.base import ClassifierModule
from noisy_prompt.methods.selection import Verdicts, purification_summary

from .core import verdict_stats

log = logging.getLogger(__name__)

HEAD_INITS = ("zeroshot", "random")
__all__ = ["Verdicts", "BaselineModule", "augment_view", "zero_shot_head", "mlp"]


def augment_view(x: Tensor, generator: torch.Generator, max_shift: float = 0.125) -> Tensor:
    """A second augmented view made on the batch tensor: per-sample horizontal flip and a random translation
    of up to `max_shift` of the side (reflect padding), drawn from `generator`.

    The datamodule serves one augmented view per sample; the methods that need two (SSR's two views,
    DivideMix's two augmentations, LSL's strong view) take the loader's view and this one [choice].
    """
    if x.dim() != 4:
        raise ValueError(f"augment_view needs images (B, C, H, W), got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    pad = max(1, int(round(max_shift * min(h, w))))
    flip = torch.rand(b, generator=generator) < 0.5
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).tolist()
    out = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
    mode = "reflect" if pad < min(h, w) else "replicate"
    padded = F.pad(out, (pad, pad, pad, pad), mode=mode)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def zero_shot_head(text_features: Tensor, scale: float, init: str = "zeroshot") -> nn.Linear:
    """Linear head on normalised image features; `zeroshot` starts at CLIP's zero-shot classifier
    (weights = scale x the class text embeddings, bias 0), `random` at PyTorch's default init."""
    if init not in HEAD_INITS:
        raise ValueError(f"model.head_init must be one of {HEAD_INITS}, got {init!r}")
    head = nn.Linear(text_features.shape[1], text_features.shape[0])
    if init == "zeroshot":
        with torch.no_grad():
            head.weight.copy_(scale * F.normalize(text_features.float(), dim=-1))
            head.bias.zero_()
    return head


def mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    """SSR's projection / prediction heads (Linear-BN-ReLU-Linear)."""
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, dim_out))


class BaselineModule(ClassifierModule):
    """Base of the CLIP baselines: the whole vision tower trains under a linear head on normalised image
    features; subclasses compute `Verdicts` before each epoch via `score_training_set`."""

    trains = True
    # Per-epoch verdict stats reach results.json also when the ranks ran in spawned processes.
    REPORT_ATTRS = (*ClassifierModule.REPORT_ATTRS, "purification_history")

    def __init__(self, head_init: str = "zeroshot", block_size: int = 4096, **kwargs):
        kwargs.setdefault("input", "images")
        if kwargs["input"] != "images":
            raise ValueError(f"{type(self).__name__} fine-tunes the vision encoder, so model.input must be 'images', "
                             f"got {kwargs['input']!r}")
        if head_init not in HEAD_INITS:
            raise ValueError(f"model.head_init must be one of {HEAD_INITS}, got {head_init!r}")
        if int(block_size) < 1:
            raise ValueError(f"model.block_size must be >= 1, got {block_size}")
        super().__init__(**kwargs)
        self.head_init = head_init
        self.block_size = int(block_size)
        self.text_features = self.template_text_features()  # (C, D), frozen; also fixes the feature width
        self.feature_dim = int(self.text_features.shape[1])
        for p in self.clip.visual.parameters():
            p.requires_grad_(True)
        self.aug_generator = torch.Generator().manual_seed(self.seed)
        self.mix_generator = torch.Generator().manual_seed(self.seed + 1)
        self.verdicts: Verdicts | None = None
        self.purification_history: list[dict[str, float]] = []

    # Methods that step parts of the model separately (DivideMix's two networks, DeFT's two phases) set this:
    # under DDP each of their steps leaves parameters unused, which the default DDP reducer rejects.
    single_device_only = False

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.single_device_only and self.trainer.world_size > 1:
            raise RuntimeError(f"{type(self).__name__} trains on one device (it steps parts of the model separately); "
                               f"got world size {self.trainer.world_size}: use trainer.devices=1")

    def make_head(self) -> nn.Linear:
        return zero_shot_head(self.text_features, float(self.logit_scale), self.head_init)

    # ---- verdicts ---------------------------------------------------------------------------------
    def score_training_set(self, dm: Any = None) -> Verdicts:
        """Compute this epoch's verdicts (and whatever per-sample state training needs) over `dm`."""
        raise NotImplementedError

    def record_verdicts(self, v: Verdicts, **extra: float) -> dict[str, float]:
        self.verdicts = v
        stats = verdict_stats(v.clean_mask, v.given, v.true, v.suggested)
        stats.update({k: float(val) for k, val in extra.items()})
        return stats

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        stats = self.update_epoch_state()
        if stats is None:
            return
        self.purification_history.append({"epoch": self.current_epoch, **stats})
        self.log_dict({f"purify/{k}": v for k, v in stats.items()}, on_step=False, on_epoch=True)
        log.info("%s epoch %d verdicts: %s", type(self).__name__, self.current_epoch + 1,
                 ", ".join(f"{k} {v:.4g}" for k, v in stats.items()))

    def update_epoch_state(self) -> dict[str, float] | None:
        """Before each epoch: score the training set; returns the stats to log (None: nothing this epoch)."""
        v, extra = self.score_training_set()
        return self.record_verdicts(v, **extra)

    # ---- hooks ------------------------------------------------------------------------------------
    def extra_metrics(self) -> dict[str, float]:
        return {**super().extra_metrics(), **purification_summary(self.purification_history)}

    def extra_results(self) -> dict[str, Any]:
        out = dict(super().extra_results())
        if self.purification_history:
            out["purification"] = list(self.purification_history)
        return out

    def label_issue_verdicts(self, dm: Any = None) -> Verdicts:
        """The last verdicts; without any in this process (a finished run resumed from its last checkpoint
        trains no epoch, or DivideMix ended inside its warm-up) they are computed now over `dm`."""
        if self.verdicts is None:
            v, _ = self.score_training_set(dm)
            self.verdicts = v
        return self.verdicts

    # ---- state ------------------------------------------------------------------------------------
    def trainable_state_names(self) -> set[str]:
        """The vision tower(s) with their buffers and the method's own heads: everything but frozen CLIP parts."""
        return {n for n in self.state_dict() if n.startswith("clip.visual.") or not n.startswith("clip.")}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["baseline"] = {"purification_history": list(self.purification_history),
                                  "aug_generator": self.aug_generator.get_state(),
                                  "mix_generator": self.mix_generator.get_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("baseline")
        if state:
            self.purification_history = list(state["purification_history"])
            self.aug_generator.set_state(state["aug_generator"])
            self.mix_generator.set_state(state["mix_generator"])
