"""CoOp-style prompt tuning of a frozen CLIP (CoOp with CE; PTNL is the same learner with GCE).

Only the context vectors train. Image features come from the datamodule (cached frozen-encoder
features, one augmented view per epoch) or are computed from images when `input=images`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from noisy_prompt.clip.prompt_encoder import PromptTextEncoder
from noisy_prompt.losses import gce_loss
from noisy_prompt.methods.epoch_curve import EpochCurveModule


class CoOp(EpochCurveModule):
    trains = True

    def __init__(self, n_ctx: int = 16, ctx_init: str | None = None, ctx_std: float = 0.02, cut_to_eot: bool = True,
                 loss: str = "ce", gce_q: float = 0.5, text_path: str = "auto", **kwargs):
        super().__init__(**kwargs)
        if loss not in ("ce", "gce"):
            raise ValueError(f"model.loss must be 'ce' or 'gce', got {loss!r}")
        self.loss_name, self.gce_q = loss, gce_q
        self.prompt_encoder = PromptTextEncoder(self.clip, self.tokenizer, self.classnames, n_ctx, cut_to_eot=cut_to_eot,
                                                path=text_path)
        gen = torch.Generator().manual_seed(self.seed)
        self.ctx = nn.Parameter(self.prompt_encoder.init_context(ctx_init, self.tokenizer, ctx_std, gen))

    def text_features(self, ctx: torch.Tensor, class_order: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.prompt_encoder(ctx, class_order).float(), dim=-1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.image_features(x) @ self.text_features(self.ctx).t()

    def classification_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y) if self.loss_name == "ce" else gce_loss(logits, y, q=self.gce_q)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.classification_loss(self.logits(batch["x"]), batch["label"])
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["label"]))
        return loss
