"""Text-Anchored Classifier (TAC): class probabilities from similarities to frozen text anchors.

p(c | x) = sum_{j in c} exp(tau v.t_j) / sum_j exp(tau v.t_j), computed in log space as
logsumexp over class c's anchors minus logsumexp over all anchors.
"""
from __future__ import annotations

import torch
from torch import Tensor


TAC_FORMS = ("logsumexp", "literal")


def tac_temperature(form: str, tau: float | None, logit_scale: float) -> float:
    """The τ that `tac_log_probs` uses for a reading of the TAC (docs/methods.md, TANGO, `model.tac_form`).

    logsumexp (default): τ = `tau`, or CLIP's logit scale when tau is None.
    literal: the formula as printed, a_ij = exp(v·t_j) with no temperature, i.e. τ = 1 (per-class
    sums then lie in [K/e, K·e] and the softmax is nearly flat); a `tau` set with it is a contradiction.
    """
    if form not in TAC_FORMS:
        raise ValueError(f"model.tac_form must be one of {', '.join(TAC_FORMS)}, got {form!r}")
    if form == "literal":
        if tau is not None:
            raise ValueError(f"model.tac_form=literal has no temperature (τ = 1); leave model.tau empty, got tau={tau}")
        return 1.0
    return float(logit_scale) if tau is None else float(tau)


def class_anchor_table(anchor_labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(C, K_max) anchor indices per class and a mask of the real (non-padding) entries.

    Classes may own different numbers of anchors (a CuPL file with fewer than K sentences), so the
    per-class sets are padded to the largest one; padded slots are masked out.
    """
    if anchor_labels.dim() != 1:
        raise ValueError(f"anchor_labels must be 1-D (A,), got shape {tuple(anchor_labels.shape)}")
    if anchor_labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"anchor_labels must be an integer tensor, got {anchor_labels.dtype}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    labels = anchor_labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"anchor_labels must lie in [0, {num_classes}), got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    counts = torch.bincount(labels, minlength=num_classes)
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        raise ValueError(
            f"TAC needs at least one anchor per class; classes without anchors: {missing[:20]}"
            + (f" (+{len(missing) - 20} more)" if len(missing) > 20 else "")
        )
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(labels.numel(), device=labels.device) - starts[sorted_labels]
    k_max = int(counts.max())
    index = torch.zeros(num_classes, k_max, dtype=torch.long, device=labels.device)
    mask = torch.zeros(num_classes, k_max, dtype=torch.bool, device=labels.device)
    index[sorted_labels, slot] = order
    mask[sorted_labels, slot] = True
    return index, mask


def tac_log_probs(
    image_feats: Tensor,
    anchors: Tensor,
    anchor_labels: Tensor,
    num_classes: int,
    tau: float | Tensor,
    anchor_table: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """log p(c | x_i) of the TAC, shape (N, C), float32.

    image_feats (N, D) and anchors (A, D) are expected L2-normalised; anchor_labels (A,) holds each
    anchor's class. Differentiable w.r.t. image_feats and anchors. Raises ValueError when a class
    has no anchor (its probability would be identically zero). `anchor_table` is
    `class_anchor_table(anchor_labels, num_classes)` precomputed once, to skip the per-call checks
    (and their device syncs) when the anchors never change.
    """
    if image_feats.dim() != 2 or anchors.dim() != 2:
        raise ValueError(
            f"image_feats and anchors must be 2-D, got {tuple(image_feats.shape)} and {tuple(anchors.shape)}"
        )
    if image_feats.shape[1] != anchors.shape[1]:
        raise ValueError(
            f"feature dims differ: image_feats has D={image_feats.shape[1]}, anchors D={anchors.shape[1]}"
        )
    if anchor_labels.shape != (anchors.shape[0],):
        raise ValueError(
            f"anchor_labels must have shape ({anchors.shape[0]},), got {tuple(anchor_labels.shape)}"
        )
    if anchor_table is None:
        anchor_table = class_anchor_table(anchor_labels.to(anchors.device), num_classes)
    index, mask = anchor_table
    if index.shape[0] != num_classes:
        raise ValueError(f"anchor_table covers {index.shape[0]} classes, expected {num_classes}")
    # Under mixed precision a bf16/fp16 cosine times tau=100 is off by ~0.5 in logit units;
    # the product is small (N x A), so it is done in float32 regardless of autocast.
    with torch.autocast(device_type=image_feats.device.type, enabled=False):
        sims = image_feats.float() @ anchors.float().T  # (N, A)
        sims = sims * (tau.float() if isinstance(tau, Tensor) else float(tau))
        per_class = sims[:, index].masked_fill(~mask, float("-inf"))  # (N, C, K_max)
        # A per-class logsumexp keeps far classes finite: with a single global max subtracted,
        # a class 200 logit units below the best one would underflow to log(0) = -inf.
        class_lse = torch.logsumexp(per_class, dim=-1)  # (N, C)
        return class_lse - torch.logsumexp(class_lse, dim=-1, keepdim=True)
