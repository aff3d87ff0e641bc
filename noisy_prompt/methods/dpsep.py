"""DP-SEP: dual-polarity prompts (positive + negative contexts, PAR objectives) and the stochastic
entropy-perturbation loss, over a frozen CLIP. Ablations (dp, sep, sep_no_perturbation) are configs
of this module: `negative` switches the negative prompt and PAR off, `lam`/`sigma` the SEP terms.
Prediction uses the positive branch only.

The readings of the paper's garbled parts (docs/methods.md, DP-SEP, "Readings") are switches whose defaults
are the documented readings: `sep_sign` (intent | printed), `par_mode` (additive | gate: PAR gates each sample's
CE), `a_pos_reduction` (mean | sum); the phrase initialisation is `ctx_init`/`n_ctx`.
"""
from __future__ import annotations

import torch
from torch import nn

from noisy_prompt.losses import (
    A_POS_REDUCTIONS,
    PAR_MODES,
    SEP_SIGNS,
    DerangementSampler,
    alpha_schedule,
    dpsep_total,
    par_gate_weights,
    par_losses,
    sep_loss,
)
from noisy_prompt.methods.coop import CoOp


class DPSEP(CoOp):
    def __init__(self, negative: bool = True, lam: float = 0.1, sigma: float = 0.1, detach_p: bool = False,
                 mu_pos: float = 0.5, mu_neg: float = 0.5, alpha_min: float = 0.1, beta: float = 1.0,
                 reorder: str = "random", resample: str = "step", shift: int = 1, sep_sign: str = "intent",
                 par_mode: str = "additive", a_pos_reduction: str = "mean", **kwargs):
        # Config errors before the (slow) backbone is built.
        for key, value, allowed in (("sep_sign", sep_sign, SEP_SIGNS), ("par_mode", par_mode, PAR_MODES),
                                    ("a_pos_reduction", a_pos_reduction, A_POS_REDUCTIONS)):
            if value not in allowed:
                raise ValueError(f"model.{key} must be one of {', '.join(allowed)}, got {value!r}")
        if par_mode == "gate" and not negative:
            # The gate reads the negative branch's probability at the label: without it there is nothing to gate on.
            raise ValueError("model.par_mode=gate needs model.negative=true (the gate uses both PAR hinges)")
        super().__init__(**kwargs)
        self.sep_sign, self.par_mode, self.a_pos_reduction = sep_sign, par_mode, a_pos_reduction
        self.negative = bool(negative)
        self.lam, self.sigma, self.detach_p = float(lam), float(sigma), bool(detach_p)
        self.mu_pos, self.mu_neg, self.alpha_min, self.beta = float(mu_pos), float(mu_neg), float(alpha_min), float(beta)
        if self.negative:
            # Drawn after the positive context from the same seeded stream: repeatable, and different from it.
            gen = torch.Generator().manual_seed(self.seed + 7919)
            std = kwargs.get("ctx_std", 0.02)
            self.ctx_neg = nn.Parameter(self.prompt_encoder.init_context(kwargs.get("ctx_init"), self.tokenizer, std, gen))
            self.derangement = DerangementSampler(self.num_classes, mode=reorder, resample=resample, seed=self.seed, shift=shift)

    def branch_logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        v = self.image_features(x)
        cos_pos = v @ self.text_features(self.ctx).t()
        out = {"cos_pos": cos_pos, "logits_pos": self.logit_scale * cos_pos}
        if self.negative:
            pi = self.derangement.current.to(v.device)
            cos_neg = v @ self.text_features(self.ctx_neg, pi).t()
            out.update(cos_neg=cos_neg, logits_neg=self.logit_scale * cos_neg)
        return out

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """All loss components of one batch; `train/loss` is the total that is optimised."""
        out = self.branch_logits(x)
        weights = None
        if self.par_mode == "gate":
            weights = par_gate_weights(out["logits_pos"], out["logits_neg"], y, mu_pos=self.mu_pos, mu_neg=self.mu_neg)
        sep = sep_loss(out["logits_pos"], y, lam=self.lam, sigma=self.sigma, detach_p=self.detach_p,
                       sign=self.sep_sign, ce_weights=weights)
        parts = {"train/ce": sep["ce"], "train/entropy_term": sep["entropy_term"]}
        if weights is not None:
            parts["train/gate_open"] = weights.mean()  # share of the batch whose CE term is kept
        if self.negative:
            par = par_losses(out["logits_pos"], out["logits_neg"], out["cos_pos"], out["cos_neg"], y,
                             mu_pos=self.mu_pos, mu_neg=self.mu_neg, a_pos_reduction=self.a_pos_reduction)
            alpha = alpha_schedule(self.current_epoch + 1, self.max_epochs, self.alpha_min)
            loss = dpsep_total(sep, par, alpha, self.beta)
            parts.update({"train/a_pos": par["a_pos"], "train/a_neg": par["a_neg"], "train/mc": par["mc"],
                          "train/alpha": torch.tensor(alpha)})
        else:
            loss = sep["loss"]
        parts["train/loss"] = loss
        return parts

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        y = batch["label"]
        parts = self.losses(batch["x"], y)
        loss = parts["train/loss"]
        self.log_dict(parts, on_step=False, on_epoch=True, batch_size=len(y))
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False, logger=False, batch_size=len(y))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.negative:
            self.derangement.on_step()

    def on_train_epoch_end(self) -> None:
        if self.negative:
            self.derangement.on_epoch()
        super().on_train_epoch_end()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.negative:
            checkpoint["derangement"] = self.derangement.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.negative and "derangement" in checkpoint:
            self.derangement.load_state_dict(checkpoint["derangement"])
