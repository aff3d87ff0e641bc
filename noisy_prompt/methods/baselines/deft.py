"""DeFT (Wei et al., NeurIPS 2024, "Vision-Language Models are Strong Noisy Label Detectors") on CLIP, both phases
in one run (docs/methods.md, Baselines).

Phase 1 (epochs 0 .. phase1_epochs-1), detection by parameter-efficient tuning: shared positive and negative
text contexts (through `PromptTextEncoder`) and deep visual prompts appended to the tokens of every vision
layer; the tower itself is frozen. p_yes_k = softmax([pos_k, neg_k])_0; clean when p_yes_y > 0.5 (real noise:
also argmax_k p_yes_k = y). Phase 2 (the remaining epochs): the prompts are dropped and the pretrained tower
is fully fine-tuned with a new linear head on CE over the phase-1 clean samples only.

Two optimisers under manual optimisation (Lightning steps neither): phase 1's SGD over the prompts
(lr 0.03, its own cosine), phase 2's over tower and head (TANGO's recipe, `model.optim`).
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisy_prompt.clip.prompt_encoder import PromptTextEncoder
from noisy_prompt.errors import ConfigError
from noisy_prompt.methods.base import _number as _number_or_none
from noisy_prompt.methods.base import range_problems
from noisy_prompt.methods.selection import training_set_pass
from noisy_prompt.methods.schedules import warmup_cosine_factor

from . import core
from .common import BaselineModule, Verdicts

log = logging.getLogger(__name__)

AUTO_BOOL = ("auto", "on", "off")
PHASE1_KEYS = {"epochs", "lr", "momentum", "weight_decay", "warmup", "n_ctx", "ctx_std", "vpt_tokens", "threshold",
               "require_argmax", "sce", "sce_alpha", "sce_beta"}


def deep_prompt_forward(visual: nn.Module, x: Tensor, prompts: Tensor) -> Tensor:
    """open_clip ViT forward with deep visual prompts: before layer l, the previous layer's prompt outputs are
    replaced by `prompts[l]` (P tokens appended after the class and patch tokens, as VPT-deep does); they are
    dropped before pooling, so with no prompts (P = 0) this is the tower's own forward."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None or not hasattr(visual, "_embeds"):
        raise TypeError(f"DeFT's deep visual prompts need an open_clip VisionTransformer, got {type(visual).__name__}")
    if prompts.dim() != 3 or prompts.shape[0] != len(blocks):
        raise ValueError(f"prompts must be (layers={len(blocks)}, P, width), got {tuple(prompts.shape)}")
    h = visual._embeds(x)
    seq = h.shape[1]
    batch_first = getattr(visual.transformer, "batch_first", True)
    for layer, block in enumerate(blocks):
        h = torch.cat([h[:, :seq], prompts[layer].to(h.dtype).unsqueeze(0).expand(h.shape[0], -1, -1)], dim=1)
        if batch_first:
            h = block(h)
        else:
            h = block(h.transpose(0, 1)).transpose(0, 1)
    pooled, _ = visual._pool(h[:, :seq])
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled


PHASE1_DEFAULTS = {"epochs": 10, "lr": 0.03, "momentum": 0.9, "weight_decay": 5e-4, "warmup": "auto", "n_ctx": 16,
                   "ctx_std": 0.02, "vpt_tokens": 20, "threshold": 0.5, "require_argmax": "auto", "sce": "auto",
                   "sce_alpha": 1.0, "sce_beta": 1.0}
PHASE1_RULES = {"lr": (0.0, float("inf"), False, "a learning rate > 0"), "momentum": (0.0, 1.0, True, "a number in [0, 1]"),
                "weight_decay": (0.0, float("inf"), True, "a number >= 0"), "n_ctx": (1, float("inf"), True, "an integer >= 1"),
                "ctx_std": (0.0, float("inf"), True, "a number >= 0"), "vpt_tokens": (0, float("inf"), True, "an integer >= 0"),
                "threshold": (0.0, 1.0, True, "a probability in [0, 1]")}


