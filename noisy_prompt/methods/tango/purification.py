"""Anchor-guided label purification (TANGO, docs/methods.md "Purification").

Visual evidence (k-NN vote of the noisy labels), semantic evidence (the image's nearest anchors)
and the anchors' own nearest images are combined into a clean-sample selection and soft labels.
Every graph is consumed block by block: nothing of size N x N or |A| x N is ever materialised,
so the same code runs on 50 000 training features on a GPU. `purify_dense` is a literal
matrix transcription of the formulas in docs/methods.md, kept only as a test reference.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .neighbours import capped_k, iter_topk_blocks, neighbour_label_vote


@dataclass
class PurificationResult:
    q: Tensor  # (N, C) selection scores (1 - beta) p_vis + beta p_sem
    clean_mask: Tensor  # (N,) bool, argmax q == noisy label (the set I_c)
    soft_labels: Tensor  # (N, C) corrected labels Y~ = (1 - beta) p_vis + beta y_sem
    p_vis: Tensor  # (N, C) k-NN vote of the noisy labels
    p_sem: Tensor  # (N, C) vote of each image's nearest anchors
    y_sem: Tensor  # (N, C) vote of the anchors that selected the image (p_sem where none did)
    degree: Tensor  # (N,) long, number of anchors that selected each image
    stats: dict[str, float] = field(default_factory=dict)


def _check_labels(labels: Tensor, n: int, num_classes: int, name: str) -> Tensor:
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {labels.dtype}")
    labels = labels.long()
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}), got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels


def _check_feats(feats: Tensor, anchors: Tensor | None = None) -> None:
    if feats.dim() != 2:
        raise ValueError(f"feats must be 2-D (N, D), got shape {tuple(feats.shape)}")
    if anchors is not None:
        if anchors.dim() != 2 or anchors.shape[1] != feats.shape[1]:
            raise ValueError(
                f"anchors must be (A, {feats.shape[1]}) to match feats, got {tuple(anchors.shape)}"
            )
        if anchors.shape[0] == 0:
            raise ValueError("anchors is empty: purification needs at least one anchor")


def anchors_per_image(num_anchors: int, num_classes: int) -> int:
    """|A| / C, the number of nearest anchors each image looks at (at least 1)."""
    return max(1, num_anchors // num_classes)


def default_m(num_images: int, num_classes: int) -> int:
    """m = N / C images per anchor [choice, docs/methods.md], at least 1."""
    return max(1, num_images // num_classes)


KNN_VOTES = ("uniform", "weighted")
# k: auto = round(AUTO_K_FRACTION x images per class): k = 200 at CIFAR-100's 500 images per class
# (docs/methods.md, TANGO), scaled for data sets whose classes hold fewer images.
AUTO_K_FRACTION = 0.4


def resolve_k(k: int | str, num_images: int, num_classes: int) -> int:
    """The k of the visual k-NN vote: an integer as given, or `auto` = round(0.4 x N/C), at least 1.

    N/C comes from the training set actually served (never from a data set's name). The cap at N - 1
    is applied where the neighbours are searched (`capped_k`), for both forms.
    """
    if isinstance(k, str):
        if k != "auto":
            raise ValueError(f"model.k must be a positive integer or 'auto', got {k!r}")
        if num_images < 1 or num_classes < 1:
            raise ValueError(f"k=auto needs N >= 1 images and C >= 1 classes, got N={num_images}, C={num_classes}")
        return max(1, round(AUTO_K_FRACTION * num_images / num_classes))
    if isinstance(k, bool) or int(k) != k or int(k) < 1:
        raise ValueError(f"model.k must be a positive integer or 'auto', got {k!r}")
    return int(k)


def _class_prior(labels: Tensor, num_classes: int) -> Tensor:
    """Share of each class among the given labels (+1e-10 so an absent class cannot divide by zero)."""
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float32) + 1e-10
    return counts / counts.sum()


def knn_label_vote(
    feats: Tensor, noisy_labels: Tensor, num_classes: int, k: int, block_size: int, vote: str = "uniform"
) -> Tensor:
    """p_vis (N, C): the k nearest other images' noisy labels, as a distribution over classes.

    vote="uniform" (the default): the share of each class among the k labels.
    vote="weighted" (SSR's vote, `model.knn_vote=weighted`): each neighbour counts with its cosine
    similarity (clamped at 0, so the vote stays a distribution), each class's total is divided by the
    class's prior among the noisy labels (a frequent class gets no head start), then the row is
    normalised. A row whose neighbours all have similarity <= 0 votes uniformly (1/C). Both forms are
    `neighbours.neighbour_label_vote`, the vote the SSR baseline's selection also uses.
    """
    if vote not in KNN_VOTES:
        raise ValueError(f"model.knn_vote must be one of {', '.join(KNN_VOTES)}, got {vote!r}")
    _check_feats(feats)
    n = feats.shape[0]
    labels = _check_labels(noisy_labels.to(feats.device), n, num_classes, "noisy_labels")
    weighting, balanced = ("uniform", False) if vote == "uniform" else ("similarity", True)
    return neighbour_label_vote(feats, labels, num_classes, k, block_size, weighting, exclude_self=True,
                                prior_normalise=balanced)


def _prior_normalised(weighted: Tensor, prior: Tensor) -> Tensor:
    """Class totals divided by the class prior, rows normalised; a row without positive weight votes 1/C."""
    score = weighted / prior[None, :]
    total = score.sum(dim=1, keepdim=True)
    return torch.where(total > 0, score / total.clamp_min(1e-30), torch.full_like(score, 1.0 / score.shape[1]))


def vision_to_semantic(
    feats: Tensor, anchors: Tensor, anchor_labels: Tensor, num_classes: int, block_size: int
) -> Tensor:
    """p_sem (N, C): class shares among each image's |A|/C nearest anchors (A_vs[i] . Y_A, normalised)."""
    _check_feats(feats, anchors)
    a_labels = _check_labels(anchor_labels.to(feats.device), anchors.shape[0], num_classes, "anchor_labels")
    n_near = anchors_per_image(anchors.shape[0], num_classes)
    counts = torch.zeros(feats.shape[0], num_classes, dtype=torch.float32, device=feats.device)
    for start, _, idx in iter_topk_blocks(feats, anchors, n_near, block_size):
        counts[start : start + idx.shape[0]].scatter_add_(
            1, a_labels[idx], torch.ones(idx.shape, dtype=counts.dtype, device=counts.device)
        )
    return counts / n_near


def semantic_vote_counts(
    feats: Tensor, anchors: Tensor, anchor_labels: Tensor, num_classes: int, m: int, block_size: int
) -> Tensor:
    """A_sv^T Y_A (N, C): per image, how many anchors of each class have it among their m nearest images.

    Scattered from each anchor's neighbour list, so no |A| x N adjacency exists.
    """
    _check_feats(feats, anchors)
    n = feats.shape[0]
    a_labels = _check_labels(anchor_labels.to(feats.device), anchors.shape[0], num_classes, "anchor_labels")
    m_eff = capped_k(m, n, exclude_self=False)
    counts = torch.zeros(n * num_classes, dtype=torch.float32, device=feats.device)
    for start, _, idx in iter_topk_blocks(anchors, feats, m_eff, block_size):
        block_labels = a_labels[start : start + idx.shape[0]]
        flat = (idx * num_classes + block_labels[:, None]).flatten()
        counts.scatter_add_(0, flat, torch.ones(flat.shape, dtype=counts.dtype, device=counts.device))
    return counts.view(n, num_classes)


def _normalise_semantic(counts: Tensor, p_sem: Tensor) -> tuple[Tensor, Tensor]:
    """Y_sem = D^-1 counts with degree-0 rows taken from p_sem [choice, docs/methods.md]; also the degrees."""
    degree = counts.sum(dim=1)
    selected = degree > 0
    y_sem = torch.where(selected[:, None], counts / degree.clamp_min(1)[:, None], p_sem)
    return y_sem, degree.round().long()


def semantic_to_vision(
    feats: Tensor,
    anchors: Tensor,
    anchor_labels: Tensor,
    num_classes: int,
    m: int,
    p_sem: Tensor,
    block_size: int,
) -> Tensor:
    """Y_sem (N, C) = D^-1 A_sv^T Y_A; images that no anchor selected take their p_sem row."""
    if p_sem.shape != (feats.shape[0], num_classes):
        raise ValueError(f"p_sem must have shape ({feats.shape[0]}, {num_classes}), got {tuple(p_sem.shape)}")
    counts = semantic_vote_counts(feats, anchors, anchor_labels, num_classes, m, block_size)
    return _normalise_semantic(counts, p_sem.to(counts))[0]


def purification_stats(
    clean_mask: Tensor,
    soft_labels: Tensor,
    noisy_labels: Tensor,
    degree: Tensor,
    clean_labels: Tensor | None,
) -> dict[str, float]:
    """Per-epoch log values; detector precision/recall and soft-label accuracy need the true labels.

    precision is 0 when nothing is selected and recall 0 when no label is clean (instead of NaN,
    which JSON results files cannot hold).
    """
    n = clean_mask.numel()
    selected = int(clean_mask.sum())
    stats: dict[str, float] = {
        "clean_fraction": selected / n,
        "num_clean": float(selected),
        "num_degree_zero": float(int((degree == 0).sum())),
    }
    if clean_labels is not None:
        truly_clean = noisy_labels == clean_labels
        hits = int((clean_mask & truly_clean).sum())
        positives = int(truly_clean.sum())
        stats["precision"] = hits / selected if selected else 0.0
        stats["recall"] = hits / positives if positives else 0.0
        stats["soft_label_accuracy"] = float((soft_labels.argmax(dim=1) == clean_labels).float().mean())
        stats["noisy_label_accuracy"] = positives / n
    return stats


def _validate_purify_args(feats, noisy_labels, anchors, anchor_labels, num_classes, beta, clean_labels):
    _check_feats(feats, anchors)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    if feats.shape[0] < 2:
        raise ValueError(f"purification needs at least 2 images, got {feats.shape[0]}")
    n = feats.shape[0]
    noisy = _check_labels(noisy_labels.to(feats.device), n, num_classes, "noisy_labels")
    _check_labels(anchor_labels.to(feats.device), anchors.shape[0], num_classes, "anchor_labels")
    clean = None
    if clean_labels is not None:
        clean = _check_labels(clean_labels.to(feats.device), n, num_classes, "clean_labels")
    return noisy, clean


def purify(
    feats: Tensor,
    noisy_labels: Tensor,
    anchors: Tensor,
    anchor_labels: Tensor,
    num_classes: int,
    beta: float = 0.5,
    k: int = 200,
    m: int | None = None,
    block_size: int = 4096,
    clean_labels: Tensor | None = None,
    knn_vote: str = "uniform",
) -> PurificationResult:
    """Clean-sample selection and soft labels from L2-normalised image features and anchors.

    k (an integer or "auto", see `resolve_k`) is capped at N - 1; m defaults to N // C; `knn_vote`
    selects the visual vote (`knn_label_vote`). Runs on feats' device in float32, with memory
    O(block_size x max(N, |A|)) beyond the (N, C) outputs.
    """
    noisy, clean = _validate_purify_args(feats, noisy_labels, anchors, anchor_labels, num_classes, beta, clean_labels)
    # Half-precision similarities create ties that reorder neighbours; the inputs are small (N x D).
    feats = feats.float()
    anchors = anchors.float().to(feats.device)
    anchor_labels = anchor_labels.to(feats.device)
    n = feats.shape[0]
    m = default_m(n, num_classes) if m is None else m
    k = resolve_k(k, n, num_classes)

    p_vis = knn_label_vote(feats, noisy, num_classes, k, block_size, vote=knn_vote)
    p_sem = vision_to_semantic(feats, anchors, anchor_labels, num_classes, block_size)
    counts = semantic_vote_counts(feats, anchors, anchor_labels, num_classes, m, block_size)
    y_sem, degree = _normalise_semantic(counts, p_sem)

    q = (1.0 - beta) * p_vis + beta * p_sem
    clean_mask = q.argmax(dim=1) == noisy
    soft_labels = (1.0 - beta) * p_vis + beta * y_sem
    stats = purification_stats(clean_mask, soft_labels, noisy, degree, clean)
    return PurificationResult(q, clean_mask, soft_labels, p_vis, p_sem, y_sem, degree, stats)


def purify_dense(
    feats: Tensor,
    noisy_labels: Tensor,
    anchors: Tensor,
    anchor_labels: Tensor,
    num_classes: int,
    beta: float = 0.5,
    k: int = 200,
    m: int | None = None,
    block_size: int = 4096,
    clean_labels: Tensor | None = None,
    knn_vote: str = "uniform",
) -> PurificationResult:
    """Reference for tests only: the formulas of docs/methods.md with full N x N and |A| x N matrices.

    block_size is accepted for signature parity and ignored.
    """
    del block_size
    if knn_vote not in KNN_VOTES:
        raise ValueError(f"model.knn_vote must be one of {', '.join(KNN_VOTES)}, got {knn_vote!r}")
    noisy, clean = _validate_purify_args(feats, noisy_labels, anchors, anchor_labels, num_classes, beta, clean_labels)
    feats = feats.float()
    anchors = anchors.float().to(feats.device)
    a_labels = anchor_labels.to(feats.device).long()
    n, num_anchors = feats.shape[0], anchors.shape[0]
    k = min(resolve_k(k, n, num_classes), n - 1)
    m = min(n // num_classes if m is None else m, n)
    m = max(m, 1)
    y_noisy = F.one_hot(noisy, num_classes).float()  # (N, C)
    y_anchor = F.one_hot(a_labels, num_classes).float()  # (A, C)

    sim_images = feats @ feats.T
    sim_images.fill_diagonal_(float("-inf"))
    knn = torch.zeros(n, n, device=feats.device)
    top = sim_images.topk(k, dim=1)
    knn.scatter_(1, top.indices, 1.0)
    if knn_vote == "uniform":
        p_vis = (knn @ y_noisy) / knn.sum(dim=1, keepdim=True)
    else:
        sim_knn = torch.zeros(n, n, device=feats.device).scatter_(1, top.indices, top.values.clamp_min(0))
        p_vis = _prior_normalised(sim_knn @ y_noisy, _class_prior(noisy, num_classes))

    a_vs = torch.zeros(n, num_anchors, device=feats.device)
    a_vs.scatter_(1, (feats @ anchors.T).topk(max(1, num_anchors // num_classes), dim=1).indices, 1.0)
    p_sem = (a_vs @ y_anchor) / a_vs.sum(dim=1, keepdim=True)

    a_sv = torch.zeros(num_anchors, n, device=feats.device)
    a_sv.scatter_(1, (anchors @ feats.T).topk(m, dim=1).indices, 1.0)
    degree = a_sv.T.sum(dim=1)
    y_sem = (a_sv.T @ y_anchor) / degree.clamp_min(1)[:, None]
    y_sem[degree == 0] = p_sem[degree == 0]

    q = (1.0 - beta) * p_vis + beta * p_sem
    clean_mask = q.argmax(dim=1) == noisy
    soft_labels = (1.0 - beta) * p_vis + beta * y_sem
    degree = degree.long()
    stats = purification_stats(clean_mask, soft_labels, noisy, degree, clean)
    return PurificationResult(q, clean_mask, soft_labels, p_vis, p_sem, y_sem, degree, stats)
