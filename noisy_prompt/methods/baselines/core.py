"""Pure cores of the baselines of TANGO's tables (docs/methods.md, Baselines): SSR, LSL, DivideMix and DeFT.

Functions of tensors only, no module state, so each is tested alone against hand-computed values. The
k-NN searches go through TANGO's blocked top-k (`methods/tango/neighbours.py`): no N x N similarity
matrix ever exists, so the same code runs over the 50 000 CIFAR-100 training features on a GPU.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from noisy_prompt.losses.soft import mixup
from noisy_prompt.methods.tango.neighbours import VOTE_WEIGHTINGS, capped_k, iter_topk_blocks, neighbour_label_vote

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ checks


def _labels(labels: Tensor, n: int, num_classes: int, name: str = "labels") -> Tensor:
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {labels.dtype}")
    labels = labels.long()
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return labels


def _matrix(x: Tensor, name: str, n: int | None = None, c: int | None = None) -> None:
    if x.dim() != 2 or (n is not None and x.shape[0] != n) or (c is not None and x.shape[1] != c):
        want = f"({'N' if n is None else n}, {'C' if c is None else c})"
        raise ValueError(f"{name} must be 2-D {want}, got shape {tuple(x.shape)}")


# ---------------------------------------------------------------------------------- clean verdicts


def verdict_stats(clean_mask: Tensor, given: Tensor, true: Tensor | None = None,
                  suggested: Tensor | None = None) -> dict[str, float]:
    """Per-epoch log values of a clean/noisy detector, with TANGO's names (purification_stats).

    precision/recall of `clean_mask` as a detector of the samples whose given label is right, and the
    accuracy of the method's suggested label (`soft_label_acc`), need the true labels. precision is 0
    when nothing is selected and recall 0 when no label is clean (JSON holds no NaN).
    """
    n = clean_mask.numel()
    if given.shape != (n,):
        raise ValueError(f"given must have shape ({n},) like clean_mask, got {tuple(given.shape)}")
    clean_mask = clean_mask.bool()
    selected = int(clean_mask.sum())
    stats = {"clean_fraction": selected / n if n else 0.0, "num_clean": float(selected)}
    if true is not None:
        truly_clean = given.to(true.device) == true
        hits = int((clean_mask.to(true.device) & truly_clean).sum())
        positives = int(truly_clean.sum())
        stats["precision"] = hits / selected if selected else 0.0
        stats["recall"] = hits / positives if positives else 0.0
        stats["noisy_label_acc"] = positives / n if n else 0.0
        if suggested is not None:
            stats["soft_label_acc"] = float((suggested.to(true.device) == true).float().mean())
    return stats


def class_balanced_weights(labels: Tensor, mask: Tensor, num_classes: int) -> Tensor:
    """Per-sample weights that give every class present among the `mask`ed samples the same total weight.

    The expected loss equals that of drawing from the masked set with a class-balanced sampler (SSR's
    `ClassBalancedSampler`) while the loader still serves every sample (the reading the modules use):
    weight_i = mask_i / (C_present * n_{y_i}), summing to 1 over the masked samples; 0 elsewhere.
    """
    labels = _labels(labels, mask.numel(), num_classes)
    mask = mask.bool().to(labels.device)
    counts = torch.bincount(labels[mask], minlength=num_classes).float()
    present = int((counts > 0).sum())
    w = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    if present == 0:
        return w
    w[mask] = 1.0 / (present * counts[labels[mask]])
    return w


# --------------------------------------------------------------------------------------------- SSR


def weighted_knn_vote(feats: Tensor, labels: Tensor, num_classes: int, k: int, block_size: int = 4096,
                      weighting: str = "similarity", exclude_self: bool = True,
                      prior_normalise: bool = True) -> Tensor:
    """SSR's k-NN vote (N, C), rows summing to 1: class scores among each sample's k nearest samples.

    score_ic = Σ_{j in kNN(i)} w_ij [y_j = c]; w_ij = cosine(i, j) (`similarity`) or 1 (`uniform`);
    with `prior_normalise` each class column is divided by its prior π_c = n_c / N (SSR's "balanced
    vote"), then rows are normalised. `feats` must be L2-normalised. Negative cosines are clamped to
    0 so a far neighbour never votes against its class. The vote itself is
    `tango.neighbours.neighbour_label_vote`, which TANGO's p_vis also calls.
    """
    _matrix(feats, "feats")
    labels = _labels(labels.to(feats.device), feats.shape[0], num_classes)
    return neighbour_label_vote(feats.float(), labels, num_classes, k, block_size, weighting, exclude_self,
                                prior_normalise)


def ssr_relabel(probs: Tensor, given: Tensor, theta_r: float) -> tuple[Tensor, Tensor]:
    """SSR relabelling: the working label is argmax p where max p > θ_r, else the given label.

    Returns (working labels, mask of the samples whose label came from the prediction).
    """
    _matrix(probs, "probs")
    given = _labels(given.to(probs.device), probs.shape[0], probs.shape[1], "given")
    if not 0.0 <= theta_r <= 1.0:
        raise ValueError(f"theta_r must lie in [0, 1], got {theta_r}")
    conf, pred = probs.max(dim=1)
    relabelled = conf > theta_r
    return torch.where(relabelled, pred, given), relabelled


def ssr_select(vote: Tensor, working: Tensor, theta_s: float) -> tuple[Tensor, Tensor]:
    """SSR selection: clean where vote(working label) / max vote >= θ_s. Returns (clean mask, score)."""
    _matrix(vote, "vote")
    working = _labels(working.to(vote.device), vote.shape[0], vote.shape[1], "working")
    score = vote.gather(1, working[:, None]).squeeze(1) / vote.max(dim=1).values.clamp_min(1e-30)
    # Floating-point slack: with θ_s = 1 a label tied for the top vote must pass.
    return score >= theta_s - 1e-6, score


def mixup_max(x: Tensor, targets: Tensor, alpha: float, generator: torch.Generator | None = None
              ) -> tuple[Tensor, Tensor, float, Tensor]:
    """Mixup with SSR/DivideMix's λ ~ Beta(α, α), λ = max(λ, 1 − λ): each mixed sample stays closer to
    its own row. The shared `losses.soft.mixup` with `keep_larger`."""
    return mixup(x, targets, alpha, generator, keep_larger=True)


def feature_consistency(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's negative cosine −cos(p, stop_grad(z)), averaged over the batch (SSR's L_fc)."""
    if p.shape != z.shape:
        raise ValueError(f"p and z must have the same shape, got {tuple(p.shape)} and {tuple(z.shape)}")
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


# --------------------------------------------------------------------------------------------- LSL


def structural_labels(feats: Tensor, labels: Tensor, num_classes: int, k_st: int, block_size: int = 4096
                      ) -> tuple[Tensor, Tensor]:
    """LSL's reverse k-NN structural labels (N, C) and how many labels each sample received.

    Every sample i pushes its label y_i to its k_st nearest other samples; sample j's structural label
    is the row-normalised histogram of the labels it received, or its own label one-hot when it
    received none [choice]. Scattered block by block from each sample's neighbour list.
    """
    _matrix(feats, "feats")
    n = feats.shape[0]
    labels = _labels(labels.to(feats.device), n, num_classes)
    k_eff = capped_k(k_st, n, exclude_self=True)
    counts = torch.zeros(n * num_classes, dtype=torch.float32, device=feats.device)
    for start, _, idx in iter_topk_blocks(feats.float(), feats.float(), k_eff, block_size, exclude_self=True):
        src = labels[start:start + idx.shape[0]]
        flat = (idx * num_classes + src[:, None]).flatten()
        counts.scatter_add_(0, flat, torch.ones(flat.shape, dtype=counts.dtype, device=counts.device))
    counts = counts.view(n, num_classes)
    received = counts.sum(dim=1)
    own = F.one_hot(labels, num_classes).float()
    out = torch.where(received[:, None] > 0, counts / received.clamp_min(1)[:, None], own)
    return out, received.round().long()


# --------------------------------------------------------------------------------------- DivideMix


def normalise_losses(losses: Tensor) -> Tensor:
    """Min-max normalisation of per-sample losses to [0, 1] (DivideMix); constant losses give zeros."""
    if losses.dim() != 1:
        raise ValueError(f"losses must be 1-D (N,), got shape {tuple(losses.shape)}")
    lo, hi = losses.min(), losses.max()
    return (losses - lo) / (hi - lo) if float(hi - lo) > 0 else torch.zeros_like(losses)


# EM until the mean log-likelihood changes by less than GMM_TOL between iterations, at most GMM_MAX_ITER
# iterations. DivideMix's released code stops sklearn's EM after 10 iterations at tol 1e-2; from the median
# split, at <= 20% clean samples that leaves the fit on a plateau whose clean/noisy split disagrees with the
# converged fit on a large share of the samples (tests/methods/baselines/test_baselines_core.py measures it).
# A looser tol (1e-6) stops on the same plateau, hence 1e-10.
GMM_MAX_ITER = 10_000
GMM_TOL = 1e-10


def gmm_1d(x: Tensor, n_iter: int = GMM_MAX_ITER, tol: float = GMM_TOL, reg_covar: float = 5e-4,
           warn: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Two-component 1-D Gaussian mixture by EM, deterministic: (weights, means, variances, resp).

    Initialised by splitting at the median (component 0 = lower half, component 1 = upper half), so
    no random restart is needed; `reg_covar` is added to every variance as in sklearn (DivideMix uses
    reg_covar 5e-4). Runs in float64; resp is (N, 2), the posterior of each component. Iterates until
    the mean log-likelihood changes by less than `tol`; `n_iter` is a cap, and reaching it logs a
    warning (unless `warn=False`), since the split may then not be the fit's.
    """
    if x.dim() != 1 or x.numel() < 2:
        raise ValueError(f"gmm_1d needs a 1-D tensor of at least 2 values, got shape {tuple(x.shape)}")
    if n_iter < 1 or reg_covar < 0:
        raise ValueError(f"n_iter must be >= 1 and reg_covar >= 0, got {n_iter} and {reg_covar}")
    x = x.double()
    order = torch.argsort(x, stable=True)
    resp = torch.zeros(x.numel(), 2, dtype=torch.float64, device=x.device)
    half = x.numel() // 2
    resp[order[:half], 0] = 1.0
    resp[order[half:], 1] = 1.0
    prev = -math.inf
    converged = False
    for _ in range(n_iter):
        # M step
        nk = resp.sum(0).clamp_min(1e-10)
        weights = nk / x.numel()
        means = (resp * x[:, None]).sum(0) / nk
        var = (resp * (x[:, None] - means) ** 2).sum(0) / nk + reg_covar
        # E step
        log_p = (-0.5 * (x[:, None] - means) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)
                 + torch.log(weights.clamp_min(1e-300)))
        log_norm = torch.logsumexp(log_p, dim=1, keepdim=True)
        resp = (log_p - log_norm).exp()
        ll = float(log_norm.mean())
        if abs(ll - prev) < tol:
            converged = True
            break
        prev = ll
    if not converged and warn:
        log.warning("2-component GMM: EM stopped at the cap of %d iterations before the mean log-likelihood "
                    "changed by < %g (model.gmm.n_iter / model.gmm.tol); the clean/noisy split may not be "
                    "the converged fit's", n_iter, tol)
    nk = resp.sum(0).clamp_min(1e-10)
    weights = nk / x.numel()
    means = (resp * x[:, None]).sum(0) / nk
    var = (resp * (x[:, None] - means) ** 2).sum(0) / nk + reg_covar
    return weights, means, var, resp


def gmm_clean_probability(losses: Tensor, n_iter: int = GMM_MAX_ITER, tol: float = GMM_TOL,
                          reg_covar: float = 5e-4, normalise: bool = True, warn: bool = True) -> Tensor:
    """DivideMix's co-divide: p_clean = posterior of the low-mean component of a 2-GMM on the losses."""
    x = normalise_losses(losses.float()) if normalise else losses
    _, means, _, resp = gmm_1d(x, n_iter, tol, reg_covar, warn)
    return resp[:, int(means.argmin())].to(losses.dtype if losses.is_floating_point() else torch.float32)


def sharpen(p: Tensor, temperature: float) -> Tensor:
    """p^(1/T), rows renormalised (MixMatch's sharpening)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    q = p.clamp_min(0) ** (1.0 / temperature)
    return q / q.sum(dim=1, keepdim=True).clamp_min(1e-30)


def refine_labels(given_one_hot: Tensor, w_clean: Tensor, p_mean: Tensor, temperature: float) -> Tensor:
    """DivideMix label refinement for the labelled set: sharpen(w·y + (1 − w)·p̄, T)."""
    if given_one_hot.shape != p_mean.shape or w_clean.shape != (p_mean.shape[0],):
        raise ValueError(f"refine_labels: y {tuple(given_one_hot.shape)} and p_mean {tuple(p_mean.shape)} must "
                         f"match and w_clean must be ({p_mean.shape[0]},), got {tuple(w_clean.shape)}")
    w = w_clean.to(p_mean.dtype)[:, None]
    return sharpen(w * given_one_hot.to(p_mean.dtype) + (1.0 - w) * p_mean, temperature)


def co_guess(probs: list[Tensor], temperature: float) -> Tensor:
    """DivideMix co-guessing for the unlabelled set: sharpen(mean of both networks over both views, T)."""
    if not probs:
        raise ValueError("co_guess needs at least one probability matrix")
    shape = probs[0].shape
    if any(p.shape != shape for p in probs):
        raise ValueError(f"co_guess: all probability matrices must share one shape, got {[tuple(p.shape) for p in probs]}")
    return sharpen(torch.stack(probs).mean(0), temperature)


def linear_rampup(progress_epochs: float, warmup_epochs: int, rampup_length: float) -> float:
    """DivideMix's λ_u factor: clip((epoch − warm-up) / rampup_length, 0, 1) (1 with no ramp)."""
    if rampup_length <= 0:
        return 1.0
    return float(min(max((progress_epochs - warmup_epochs) / rampup_length, 0.0), 1.0))


def uniform_prior_penalty(logits: Tensor) -> Tensor:
    """DivideMix's regulariser KL(π_uniform ‖ mean softmax): Σ_c (1/C) log((1/C) / p̄_c)."""
    p_mean = torch.softmax(logits.float(), dim=1).mean(0)
    prior = torch.full_like(p_mean, 1.0 / p_mean.numel())
    return (prior * torch.log(prior / p_mean.clamp_min(1e-30))).sum()


def confidence_penalty(logits: Tensor) -> Tensor:
    """Negative entropy of the predictions, averaged (DivideMix's warm-up penalty under asymmetric noise)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return (log_p.exp() * log_p).sum(dim=1).mean()


# -------------------------------------------------------------------------------------------- DeFT


def deft_p_yes(pos_logits: Tensor, neg_logits: Tensor) -> Tensor:
    """p_yes_k = softmax([pos_k, neg_k])_0 = sigmoid(pos_k − neg_k), per sample and class."""
    return torch.sigmoid(deft_margin(pos_logits, neg_logits))


def deft_margin(pos_logits: Tensor, neg_logits: Tensor) -> Tensor:
    """pos_k − neg_k, per sample and class: the logit of p_yes_k, which DeFT's verdicts are read from.

    p_yes = sigmoid(margin) rounds to exactly 1.0 in float32 once the margin exceeds ~17, so verdicts
    read from p_yes tie there (argmax picks the lowest class index, and a sample whose label is not
    that class is judged noisy); the margin itself keeps its order."""
    if pos_logits.shape != neg_logits.shape:
        raise ValueError(f"pos and neg logits must have one shape, got {tuple(pos_logits.shape)} and "
                         f"{tuple(neg_logits.shape)}")
    return pos_logits.float() - neg_logits.float()


def deft_clean_verdict(margin: Tensor, labels: Tensor, threshold: float = 0.5, require_argmax: bool = False
                       ) -> Tensor:
    """Clean when p_yes at the given label > threshold, and, with `require_argmax`, argmax_k p_yes_k = y.

    Read from the margin pos − neg (`deft_margin`), not from p_yes: p_yes > t ⇔ margin > logit(t) and
    argmax p_yes = argmax margin (sigmoid is increasing), but without p_yes's saturation to 1.0, where
    every class would tie. The decision is DeFT's; only its floating-point evaluation differs."""
    _matrix(margin, "margin")
    labels = _labels(labels.to(margin.device), margin.shape[0], margin.shape[1])
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    t = float(threshold)
    cut = -math.inf if t == 0.0 else math.inf if t == 1.0 else math.log(t) - math.log1p(-t)
    clean = margin.gather(1, labels[:, None]).squeeze(1) > cut
    if require_argmax:
        clean = clean & (margin.argmax(dim=1) == labels)
    return clean


def complementary_labels(labels: Tensor, num_classes: int, generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random label different from each given label (needs C >= 2)."""
    if num_classes < 2:
        raise ValueError(f"complementary labels need at least 2 classes, got {num_classes}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    shift = torch.randint(1, num_classes, labels.shape, generator=generator, device=gen_device).to(labels.device)
    return (labels.long() + shift) % num_classes


def deft_losses(pos_logits: Tensor, neg_logits: Tensor, labels: Tensor, complementary: Tensor,
                clean: Tensor | None = None) -> dict[str, Tensor]:
    """DeFT's phase-1 loss terms on one batch.

    l_cls = CE(pos_logits, y) (over `clean` samples when given, 0 when none is clean);
    l_neg = NLL(log p_no, complementary label) + NLL(log p_yes, target), the target being y, or the
    positive prediction for samples outside `clean`. p_yes uses the positive logits detached, so these
    terms train the negative prompts only (the negative logits come from detached image features).
    """
    n, c = pos_logits.shape
    labels = _labels(labels.to(pos_logits.device), n, c)
    complementary = _labels(complementary.to(pos_logits.device), n, c, "complementary")
    pair = torch.stack([pos_logits.detach().float(), neg_logits.float()], dim=-1)
    log_pair = torch.log_softmax(pair, dim=-1).clamp_min(math.log(1e-5))
    log_yes, log_no = log_pair[..., 0], log_pair[..., 1]
    ce = F.cross_entropy(pos_logits.float(), labels, reduction="none")
    if clean is None:
        l_cls, target = ce.mean(), labels
    else:
        clean = clean.bool().to(ce.device)
        l_cls = torch.where(clean, ce, torch.zeros_like(ce)).sum() / clean.sum().clamp_min(1)
        target = torch.where(clean, labels, pos_logits.detach().argmax(dim=1))
    l_no = -log_no.gather(1, complementary[:, None]).mean()
    l_yes = -log_yes.gather(1, target[:, None]).mean()
    return {"l_cls": l_cls, "l_neg": l_no + l_yes, "l_no": l_no, "l_yes": l_yes}


def symmetric_cross_entropy(logits: Tensor, labels: Tensor, alpha: float = 1.0, beta: float = 1.0) -> Tensor:
    """SCE (Wang et al. 2019): α CE + β RCE, log 0 in RCE clamped to log 1e-4 as in the authors' code (DeFT's
    real-noise warm-up)."""
    p = torch.softmax(logits.float(), dim=1)
    ce = F.cross_entropy(logits.float(), labels.long())
    one_hot = F.one_hot(labels.long(), logits.shape[1]).float()
    rce = -(p * torch.log(one_hot.clamp_min(1e-4))).sum(dim=1).mean()
    return alpha * ce + beta * rce
