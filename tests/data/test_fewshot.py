"""Few-shot sampling reproduces Dassl's generate_fewshot_dataset under random.seed(seed)."""
from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from noisy_prompt.data.fewshot import (
    group_by_label,
    sample_fewshot,
    sample_fewshot_train_val,
    val_shots_for,
)


def dassl_reference(sources: list[list[int]], shots: list[int], seed: int) -> list[list[int]]:
    """Dassl's procedure written out with the *global* random module, as CoOp runs it:
    random.seed once, then per source a defaultdict grouped in file order, random.sample per class
    (random.choices with k=K when the class is short). Restores the global state afterwards."""
    saved = random.getstate()
    try:
        random.seed(seed)
        out = []
        for labels, k in zip(sources, shots):
            tracker = defaultdict(list)
            for i, y in enumerate(labels):
                tracker[y].append(i)
            picked = []
            for _, items in tracker.items():
                picked.extend(random.sample(items, k) if len(items) >= k else random.choices(items, k=k))
            out.append(picked)
        return out
    finally:
        random.setstate(saved)


def grouped_labels(sizes: list[int]) -> list[int]:
    return [y for y, n in enumerate(sizes) for _ in range(n)]


SIZES = [20, 33, 17, 25, 40]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
def test_matches_dassl_on_label_grouped_list(seed, shots):
    labels = grouped_labels(SIZES)
    assert sample_fewshot(labels, shots, seed) == dassl_reference([labels], [shots], seed)[0]


def test_classes_visited_in_first_appearance_order_like_dassl():
    # labels interleaved, first appearance 3, 0, 2, 1: Dassl's defaultdict visits them in that order
    rng = random.Random(0)
    labels = [3, 0, 2, 1] + [rng.randrange(4) for _ in range(120)]
    assert list(group_by_label(labels)) == [3, 0, 2, 1]
    ours = [sample_fewshot(labels, 4, s) for s in (1, 2, 3)]
    assert ours == [dassl_reference([labels], [4], s)[0] for s in (1, 2, 3)]
    # visiting in sorted label order would pick different shots: the order is not cosmetic
    def sorted_order(seed):
        r = random.Random(seed)
        groups = group_by_label(labels)
        return [i for y in sorted(groups) for i in r.sample(groups[y], 4)]
    assert any(sorted(ours[s - 1]) != sorted(sorted_order(s)) for s in (1, 2, 3))


def test_returns_k_indices_per_class_of_that_class():
    labels = grouped_labels(SIZES)
    picked = sample_fewshot(labels, 8, seed=1)
    assert Counter(labels[i] for i in picked) == {y: 8 for y in range(len(SIZES))}
    assert len(set(picked)) == len(picked)


def test_short_class_keeps_all_items_and_other_classes_stay_in_step_with_dassl():
    sizes = [20, 3, 20, 20]  # class 1 has fewer than K = 8 items
    labels = grouped_labels(sizes)
    ours = sample_fewshot(labels, 8, seed=2)
    ref = dassl_reference([labels], [8], seed=2)[0]
    by_class = lambda picks: {y: [i for i in picks if labels[i] == y] for y in range(len(sizes))}
    ours_c, ref_c = by_class(ours), by_class(ref)
    assert ours_c[1] == [20, 21, 22]  # all three, once each, file order
    assert len(ref_c[1]) == 8  # Dassl repeats them
    for y in (0, 2, 3):  # the stream advanced as in Dassl, so later classes get Dassl's shots
        assert ours_c[y] == ref_c[y]
    assert sample_fewshot(labels, 8, seed=2, repeat=True) == ref


def test_train_then_val_in_one_stream_like_coop():
    train = grouped_labels([30, 12, 25])  # class 1 is short of 16 shots
    val = grouped_labels([6, 5, 7])
    for shots in (1, 2, 4, 16):
        for seed in (1, 2, 3):
            want = dassl_reference([train, val], [shots, min(shots, 4)], seed)
            assert list(sample_fewshot_train_val(train, val, shots, seed, repeat=True)) == want
            tr, va = sample_fewshot_train_val(train, val, shots, seed)
            assert va == want[1]  # even with a short train class the val shots are CoOp's
            if shots <= 12:
                assert tr == want[0]
    assert val_shots_for(16) == 4 and val_shots_for(2) == 2


def test_val_differs_from_an_independently_seeded_val():
    train, val = grouped_labels([30, 30]), grouped_labels([10, 10])
    _, val_idx = sample_fewshot_train_val(train, val, 4, seed=1)
    assert val_idx != sample_fewshot(val, 4, seed=1)  # val continues the train stream


def test_val_from_train_when_no_val_split():
    train = grouped_labels([20, 20, 20])
    tr, va = sample_fewshot_train_val(train, None, 8, seed=3)
    assert tr == sample_fewshot(train, 8, seed=3)
    assert not set(tr) & set(va)
    assert Counter(train[i] for i in va) == {0: 4, 1: 4, 2: 4}


def test_deterministic_and_seed_dependent():
    labels = grouped_labels(SIZES)
    assert sample_fewshot(labels, 4, 7) == sample_fewshot(labels, 4, 7)
    assert sample_fewshot(labels, 4, 7) != sample_fewshot(labels, 4, 8)


def test_global_random_state_untouched():
    random.seed(12345)
    before = random.getstate()
    sample_fewshot(grouped_labels(SIZES), 4, seed=1)
    sample_fewshot_train_val(grouped_labels(SIZES), grouped_labels([3] * 5), 4, seed=1)
    assert random.getstate() == before


def test_zero_shots_means_all_items():
    labels = grouped_labels([3, 2])
    assert sample_fewshot(labels, 0, seed=1) == [0, 1, 2, 3, 4]
    assert sample_fewshot(labels, -1, seed=1) == [0, 1, 2, 3, 4]
