"""Plain CE fine-tuning of the CLIP vision tower (docs/methods.md, Baselines): the floor every
noisy-label method must beat, and the calibration's T7.

The vision tower and a classifier head train with cross-entropy on every given label: no sample
selection, no label correction, no mixup. `head: linear` is a linear layer on the normalised image
features, started from zero-shot text features (each class's weight is its mean template feature
times CLIP's logit scale, so epoch 0 predicts like zero-shot CLIP); `head: tac` is TANGO's
text-anchored classifier over frozen anchors (the dataset's class descriptions when it publishes
them, else the templates), reused from `methods/tango/tac.py`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisy_prompt.data.readers.templates import clean_classname
from noisy_prompt.methods.epoch_curve import EpochCurveModule
from noisy_prompt.methods.tango.tac import class_anchor_table, tac_log_probs

HEADS = ("linear", "tac")


class FineTuneCE(EpochCurveModule):
    trains = True

    def __init__(self, head: str = "linear", anchor_k: int = 40, **kwargs):
        super().__init__(**kwargs)
        if head not in HEADS:
            raise ValueError(f"model.head must be one of {', '.join(HEADS)}, got {head!r}")
        if self.input != "images":
            raise ValueError(f"model=ft_ce fine-tunes the vision tower, so it needs model.input=images, got {self.input!r}")
        self.head_name = head
        self.head: nn.Linear | None = None
        if head == "linear":
            text = self.template_text_features()  # (C, D), unit rows
            self.head = nn.Linear(text.shape[1], self.num_classes)
            with torch.no_grad():
                self.head.weight.copy_(float(self.logit_scale) * text)
                self.head.bias.zero_()
        else:
            sentences = self._anchor_sentences(int(anchor_k))
            flat = [s for per_class in sentences for s in per_class]
            labels = torch.tensor([c for c, per_class in enumerate(sentences) for _ in per_class], dtype=torch.long)
            with torch.no_grad():
                feats = torch.cat([F.normalize(self.clip.encode_text(self.tokenizer(flat[i:i + 256])).float(), dim=-1)
                                   for i in range(0, len(flat), 256)])
            index, mask = class_anchor_table(labels, self.num_classes)
            self.register_buffer("anchors", feats, persistent=False)
            self.register_buffer("anchor_labels", labels, persistent=False)
            self.register_buffer("anchor_index", index, persistent=False)
            self.register_buffer("anchor_mask", mask, persistent=False)
        for p in self.clip.visual.parameters():
            p.requires_grad_(True)

    def _anchor_sentences(self, k: int) -> list[list[str]]:
        """K sentences per class: the dataset's own descriptions when it has them, else the templates."""
        own = self.class_descriptions or {}
        out = []
        for name in self.classnames:
            sentences = list(own.get(name, []))[:k]
            out.append(sentences or [t.format(clean_classname(name)) for t in self.templates])
        return out

    def logits(self, x: Tensor) -> Tensor:
        v = self.image_features(x)
        if self.head is not None:
            return self.head(v)
        return tac_log_probs(v, self.anchors, self.anchor_labels, self.num_classes, self.logit_scale,
                             anchor_table=(self.anchor_index, self.anchor_mask))

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        # log_softmax is a no-op on TAC's log-probabilities, so one CE serves both heads.
        loss = F.cross_entropy(self.logits(batch["x"]).float(), batch["label"])
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["label"]))
        return loss

    def trainable_state_names(self) -> set[str]:
        # The vision tower (parameters and buffers) and the head: everything else comes from the backbone config.
        return {n for n in self.state_dict() if n.startswith(("clip.visual.", "head."))}