class DeFT(BaselineModule):
    single_device_only = True

    @classmethod
    def config_problems(cls, config: dict) -> list[str]:
        """Phase 1's keys and ranges, and the epochs of the two phases (model.max_epochs is their total)."""
        out = super().config_problems(config)
        cfg = {**PHASE1_DEFAULTS, **dict(config.get("phase1") or {})}
        unknown = set(cfg) - PHASE1_KEYS
        if unknown:
            out.append(f"model.phase1: unknown keys {sorted(unknown)}; expected {sorted(PHASE1_KEYS)}")
        for key in ("require_argmax", "sce"):
            if cfg[key] not in AUTO_BOOL:
                out.append(f"model.phase1.{key} must be one of {AUTO_BOOL}, got {cfg[key]!r}")
        if cfg["warmup"] != "auto" and (_number_or_none(cfg["warmup"]) is None or int(cfg["warmup"]) < 0):
            out.append(f"model.phase1.warmup must be 'auto' or an integer >= 0, got {cfg['warmup']!r}")
        out += range_problems(cfg, "model.phase1", PHASE1_RULES)
        total, first = _number_or_none(config.get("max_epochs", 1)), _number_or_none(cfg["epochs"])
        if first is None or total is None or first < 1 or total <= first:
            out.append(f"DeFT runs phase 1 then phase 2 in one run: model.max_epochs ({config.get('max_epochs', 1)}) "
                       f"must exceed model.phase1.epochs ({cfg['epochs']}), and phase 1 needs at least 1 epoch")
        return out

    def __init__(self, phase1: dict | None = None, **kwargs):
        cfg = {**PHASE1_DEFAULTS, **dict(phase1 or {})}
        problems = self.config_problems({**kwargs, "phase1": cfg})
        if problems:
            raise ConfigError("; ".join(problems))
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self.p1 = cfg
        self.phase1_epochs = int(cfg["epochs"])
        for p in self.clip.visual.parameters():  # frozen in phase 1; phase 2 unfreezes it
            p.requires_grad_(False)
        gen = torch.Generator().manual_seed(self.seed)
        self.text_encoder = PromptTextEncoder(self.clip, self.tokenizer, self.classnames, int(cfg["n_ctx"]))
        self.ctx_pos = nn.Parameter(self.text_encoder.init_context(None, self.tokenizer, float(cfg["ctx_std"]), gen))
        self.ctx_neg = nn.Parameter(self.text_encoder.init_context(None, self.tokenizer, float(cfg["ctx_std"]), gen))
        visual = self.clip.visual
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if blocks is None:
            raise TypeError(f"DeFT's deep visual prompts need a ViT vision tower, got {type(visual).__name__}")
        width = int(visual.class_embedding.shape[-1])
        patch = visual.conv1.kernel_size
        # VPT's initialisation: uniform(±sqrt(6 / (3 * patch area + width))).
        bound = math.sqrt(6.0 / (3 * patch[0] * patch[1] + width))
        self.vpt = nn.Parameter((torch.rand(len(blocks), int(cfg["vpt_tokens"]), width, generator=gen) * 2 - 1) * bound)
        self.head = self.make_head()
        self.phase = 1
        self.final_verdicts: Verdicts | None = None
        self._epoch_masks: dict[str, Tensor] = {}

    # ---- phase 1 --------------------------------------------------------------------------------
    def prompt_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Positive logits and negative logits (from detached image features) of images x."""
        f = F.normalize(deep_prompt_forward(self.clip.visual, x, self.vpt).float(), dim=-1)
        t_pos = F.normalize(self.text_encoder(self.ctx_pos).float(), dim=-1)
        t_neg = F.normalize(self.text_encoder(self.ctx_neg).float(), dim=-1)
        scale = self.logit_scale
        return scale * f @ t_pos.T, scale * f.detach() @ t_neg.T

    def logits(self, x: Tensor) -> Tensor:
        if self.phase == 1:
            return self.prompt_logits(x)[0]
        return self.head(self.image_features(x))

    def _real(self, key: str) -> bool:
        value = self.p1[key]
        return self.facts.noise_protocol == "real" if value == "auto" else value == "on"

    @property
    def warmup_epochs(self) -> int:
        """1 epoch under synthetic noise, 5 under real noise (DeFT's settings) when `auto`."""
        w = self.p1["warmup"]
        return (5 if self.facts.noise_protocol == "real" else 1) if w == "auto" else int(w)

    def verdict(self, margin: Tensor, labels: Tensor) -> Tensor:
        """From the margin pos − neg (core.deft_margin), which does not saturate as p_yes does."""
        return core.deft_clean_verdict(margin, labels, float(self.p1["threshold"]), self._real("require_argmax"))

    # ---- optimisers -----------------------------------------------------------------------------
    def configure_optimizers(self):
        p1 = self.p1
        opt1 = torch.optim.SGD([self.ctx_pos, self.ctx_neg, self.vpt], lr=float(p1["lr"]),
                               momentum=float(p1["momentum"]), weight_decay=float(p1["weight_decay"]))
        e1, e2 = self.phase1_epochs, self.max_epochs - self.phase1_epochs
        o = self.optim
        if o.get("name", "sgd") != "sgd":
            raise ValueError(f"DeFT's phase 2 uses SGD (model.optim.name=sgd), got {o.get('name')!r}")
        lr2 = float(o.get("lr", 5e-4))
        opt2 = torch.optim.SGD([*self.clip.visual.parameters(), *self.head.parameters()], lr=lr2,
                               momentum=float(o.get("momentum", 0.9)), weight_decay=float(o.get("weight_decay", 5e-4)))
        warm, warm_lr = int(o.get("warmup_epochs", 0)), float(o.get("warmup_lr", 0.0))
        s1 = torch.optim.lr_scheduler.LambdaLR(opt1, lambda e: warmup_cosine_factor(e, e1, float(p1["lr"]), 0, 0.0))
        s2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda e: warmup_cosine_factor(e, e2, lr2, warm, warm_lr))
        return [opt1, opt2], [{"scheduler": s1, "interval": "epoch"}, {"scheduler": s2, "interval": "epoch"}]

    # ---- epochs ---------------------------------------------------------------------------------
    def _set_phase(self, epoch: int) -> None:
        self.phase = 1 if epoch < self.phase1_epochs else 2
        for p in self.clip.visual.parameters():
            p.requires_grad_(self.phase == 2)

    def update_epoch_state(self) -> dict[str, float] | None:
        self._set_phase(self.current_epoch)
        self._epoch_masks = {}
        if self.phase == 1 or self.final_verdicts is not None:
            return None
        # Start of phase 2: the phase-1 detector's verdicts over the un-augmented training set [choice: an
        # eval pass with the final prompts, rather than the last epoch's augmented training batches].
        self.phase = 1
        try:
            v, extra = self.score_training_set()
        finally:
            self.phase = 2
        self.final_verdicts = v
        if not bool(v.clean_mask.any()):
            # Phase 2 trains on the clean set only: with none, the tower and head never move and the run
            # would report the initial head's accuracy as DeFT's. Say so rather than return it silently.
            log.warning("DeFT: the phase-1 detector judged no training sample clean (p_yes at the given label "
                        "> model.phase1.threshold=%s); phase 2 will not train. Consider more phase-1 epochs "
                        "(model.phase1.epochs).", self.p1["threshold"])
        return self.record_verdicts(v, **extra)

    def _p_yes_outputs(self, x: Tensor) -> dict[str, Tensor]:
        pos, neg = self.prompt_logits(x)
        return {"margin": core.deft_margin(pos, neg), "pos": pos}

    def score_training_set(self, dm: Any = None) -> tuple[Verdicts, dict[str, float]]:
        if self.final_verdicts is not None:
            return self.final_verdicts, {}
        saved = self.phase
        self.phase = 1
        try:
            out, given, clean, dm = training_set_pass(self, self._p_yes_outputs, dm, desc="DeFT detection")
        finally:
            self.phase = saved
        margin = out["margin"]
        mask = self.verdict(margin, given)
        # The suggested label is the positive-prompt classifier's prediction (the target DeFT trains a
        # noisy sample towards after warm-up). argmax_k p_yes_k is not a classifier: each p_yes_k is a
        # separate yes/no score, and its argmax scored below chance on the synthetic world.
        confidence, suggested = out["pos"].softmax(dim=1).max(dim=1)
        true = self.known_true(clean)
        p_yes_given = torch.sigmoid(margin.gather(1, given[:, None]).squeeze(1))  # label_issues.csv's method_score
        v = Verdicts(self.phase1_epochs, given, true, mask, p_yes_given, suggested, confidence)
        return v, {"final_detection": 1.0}

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        sched1, sched2 = self.lr_schedulers()
        (sched1 if self.phase == 1 else sched2).step()
        if self.phase == 1 and self._epoch_masks:
            # Clean-set size (and detector quality) of this phase-1 epoch, from its training batches.
            m = self._epoch_masks
            n = int(m["seen"].sum())
            true = self.known_true(m["true"])
            sel = m["seen"]
            stats = core.verdict_stats(m["clean"][sel], m["given"][sel], None if true is None else true[sel])
            stats["phase"] = 1.0
            self.purification_history.append({"epoch": self.current_epoch, **stats})
            self.log_dict({f"purify/{k}": v for k, v in stats.items()}, on_step=False, on_epoch=True)
            log.info("DeFT phase-1 epoch %d: %d samples, clean fraction %.4g", self.current_epoch + 1, n,
                     stats["clean_fraction"])

    def _remember(self, idx: Tensor, clean: Tensor, given: Tensor, true: Tensor) -> None:
        source = self.data_source()
        n = source.num_train() if source is not None else int(idx.max()) + 1
        if not self._epoch_masks:
            dev = idx.device
            self._epoch_masks = {"seen": torch.zeros(n, dtype=torch.bool, device=dev),
                                 "clean": torch.zeros(n, dtype=torch.bool, device=dev),
                                 "given": torch.zeros(n, dtype=torch.long, device=dev),
                                 "true": torch.zeros(n, dtype=torch.long, device=dev)}
        m = self._epoch_masks
        m["seen"][idx], m["clean"][idx], m["given"][idx], m["true"][idx] = True, clean, given, true

    # ---- training -------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> None:
        opt1, opt2 = self.optimizers()
        x, y = batch["x"], batch["label"].long()
        n = len(y)
        if self.phase == 1:
            pos, neg = self.prompt_logits(x)
            with torch.no_grad():
                clean = self.verdict(core.deft_margin(pos, neg), y)
            self._remember(batch["index"].long(), clean, y, batch["clean_label"].long().to(y.device))
            warm = self.current_epoch < self.warmup_epochs
            comp = core.complementary_labels(y, self.num_classes, self.mix_generator)
            terms = core.deft_losses(pos, neg, y, comp, clean=None if warm else clean)
            if warm and self._real("sce"):
                terms["l_cls"] = core.symmetric_cross_entropy(pos, y, float(self.p1["sce_alpha"]), float(self.p1["sce_beta"]))
            loss = terms["l_cls"] + terms["l_neg"]
            opt1.zero_grad()
            self.manual_backward(loss)
            opt1.step()
            self.log_dict({"train/loss": loss.detach(), **{f"train/{k}": v.detach() for k, v in terms.items()},
                           "train/clean_in_batch": clean.float().mean()}, on_step=False, on_epoch=True, batch_size=n)
            return
        if self.final_verdicts is None:
            raise RuntimeError("DeFT phase 2 before the phase-1 verdicts (on_train_epoch_start did not run)")
        idx = batch["index"].to(self.final_verdicts.clean_mask.device).long()
        clean = self.final_verdicts.clean_mask[idx].to(y.device)
        logits = self.head(self.image_features(x)).float()
        ce = F.cross_entropy(logits, y, reduction="none")
        loss = torch.where(clean, ce, torch.zeros_like(ce)).sum() / clean.sum().clamp_min(1)
        opt2.zero_grad()
        self.manual_backward(loss)
        opt2.step()
        self.log_dict({"train/loss": loss.detach(), "train/clean_in_batch": clean.float().mean()},
                      on_step=False, on_epoch=True, batch_size=n)

    # ---- state ----------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        v = self.final_verdicts
        checkpoint["deft"] = {"phase": self.phase, "final_verdicts": None if v is None else {
            k: (None if getattr(v, k) is None else getattr(v, k).cpu()) if k != "epoch" else v.epoch
            for k in ("epoch", "given", "true", "clean_mask", "score", "suggested", "confidence")}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("deft")
        if state:
            self.phase = int(state["phase"])
            if state["final_verdicts"] is not None:
                self.final_verdicts = Verdicts(**state["final_verdicts"])
                self.verdicts = self.final_verdicts
