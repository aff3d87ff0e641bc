"""Cosine nearest neighbours computed a block of queries at a time.

Purification needs the k nearest training images of every training image (N x N similarities,
N = 50 000 for CIFAR-100); only a (block_size x num_keys) slab of similarities exists at any time.
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
