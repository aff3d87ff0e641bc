"""SSR (Feng et al., BMVC 2022) and LSL (Kim et al., CVPR 2024) on the CLIP vision tower (docs/methods.md, Baselines).

Before every epoch, with the current model in eval mode over the un-augmented training set:
relabel confident predictions (θ_r), select by a similarity-weighted, class-prior-normalised k-NN vote
on the working labels (θ_s); LSL adds reverse-k-NN structural labels. Training: Mixup CE on the clean
samples (class-balanced), SimSiam feature consistency over all samples, and for LSL a Mixup soft-CE of
the strong view against the structural labels.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from noisy_prompt.losses import soft_cross_entropy
from noisy_prompt.methods.selection import training_set_pass
from noisy_prompt.methods.tango.purification import resolve_k

from . import core
from .common import BaselineModule, Verdicts, augment_view, mlp

BALANCE_MODES = ("weights", "none")


def _weighted_soft_ce(logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """Σ_i w_i CE_i / Σ_i w_i (0 with a zero gradient when all weights are 0)."""
    ce = -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    return (weights * ce).sum() / weights.sum().clamp_min(1e-12)


class SSR(BaselineModule):
    keeps_features = False
    # Weights of the subclass's extra loss terms (extra_losses), by name.
    extra_weights: dict[str, float] = {}

    def __init__(self, k: int | str = 200, theta_r: float = 0.9, theta_s: float = 1.0, vote_weighting: str = "similarity",
                 exclude_self: bool = True, prior_normalise: bool = True, lambda_fc: float = 1.0,
                 mixup_alpha: float = 4.0, proj_dim: int = 128, hidden_dim: int = 256, balance: str = "weights",
                 **kwargs):
        resolve_k(k, 1, 1)  # a positive integer or 'auto' (checked before the backbone is built)
        if not 0.0 <= float(theta_r) <= 1.0 or not 0.0 <= float(theta_s) <= 1.0:
            raise ValueError(f"model.theta_r and model.theta_s must lie in [0, 1], got {theta_r} and {theta_s}")
        if vote_weighting not in core.VOTE_WEIGHTINGS:
            raise ValueError(f"model.vote_weighting must be one of {core.VOTE_WEIGHTINGS}, got {vote_weighting!r}")
        if balance not in BALANCE_MODES:
            raise ValueError(f"model.balance must be one of {BALANCE_MODES}, got {balance!r}")
        if float(mixup_alpha) < 0 or float(lambda_fc) < 0:
            raise ValueError(f"model.mixup_alpha and model.lambda_fc must be >= 0, got {mixup_alpha} and {lambda_fc}")
        super().__init__(**kwargs)
        self.knn_k_cfg = k if isinstance(k, str) else int(k)
        self.theta_r, self.theta_s = float(theta_r), float(theta_s)
        self.vote_weighting, self.exclude_self, self.prior_normalise = vote_weighting, bool(exclude_self), bool(prior_normalise)
        self.lambda_fc, self.mixup_alpha, self.balance = float(lambda_fc), float(mixup_alpha), balance
        self.head = self.make_head()
        self.proj_head = mlp(self.feature_dim, int(hidden_dim), int(proj_dim))
        self.pred_head = mlp(int(proj_dim), int(hidden_dim), int(proj_dim))
        self.working: Tensor | None = None  # (N,) working labels after relabelling
        self.sample_weight: Tensor | None = None  # (N,) class-balanced weights of the clean samples

    def logits(self, x: Tensor) -> Tensor:
        return self.head(self.image_features(x))

    # ---- before each epoch ----------------------------------------------------------------------
    def _features_and_probs(self, x: Tensor) -> dict[str, Tensor]:
        f = self.image_features(x)
        return {"feats": f, "probs": torch.softmax(self.head(f).float(), dim=1)}

    def score_training_set(self, dm: Any = None) -> tuple[Verdicts, dict[str, float]]:
        out, given, clean, dm = training_set_pass(self, self._features_and_probs, dm,
                                                  desc=f"{type(self).__name__} epoch {self.current_epoch + 1}")
        feats, probs = out["feats"], out["probs"]
        working, relabelled = core.ssr_relabel(probs, given, self.theta_r)
        # k: auto scales TANGO's k = 200 (CIFAR-100) to the served images per class, as TANGO's vote does.
        self.knn_k = resolve_k(self.knn_k_cfg, feats.shape[0], self.num_classes)
        vote = core.weighted_knn_vote(feats, working, self.num_classes, self.knn_k, self.block_size,
                                      self.vote_weighting, self.exclude_self, self.prior_normalise)
        clean_mask, _ = core.ssr_select(vote, working, self.theta_s)
        self.working = working
        self.sample_weight = (core.class_balanced_weights(working, clean_mask, self.num_classes)
                              if self.balance == "weights" else clean_mask.float())
        self.epoch_feats = feats if self.keeps_features else None  # LSL's structural labels reuse them
        true = self.known_true(clean)
        # label_issues method_score: the vote's share at the given label, relative to the top class (SSR's score).
        score = vote.gather(1, given[:, None]).squeeze(1) / vote.max(dim=1).values.clamp_min(1e-30)
        v = Verdicts(self.current_epoch, given, true, clean_mask, score, working,
                     torch.where(relabelled, probs.max(dim=1).values, vote.gather(1, working[:, None]).squeeze(1)))
        extra = {"num_relabelled": float(relabelled.sum()), "k": float(self.knn_k)}
        if true is not None:
            extra["relabel_acc"] = float((working[relabelled] == true[relabelled]).float().mean()) if relabelled.any() else 0.0
        return v, extra

    # ---- training -------------------------------------------------------------------------------
    def _batch_state(self, batch: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if self.working is None or self.verdicts is None:
            raise RuntimeError("training_step before any selection (on_train_epoch_start did not run)")
        idx = batch["index"].to(self.working.device).long()
        return idx, self.working[idx], self.verdicts.clean_mask[idx], self.sample_weight[idx]

    def clean_mixup_inputs(self, x: Tensor, x2: Tensor, working: Tensor, clean: Tensor, weight: Tensor):
        """Both views of the clean samples, their one-hot working labels and balance weights, mixed (SSR)."""
        sel = clean.to(x.device)
        xs = torch.cat([x[sel], x2[sel]])
        if xs.shape[0] == 0:
            return None
        t = F.one_hot(working[sel.to(working.device)], self.num_classes).float().to(x.device)
        w = weight[sel.to(weight.device)].to(x.device)
        targets, weights = torch.cat([t, t]), torch.cat([w, w])
        x_mix, t_mix, lam, perm = core.mixup_max(xs, targets, self.mixup_alpha, self.mix_generator)
        return x_mix, t_mix, lam * weights + (1.0 - lam) * weights[perm]

    def extra_inputs(self, batch: dict, x2: Tensor, idx: Tensor) -> list[Tensor]:
        """Further images to encode in the same forward pass (LSL's mixed strong views)."""
        return []

    def extra_losses(self, feats: list[Tensor], batch: dict, idx: Tensor) -> dict[str, Tensor]:
        return {}

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        x = batch["x"]
        idx, working, clean, weight = self._batch_state(batch)
        x2 = augment_view(x, self.aug_generator)
        mixed = self.clean_mixup_inputs(x, x2, working, clean, weight)
        extra_in = self.extra_inputs(batch, x2, idx)
        chunks = ([mixed[0]] if mixed is not None else []) + [x, x2] + extra_in
        # One forward over every image of the step: a ViT has no batch statistics to mix.
        feats = self.image_features(torch.cat(chunks)).split([c.shape[0] for c in chunks])
        if mixed is not None:
            l_ce = _weighted_soft_ce(self.head(feats[0]), mixed[1], mixed[2])
            feats = feats[1:]
        else:  # no clean sample in the batch: a zero that still reaches the head (DDP expects every parameter used)
            l_ce = self.head(feats[0]).sum() * 0.0
        f1, f2 = feats[0], feats[1]
        z1 = self.proj_head(f1)
        p2 = self.pred_head(self.proj_head(f2))
        l_fc = core.feature_consistency(p2, z1)
        losses = {"l_ce": l_ce, "l_fc": l_fc, **self.extra_losses(list(feats[2:]), batch, idx)}
        loss = l_ce + self.lambda_fc * l_fc + sum(self.extra_weights[k] * v for k, v in losses.items()
                                                  if k not in ("l_ce", "l_fc"))
        n = len(x)
        self.log_dict({"train/loss": loss, **{f"train/{k}": v for k, v in losses.items()},
                       "train/clean_in_batch": clean.float().mean()}, on_step=False, on_epoch=True, batch_size=n)
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False, logger=False, batch_size=n)
        return loss


