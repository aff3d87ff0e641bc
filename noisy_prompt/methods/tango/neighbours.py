"""Cosine nearest neighbours computed a block of queries at a time, and the k-NN label vote.

Purification needs the k nearest training images of every training image (N x N similarities,
N = 50 000 for CIFAR-100); only a (block_size x num_keys) slab of similarities exists at any time.
`neighbour_label_vote` is the one k-NN vote over labels: TANGO's p_vis (uniform, or SSR's form with
`model.knn_vote=weighted`) and the SSR baseline's selection vote both call it.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor


def _check_inputs(queries: Tensor, keys: Tensor, block_size: int, exclude_self: bool) -> None:
    if queries.dim() != 2 or keys.dim() != 2:
        raise ValueError(
            f"queries and keys must be 2-D, got {tuple(queries.shape)} and {tuple(keys.shape)}"
        )
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(f"feature dims differ: queries D={queries.shape[1]}, keys D={keys.shape[1]}")
    if queries.device != keys.device:
        raise ValueError(f"queries on {queries.device} but keys on {keys.device}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if exclude_self and queries.shape[0] != keys.shape[0]:
        raise ValueError(
            "exclude_self=True needs queries and keys to be the same set, got "
            f"{queries.shape[0]} queries and {keys.shape[0]} keys"
        )


def capped_k(k: int, num_keys: int, exclude_self: bool) -> int:
    """k limited to the number of neighbours that exist (num_keys, minus one without self)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    available = num_keys - (1 if exclude_self else 0)
    if available < 1:
        raise ValueError(
            f"no neighbours to search: {num_keys} keys" + (" with self excluded" if exclude_self else "")
        )
    return min(k, available)


def iter_topk_blocks(
    queries: Tensor, keys: Tensor, k: int, block_size: int, exclude_self: bool = False
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Yield (start, values, indices) for consecutive blocks of queries.

    values/indices are (b, k') with k' = k capped at the available neighbours, sorted by
    decreasing cosine similarity; rows start..start+b of the queries. Lets a caller reduce each
    block (e.g. vote) without ever holding all N x k neighbour indices.
    """
    _check_inputs(queries, keys, block_size, exclude_self)
    k_eff = capped_k(k, keys.shape[0], exclude_self)
    keys_t = keys.T
    for start in range(0, queries.shape[0], block_size):
        block = queries[start : start + block_size]
        sims = block @ keys_t  # (b, num_keys): the only large temporary
        if exclude_self:
            rows = torch.arange(block.shape[0], device=sims.device)
            sims[rows, rows + start] = float("-inf")
        values, indices = torch.topk(sims, k_eff, dim=1, largest=True, sorted=True)
        del sims
        yield start, values, indices


VOTE_WEIGHTINGS = ("similarity", "uniform")


def neighbour_label_vote(feats: Tensor, labels: Tensor, num_classes: int, k: int, block_size: int,
                         weighting: str = "similarity", exclude_self: bool = True,
                         prior_normalise: bool = True) -> Tensor:
    """(N, C) class scores among each sample's k nearest samples, rows summing to 1.

    score_ic = sum_{j in kNN(i)} w_ij [y_j = c], w_ij = cosine(i, j) clamped at 0 (`similarity`: a far
    neighbour never votes against its class) or 1 (`uniform`); with `prior_normalise` each class
    column is divided by its prior n_c / N (SSR's "balanced vote"); then rows are normalised. A row
    with no positive weight votes 1/C. `feats` (float32, L2-normalised) and `labels` (long, in range)
    are checked by the callers, which name their own config keys in errors.
    """
    if weighting not in VOTE_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {VOTE_WEIGHTINGS}, got {weighting!r}")
    n = feats.shape[0]
    k_eff = capped_k(k, n, exclude_self)
    scores = torch.zeros(n, num_classes, dtype=torch.float32, device=feats.device)
    for start, sims, idx in iter_topk_blocks(feats, feats, k_eff, block_size, exclude_self=exclude_self):
        w = sims.clamp_min(0.0) if weighting == "similarity" else torch.ones_like(sims)
        scores[start:start + idx.shape[0]].scatter_add_(1, labels[idx], w.float())
    if prior_normalise:
        prior = torch.bincount(labels, minlength=num_classes).float() / n
        scores = scores / prior.clamp_min(1e-10)
    total = scores.sum(dim=1, keepdim=True)
    return torch.where(total > 0, scores / total.clamp_min(1e-30), torch.full_like(scores, 1.0 / num_classes))


def blocked_topk(
    queries: Tensor, keys: Tensor, k: int, block_size: int, exclude_self: bool = False
) -> tuple[Tensor, Tensor]:
    """Top-k keys by cosine similarity for every query: (values, indices), each (Nq, k').

    Inputs must already be L2-normalised (the dot product is the cosine). k' = min(k, available
    neighbours). With exclude_self (queries and keys are the same set) query i never returns i.
    Peak extra memory is O(block_size x num_keys); runs on the tensors' device.
    """
    _check_inputs(queries, keys, block_size, exclude_self)
    k_eff = capped_k(k, keys.shape[0], exclude_self)
    n = queries.shape[0]
    values = torch.empty(n, k_eff, dtype=torch.result_type(queries, keys), device=queries.device)
    indices = torch.empty(n, k_eff, dtype=torch.long, device=queries.device)
    for start, block_values, block_indices in iter_topk_blocks(queries, keys, k, block_size, exclude_self):
        values[start : start + block_values.shape[0]] = block_values
        indices[start : start + block_indices.shape[0]] = block_indices
    return values, indices
