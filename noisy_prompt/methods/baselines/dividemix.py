"""DivideMix (Li, Socher, Hoi, ICLR 2020) on two CLIP vision towers (docs/methods.md, Baselines).

Network A is CLIP's vision tower with head A, network B a deep copy of the pretrained tower with head B
(the heads differ by a seeded perturbation). Warm-up with CE; then before every epoch each network fits
a 2-component GMM to its normalised per-sample losses (co-divide: A's split trains B and vice versa);
each step trains A, then B, with MixMatch: refined labels for the labelled part, co-guessed labels for
the unlabelled part, L = L_x + λ_u L_u + λ_prior · uniform prior. Test predictions: the sum of both
networks' logits. Two towers train, so the optimiser state is twice TANGO's: still one GPU for ViT-B/16.
"""
from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from noisy_prompt.losses import soft_cross_entropy
from noisy_prompt.methods.base import range_problems
from noisy_prompt.methods.selection import training_set_pass
from noisy_prompt.methods.schedules import warmup_cosine_factor

from . import core
from .common import BaselineModule, Verdicts, augment_view

log = logging.getLogger(__name__)

PENALTY_MODES = ("auto", "on", "off")
GMM_KEYS = {"n_iter", "tol", "reg_covar"}


class DivideMix(BaselineModule):
    single_device_only = True

    @classmethod
    def config_problems(cls, config: dict) -> list[str]:
        out = super().config_problems(config)
        out += range_problems(config, "model", {
            "warmup_epochs": (0, float("inf"), True, "an integer >= 0"),
            "p_threshold": (0.0, 1.0, False, "a probability in (0, 1)"),
            "temperature": (0.0, float("inf"), False, "a number > 0"),
            "mixup_alpha": (0.0, float("inf"), False, "a number > 0"),
            "lambda_u": (0.0, float("inf"), True, "a number >= 0"),
            "lambda_prior": (0.0, float("inf"), True, "a number >= 0")})
        if config.get("confidence_penalty", "auto") not in PENALTY_MODES:
            out.append(f"model.confidence_penalty must be one of {PENALTY_MODES}, got {config['confidence_penalty']!r}")
        gmm = dict(config.get("gmm") or {})
        unknown = set(gmm) - GMM_KEYS
        if unknown:
            out.append(f"model.gmm: unknown keys {sorted(unknown)}; expected {sorted(GMM_KEYS)}")
        out += range_problems(gmm, "model.gmm", {"n_iter": (1, float("inf"), True, "an integer >= 1 (the EM cap)"),
                                                 "tol": (0.0, float("inf"), True, "a number >= 0"),
                                                 "reg_covar": (0.0, float("inf"), True, "a number >= 0")})
        return out

    def __init__(self, warmup_epochs: int = 1, p_threshold: float = 0.5, temperature: float = 0.5,
                 mixup_alpha: float = 4.0, lambda_u: float = 25.0, rampup_epochs: float = 16.0,
                 lambda_prior: float = 1.0, confidence_penalty: str = "auto", head_jitter: float = 0.1,
                 gmm: dict | None = None, **kwargs):
        if int(warmup_epochs) < 0 or not 0.0 < float(p_threshold) < 1.0 or float(temperature) <= 0:
            raise ValueError(f"model.warmup_epochs must be >= 0, model.p_threshold in (0, 1) and model.temperature > 0; "
                             f"got {warmup_epochs}, {p_threshold}, {temperature}")
        if confidence_penalty not in PENALTY_MODES:
            raise ValueError(f"model.confidence_penalty must be one of {PENALTY_MODES}, got {confidence_penalty!r}")
        gmm_cfg = {"n_iter": core.GMM_MAX_ITER, "tol": core.GMM_TOL, "reg_covar": 5e-4, **dict(gmm or {})}
        unknown = set(gmm_cfg) - GMM_KEYS
        if unknown:
            raise ValueError(f"model.gmm: unknown keys {sorted(unknown)}; expected {sorted(GMM_KEYS)}")
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self.warmup_epochs, self.p_threshold, self.temperature = int(warmup_epochs), float(p_threshold), float(temperature)
        self.mixup_alpha, self.lambda_u, self.rampup_epochs = float(mixup_alpha), float(lambda_u), float(rampup_epochs)
        self.lambda_prior, self.confidence_penalty_mode = float(lambda_prior), confidence_penalty
        self.gmm_cfg = gmm_cfg
        # Network B: the same pretrained tower, its own head; both heads start from the zero-shot (or random)
        # classifier, B's perturbed with a seeded draw so that the two networks differ from the first step.
        self.visual_b = copy.deepcopy(self.clip.visual)
        for p in self.visual_b.parameters():
            p.requires_grad_(True)
        self.head = self.make_head()
        self.head_b = self.make_head()
        gen = torch.Generator().manual_seed(self.seed + 7)
        with torch.no_grad():
            w = self.head_b.weight
            scale = float(w.norm(dim=1).mean()) / max(1, w.shape[1]) ** 0.5
            w.add_(float(head_jitter) * scale * torch.randn(w.shape, generator=gen))
        self.p_clean: dict[str, Tensor] = {}
        self.given_labels: Tensor | None = None

    # ---- networks -------------------------------------------------------------------------------
    def net_logits(self, net: str, x: Tensor) -> Tensor:
        if net == "a":
            return self.head(self.image_features(x))
        return self.head_b(F.normalize(self.visual_b(x).float(), dim=-1))

    def logits(self, x: Tensor) -> Tensor:
        """The sum of both networks' logits (DivideMix's test rule)."""
        return self.net_logits("a", x) + self.net_logits("b", x)

    def configure_optimizers(self):
        o = self.optim
        lr, E = float(o.get("lr", 5e-4)), self.max_epochs
        warm, warm_lr = int(o.get("warmup_epochs", 0)), float(o.get("warmup_lr", 0.0))
        if o.get("name", "sgd") != "sgd":
            raise ValueError(f"DivideMix uses SGD (model.optim.name=sgd), got {o.get('name')!r}")
        out = []
        for params in ([*self.clip.visual.parameters(), *self.head.parameters()],
                       [*self.visual_b.parameters(), *self.head_b.parameters()]):
            opt = torch.optim.SGD(params, lr=lr, momentum=float(o.get("momentum", 0.9)),
                                  weight_decay=float(o.get("weight_decay", 5e-4)))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: warmup_cosine_factor(e, E, lr, warm, warm_lr))
            out.append((opt, sched))
        return [o for o, _ in out], [{"scheduler": s, "interval": "epoch"} for _, s in out]

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        for sched in self.lr_schedulers():
            sched.step()

    # ---- co-divide ------------------------------------------------------------------------------
    def _both_logits(self, x: Tensor) -> dict[str, Tensor]:
        return {"a": self.net_logits("a", x), "b": self.net_logits("b", x)}

    def score_training_set(self, dm: Any = None) -> tuple[Verdicts, dict[str, float]]:
        out, given, clean, dm = training_set_pass(self, self._both_logits, dm,
                                                  desc=f"DivideMix epoch {self.current_epoch + 1}")
        p = {}
        for net in ("a", "b"):
            losses = F.cross_entropy(out[net].float(), given, reduction="none")
            p[net] = core.gmm_clean_probability(losses, **self.gmm_cfg).float()
        self.p_clean, self.given_labels = p, given
        true = self.known_true(clean)
        score = (p["a"] + p["b"]) / 2
        probs = (torch.softmax(out["a"].float(), 1) + torch.softmax(out["b"].float(), 1)) / 2
        confidence, suggested = probs.max(dim=1)
        # The file's verdict: the mean of the two networks' clean posteriors above the threshold [choice].
        v = Verdicts(self.current_epoch, given, true, score > self.p_threshold, score, suggested, confidence)
        extra = {}
        for net in ("a", "b"):
            stats = core.verdict_stats(p[net] > self.p_threshold, given, true)
            extra.update({f"{key}_{net}": val for key, val in stats.items() if key in ("num_clean", "precision", "recall")})
        return v, extra

    def update_epoch_state(self) -> dict[str, float] | None:
        if self.current_epoch < self.warmup_epochs:
            return None  # warm-up: CE on all samples, no division yet
        return super().update_epoch_state()

    def penalty_on(self) -> bool:
        """The warm-up confidence penalty: on under asymmetric noise (the paper's rule) when `auto`."""
        if self.confidence_penalty_mode != "auto":
            return self.confidence_penalty_mode == "on"
        return self.facts.noise_protocol.startswith("asym")

    # ---- training -------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> None:
        opts = dict(zip("ab", self.optimizers()))
        x, y = batch["x"], batch["label"].long()
        n = len(y)
        if self.current_epoch < self.warmup_epochs:
            for net in "ab":
                logits = self.net_logits(net, x)
                loss = F.cross_entropy(logits.float(), y)
                if self.penalty_on():
                    loss = loss + core.confidence_penalty(logits)
                opts[net].zero_grad()
                self.manual_backward(loss)
                opts[net].step()
                self.log(f"train/loss_{net}", loss.detach(), on_step=False, on_epoch=True, batch_size=n)
            return
        if not self.p_clean:
            raise RuntimeError("training_step after warm-up before any co-divide (on_train_epoch_start did not run)")
        idx = batch["index"].to(self.p_clean["a"].device).long()
        x2 = augment_view(x, self.aug_generator)
        num_batches = max(1, int(self.trainer.num_training_batches)) if self._trainer is not None else 1
        ramp = core.linear_rampup(self.current_epoch + batch_idx / num_batches, self.warmup_epochs, self.rampup_epochs)
        for net, other in (("a", "b"), ("b", "a")):
            terms = self.mixmatch_losses(net, other, x, x2, y, self.p_clean[other][idx].to(x.device))
            loss = terms["l_x"] + self.lambda_u * ramp * terms["l_u"] + self.lambda_prior * terms["l_prior"]
            opts[net].zero_grad()
            self.manual_backward(loss)
            opts[net].step()
            self.log_dict({f"train/loss_{net}": loss.detach(), **{f"train/{k}_{net}": v.detach() for k, v in terms.items()}},
                          on_step=False, on_epoch=True, batch_size=n)
        self.log("train/lambda_u", self.lambda_u * ramp, on_step=False, on_epoch=True, batch_size=n)

    def mixmatch_losses(self, net: str, other: str, x: Tensor, x2: Tensor, y: Tensor, w_clean: Tensor) -> dict[str, Tensor]:
        """One network's MixMatch terms on a batch split by the other network's clean posteriors `w_clean`."""
        lab = w_clean > self.p_threshold
        nl, nu = int(lab.sum()), int((~lab).sum())
        with torch.no_grad():
            parts_x, parts_u = [], []
            if nl:
                p_mean = (torch.softmax(self.net_logits(net, x[lab]).float(), 1)
                          + torch.softmax(self.net_logits(net, x2[lab]).float(), 1)) / 2
                t_x = core.refine_labels(F.one_hot(y[lab], self.num_classes).float(), w_clean[lab], p_mean, self.temperature)
                parts_x = [t_x, t_x]
            if nu:
                probs = [torch.softmax(self.net_logits(m, v[~lab]).float(), 1) for m in (net, other) for v in (x, x2)]
                t_u = core.co_guess(probs, self.temperature)
                parts_u = [t_u, t_u]
        inputs = torch.cat([x[lab], x2[lab], x[~lab], x2[~lab]])
        targets = torch.cat(parts_x + parts_u)
        x_mix, t_mix, _, _ = core.mixup_max(inputs, targets, self.mixup_alpha, self.mix_generator)
        logits = self.net_logits(net, x_mix).float()
        zero = logits.sum() * 0.0
        l_x = soft_cross_entropy(logits[: 2 * nl], t_mix[: 2 * nl]) if nl else zero
        l_u = ((torch.softmax(logits[2 * nl:], 1) - t_mix[2 * nl:]) ** 2).mean() if nu else zero
        return {"l_x": l_x, "l_u": l_u, "l_prior": core.uniform_prior_penalty(logits),
                "labelled": torch.tensor(float(nl) / len(y))}