# k_st: auto = round(0.04 x images per class): LSL's k_st = 20 at CIFAR-100's 500 images per class, scaled
# like TANGO's k: auto (docs/methods.md, TANGO) for data sets whose classes hold fewer images [choice].
AUTO_K_ST_FRACTION = 0.04


def resolve_k_st(k_st: int | str, num_images: int, num_classes: int) -> int:
    """LSL's reverse-k-NN size: an integer as given, or `auto` = round(0.04 x N/C), at least 1."""
    if isinstance(k_st, str):
        if k_st != "auto":
            raise ValueError(f"model.k_st must be a positive integer or 'auto', got {k_st!r}")
        return max(1, round(AUTO_K_ST_FRACTION * num_images / max(1, num_classes)))
    if isinstance(k_st, bool) or int(k_st) != k_st or int(k_st) < 1:
        raise ValueError(f"model.k_st must be a positive integer or 'auto', got {k_st!r}")
    return int(k_st)


class LSL(SSR):
    """SSR plus structural labels from reverse k-NN, learned by the strong view with Mixup soft-CE."""

    keeps_features = True

    def __init__(self, k_st: int | str = 20, lambda_st: float = 1.0, **kwargs):
        resolve_k_st(k_st, 1, 1)
        if float(lambda_st) < 0:
            raise ValueError(f"model.lambda_st must be >= 0, got {lambda_st}")
        super().__init__(**kwargs)
        self.k_st_cfg = k_st if isinstance(k_st, str) else int(k_st)
        self.k_st, self.lambda_st = None, float(lambda_st)
        self.extra_weights = {"l_st": self.lambda_st}
        self.structural: Tensor | None = None

    def score_training_set(self, dm: Any = None) -> tuple[Verdicts, dict[str, float]]:
        v, extra = super().score_training_set(dm)
        self.k_st = resolve_k_st(self.k_st_cfg, self.epoch_feats.shape[0], self.num_classes)
        self.structural, received = core.structural_labels(self.epoch_feats, self.working, self.num_classes,
                                                           self.k_st, self.block_size)
        self.epoch_feats = None
        extra["num_no_structural"], extra["k_st"] = float((received == 0).sum()), float(self.k_st)
        if v.true is not None:
            extra["structural_acc"] = float((self.structural.argmax(1) == v.true).float().mean())
        return v, extra

    def extra_inputs(self, batch: dict, x2: Tensor, idx: Tensor) -> list[Tensor]:
        targets = self.structural[idx].to(x2.device)
        x_mix, t_mix, _, _ = core.mixup_max(x2, targets, self.mixup_alpha, self.mix_generator)
        self._st_targets = t_mix
        return [x_mix]

    def extra_losses(self, feats: list[Tensor], batch: dict, idx: Tensor) -> dict[str, Tensor]:
        l_st = soft_cross_entropy(self.head(feats[0]), self._st_targets.to(feats[0].dtype))
        return {"l_st": l_st}
