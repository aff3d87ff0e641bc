"""Few-shot sampling that picks the same shots as CoOp/Dassl for the same seed.

What Dassl does (Dassl.pytorch, dassl/data/datasets/base_dataset.py, `generate_fewshot_dataset`,
and CoOp's datasets/*.py), checked against the source:

* CoOp's train.py calls `set_random_seed(cfg.SEED)` (which runs `random.seed(seed)`) once, before the
  dataset is built; nothing draws from `random` in between when the split file exists.
* `split_dataset_by_label` fills a `defaultdict(list)` in file order, so the classes are visited in
  order of *first appearance* in the list (dict insertion order), not in sorted label order. The
  two coincide for the split_zhou files, whose items are grouped by ascending label; we follow
  Dassl (first appearance) so that an unsorted list still gives Dassl's shots.
* Per class: `random.sample(items, K)` if the class has >= K items, else (default `repeat=True`)
  `random.choices(items, k=K)`, i.e. K draws *with replacement*. The result is the concatenation of
  the per-class picks, in that visiting order.
* CoOp first calls `generate_fewshot_dataset(train, num_shots=K)`, then
  `generate_fewshot_dataset(val, num_shots=min(K, 4))` on the split file's val list, in the same
  global random stream. ImageNet has no val split (CoOp uses the test set as val).
* `num_shots < 1` returns the list unchanged (no draws).

Our choices: a private `random.Random(seed)` replays the same stream without touching the global
`random` state. A class with fewer than K items keeps all of its items once (file order) instead of
K draws with duplicates; we still make the same `choices` call and discard it, so the stream
advances exactly as in Dassl and every other class gets Dassl's shots. `repeat=True` returns
Dassl's duplicates instead. Returned values are indices into the input list, in Dassl's order.
"""
from __future__ import annotations

import random
from typing import Sequence


def group_by_label(labels: Sequence[int]) -> dict[int, list[int]]:
    """Indices per label, labels in order of first appearance, indices in list order (Dassl)."""
    groups: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        groups.setdefault(int(y), []).append(i)
    return groups


def sample_per_class(
    labels: Sequence[int], shots: int, rng: random.Random, *, repeat: bool = False
) -> list[int]:
    """One Dassl `generate_fewshot_dataset` call on `labels`, drawing from `rng`."""
    if shots < 1:
        return list(range(len(labels)))
    picked: list[int] = []
    for items in group_by_label(labels).values():
        if len(items) >= shots:
            picked.extend(rng.sample(items, shots))
        else:
            drawn = rng.choices(items, k=shots)  # consumed even when discarded: keeps the stream in step
            picked.extend(drawn if repeat else items)
    return picked


def sample_fewshot(labels: Sequence[int], shots: int, seed: int, *, repeat: bool = False) -> list[int]:
    """Indices of a K-shot subset of `labels`, as Dassl picks them after `random.seed(seed)`."""
    return sample_per_class(labels, shots, random.Random(seed), repeat=repeat)


def val_shots_for(shots: int) -> int:
    """CoOp's few-shot val size per class: min(K, 4)."""
    return min(shots, 4)


def sample_fewshot_train_val(
    train_labels: Sequence[int],
    val_labels: Sequence[int] | None,
    shots: int,
    seed: int,
    *,
    repeat: bool = False,
) -> tuple[list[int], list[int]]:
    """Train shots then val shots (min(K, 4) per class) from one stream seeded once, like CoOp.

    With `val_labels` given (split-file datasets), the val indices point into `val_labels` and are
    what CoOp picks. With `val_labels=None` (ImageNet, which has no val split), the val shots are
    drawn, in the same stream, from the train items that were *not* picked for training, and the
    returned val indices point into `train_labels`; CoOp has no counterpart for this (it validates
    on the test set), so only the train shots are CoOp's there.
    """
    rng = random.Random(seed)
    train_idx = sample_per_class(train_labels, shots, rng, repeat=repeat)
    if shots < 1:
        return train_idx, list(range(len(val_labels))) if val_labels is not None else []
    k_val = val_shots_for(shots)
    if val_labels is not None:
        return train_idx, sample_per_class(val_labels, k_val, rng, repeat=repeat)
    chosen = set(train_idx)
    rest = [i for i in range(len(train_labels)) if i not in chosen]
    picked = sample_per_class([train_labels[i] for i in rest], k_val, rng, repeat=repeat)
    return train_idx, [rest[j] for j in picked]
