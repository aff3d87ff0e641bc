"""Label-noise generators: pure functions from (clean labels, rate, seed, dataset identity) to noisy labels.

Every function draws from its own generator (`noise_rng`), seeded from a SHA-256 of the protocol, the
rate, the run seed and the dataset identity, so the noisy vector never depends on global RNG state,
on the order of other calls, on worker count or on the DDP rank.

Rates are fractions in [0, 1). Counts use round-half-up (`round(0.5) == 1`), not Python's banker's
rounding, so that a count never depends on the parity of its neighbour.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats

# Standard deviation of Xia et al.'s per-sample flip rate (their `norm_std`).
XIA_FLIP_STD = 0.1


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------
@dataclass
class NoiseResult:
    """Noisy labels next to the clean ones, with what the noise realised.

    `clean_labels` is None when the truth is unknown (real-noise datasets other than CIFAR-100N);
    then `realised_rate` is None, `per_class_rate` is empty and `transition` is None.
    `per_class_rate[c]` is NaN for a class with no sample; `transition[c]` is all zeros for it.
    """

    noisy_labels: np.ndarray
    clean_labels: np.ndarray | None
    realised_rate: float | None
    per_class_rate: list[float]
    transition: np.ndarray | None

    @classmethod
    def from_labels(cls, noisy: np.ndarray, clean: np.ndarray | None, num_classes: int) -> "NoiseResult":
        noisy = np.asarray(noisy, dtype=np.int64)
        if clean is None:
            return cls(noisy_labels=noisy, clean_labels=None, realised_rate=None, per_class_rate=[], transition=None)
        clean = np.asarray(clean, dtype=np.int64)
        if clean.shape != noisy.shape:
            raise ValueError(f"NoiseResult: clean labels {clean.shape} and noisy labels {noisy.shape} differ in shape")
        counts = np.zeros((num_classes, num_classes), dtype=np.float64)
        np.add.at(counts, (clean, noisy), 1.0)
        row_sums = counts.sum(axis=1)
        transition = np.divide(counts, row_sums[:, None], out=np.zeros_like(counts), where=row_sums[:, None] > 0)
        flipped_per_class = row_sums - np.diag(counts)
        per_class = [float(f / n) if n > 0 else float("nan") for f, n in zip(flipped_per_class, row_sums)]
        realised = float(np.mean(noisy != clean)) if noisy.size else 0.0
        return cls(noisy_labels=noisy, clean_labels=clean, realised_rate=realised,
                   per_class_rate=per_class, transition=transition)

    def summary(self, include_transition: bool = True) -> dict[str, Any]:
        """JSON-serialisable statistics (NaN -> None, since JSON has no NaN).

        `include_transition=False` drops the C x C matrix, which is 1M numbers for ImageNet.
        """
        def _num(x: float) -> float | None:
            return None if x is None or math.isnan(x) else float(x)

        out: dict[str, Any] = {
            "num_samples": int(self.noisy_labels.size),
            "num_noisy": None if self.clean_labels is None else int(np.sum(self.noisy_labels != self.clean_labels)),
            "realised_rate": _num(self.realised_rate),
            "per_class_rate": [_num(x) for x in self.per_class_rate] if self.clean_labels is not None else None,
        }
        if include_transition:
            out["transition"] = None if self.transition is None else self.transition.tolist()
        return out


@dataclass
class FewShotNoise:
    """A noisy few-shot training set built in one go (ptnl_fewshot, pair).

    `indices` point into the pool the set was drawn from; `labels` are the assigned (noisy) labels
    used for training, `true_labels` the pool labels of those images. Rows are grouped by assigned
    class in class order: the clean shots of class c, then its false positives.
    """

    indices: np.ndarray
    labels: np.ndarray
    true_labels: np.ndarray
    num_fp_per_class: int
    result: NoiseResult

    @property
    def is_false_positive(self) -> np.ndarray:
        return self.labels != self.true_labels


# ----------------------------------------------------------------------------------------------
# Seeding and validation
# ----------------------------------------------------------------------------------------------
def noise_rng(protocol: str, rate: float, seed: int, dataset_id: str) -> np.random.Generator:
    """A generator owned by one (protocol, rate, seed, dataset) cell and nothing else.

    `dataset_id` must identify the dataset *and* its class order (see `dataset_identity`), so that
    reordering classes cannot silently reuse a noise draw.
    """
    key = json.dumps([str(protocol), repr(float(rate)), int(seed), str(dataset_id)])
    entropy = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest(), "big")
    return np.random.default_rng(np.random.SeedSequence(entropy))


def dataset_identity(name: str, classnames: Sequence[str]) -> str:
    """`name` plus a short hash of the class order, for use as `dataset_id`."""
    digest = hashlib.sha256("\n".join(classnames).encode("utf-8")).hexdigest()[:16]
    return f"{name}:{len(classnames)}:{digest}"


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-12))


def _check_rate(protocol: str, rate: float) -> float:
    rate = float(rate)
    if not (0.0 <= rate < 1.0) or math.isnan(rate):
        raise ValueError(f"noise protocol '{protocol}': rate {rate} is outside [0, 1) "
                         "(rates are fractions, e.g. 0.4 for 40%)")
    return rate


def _check_labels(protocol: str, labels: Any, num_classes: int) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"noise protocol '{protocol}': labels must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"noise protocol '{protocol}': labels must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=True)
    if num_classes < 1:
        raise ValueError(f"noise protocol '{protocol}': num_classes must be >= 1, got {num_classes}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"noise protocol '{protocol}': labels must lie in [0, {num_classes}), "
                         f"got min {arr.min()} max {arr.max()}")
    return arr


def _need_two_classes(protocol: str, rate: float, num_classes: int) -> None:
    if rate > 0 and num_classes < 2:
        raise ValueError(f"noise protocol '{protocol}': rate {rate} needs at least 2 classes, got {num_classes}")


# ----------------------------------------------------------------------------------------------
# Global protocols (applied to a whole label vector)
# ----------------------------------------------------------------------------------------------
def clean_noise(labels: Any, num_classes: int) -> NoiseResult:
    clean = _check_labels("clean", labels, num_classes)
    return NoiseResult.from_labels(clean.copy(), clean, num_classes)


def sym_noise(labels: Any, num_classes: int, rate: float, seed: int, dataset_id: str,
              exclude_true: bool = True) -> NoiseResult:
    """Pick exactly round(rate*N) samples uniformly and relabel them uniformly.

    exclude_true=True: the new label is one of the C-1 other classes (realised rate == rate up to
    rounding; DP-SEP / NLPrompt). exclude_true=False: drawn from all C classes, so about 1/C of the
    picked samples keep their label (realised ~ rate*(C-1)/C; DeFT / DivideMix / SSR).
    """
    rate = _check_rate("sym", rate)
    clean = _check_labels("sym", labels, num_classes)
    _need_two_classes("sym", rate, num_classes)
    rng = noise_rng("sym", rate, seed, dataset_id)
    n = clean.size
    picked = rng.permutation(n)[: round_half_up(rate * n)]
    noisy = clean.copy()
    if exclude_true:
        # an offset in 1..C-1 is uniform over the other classes
        noisy[picked] = (clean[picked] + rng.integers(1, num_classes, size=picked.size)) % num_classes
    else:
        noisy[picked] = rng.integers(0, num_classes, size=picked.size)
    return NoiseResult.from_labels(noisy, clean, num_classes)


def _check_asym_rate(variant: str, rate: float) -> float:
    rate = _check_rate(f"asym ({variant})", rate)
    if rate >= 0.5:
        raise ValueError(f"noise protocol 'asym' ({variant}): rate {rate} >= 0.5 cannot be expressed: "
                         "the flipped class would hold at least as many samples as the true one, so the "
                         "noisy label becomes the majority label of the class")
    return rate


def asym_cyclic_noise(labels: Any, num_classes: int, rate: float, seed: int, dataset_id: str) -> NoiseResult:
    """Pick exactly round(rate*N) samples and map y -> (y + 1) mod C (DeFT / NLPrompt / TANGO asym)."""
    rate = _check_asym_rate("cyclic", rate)
    clean = _check_labels("asym", labels, num_classes)
    _need_two_classes("asym", rate, num_classes)
    rng = noise_rng("asym_cyclic", rate, seed, dataset_id)
    picked = rng.permutation(clean.size)[: round_half_up(rate * clean.size)]
    noisy = clean.copy()
    noisy[picked] = (clean[picked] + 1) % num_classes
    return NoiseResult.from_labels(noisy, clean, num_classes)


def superclass_successor(superclass_of: Sequence[int], num_classes: int) -> np.ndarray:
    """next_class[y]: the next class of y's superclass in label order, cyclic.

    A superclass with a single member has no other class to flip to, so it is an error rather than
    a silent drop in the realised rate.
    """
    sc = np.asarray(superclass_of)
    if sc.shape != (num_classes,):
        raise ValueError(f"noise protocol 'asym' (superclass): superclass_of has {sc.size} entries, "
                         f"expected one per class ({num_classes})")
    successor = np.empty(num_classes, dtype=np.int64)
    for group in np.unique(sc):
        members = np.flatnonzero(sc == group)
        if members.size < 2:
            raise ValueError(f"noise protocol 'asym' (superclass): superclass {group} holds only class "
                             f"{members[0]}, so it has no other class to flip to")
        successor[members] = np.roll(members, -1)
    return successor


def asym_superclass_noise(labels: Any, num_classes: int, rate: float, seed: int, dataset_id: str,
                          superclass_of: Sequence[int]) -> NoiseResult:
    """Each sample independently moves, with probability `rate`, to the next class of its superclass.

    Per-sample Bernoulli draws as in Patrini et al.'s transition-matrix sampling (so the realised rate
    is close to, not exactly, `rate`). Unlike Patrini's code, which takes consecutive blocks of five
    fine labels, this uses the true superclass membership given by `superclass_of`.
    """
    rate = _check_asym_rate("superclass", rate)
    clean = _check_labels("asym", labels, num_classes)
    if superclass_of is None:
        raise ValueError(f"noise protocol 'asym' (superclass): rate {rate} needs a superclass map "
                         "(superclass_of), fine class -> superclass index; the CIFAR-100 reader publishes CIFAR-100's")
    successor = superclass_successor(superclass_of, num_classes)
    rng = noise_rng("asym_superclass", rate, seed, dataset_id)
    flip = rng.random(clean.size) < rate
    noisy = np.where(flip, successor[clean], clean)
    return NoiseResult.from_labels(noisy, clean, num_classes)


def inst_flip_distribution(features: np.ndarray, labels: np.ndarray, projection_of_class) -> np.ndarray:
    """Xia et al.'s target distribution over the *other* classes, one row per sample.

    `projection_of_class(y)` returns W[y] of shape (D, C). Row n is softmax(f_n . W[y_n]) with the
    true class masked out (probability exactly 0).
    """
    out: np.ndarray | None = None
    for y in np.unique(labels):
        w = np.asarray(projection_of_class(int(y)), dtype=np.float64)
        if out is None:
            out = np.zeros((labels.size, w.shape[1]), dtype=np.float64)
        rows = np.flatnonzero(labels == y)
        scores = np.asarray(features[rows], dtype=np.float64) @ w
        scores[:, y] = -np.inf
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        out[rows] = scores / scores.sum(axis=1, keepdims=True)
    if out is None:
        out = np.zeros((0, 0))
    return out


def inst_noise(labels: Any, num_classes: int, rate: float, seed: int, dataset_id: str, features: np.ndarray,
               pixel_scale: float = 1.0, flip_std: float = XIA_FLIP_STD) -> NoiseResult:
    """Instance-dependent noise of Xia et al. (NeurIPS 2020), as DeFT applies it.

    q_n ~ N(rate, flip_std^2) truncated to [0, 1]; W ~ N(0, 1) of shape (C, D, C); sample n keeps its
    label with probability 1 - q_n and otherwise takes a class drawn from softmax(f_n . W[y_n]) over
    the other classes. Drawn as "flip?" then "to which class?", which has exactly Xia's per-sample
    distribution and makes the set of flipped samples independent of the features.

    `features` (N, D): flattened raw 32x32 RGB pixels as floats (0..255) in a fixed layout.
    `pixel_scale` multiplies them first. It exists because the scale of f is not neutral: with raw
    0..255 values the scores are in the thousands and the softmax is practically one-hot, so every
    flipped sample goes to argmax_{c != y} f.W[y] (what DeFT's generator does on raw pixels); tensors
    scaled to [0, 1] (pixel_scale = 1/255, as in re-implementations that feed ToTensor output)
    spread the flips over more classes. The flip *rate* does not depend on it.

    rate == 0 is the identity: Xia's truncated normal centred at 0 would still flip ~8% of samples,
    which is not what a 0% cell means.

    Draws: q (N), then flip uniforms (N), then target uniforms (N) from `noise_rng("inst", ...)`;
    W[y] (D, C), float32 draws, from its own generator
    `noise_rng("inst_projection", rate, seed, f"{dataset_id}|class={y}")`.
    Per-class generators keep memory at O(D*C) instead of the (C, D, C) tensor, which would be
    24 GB in float64 for ImageNet (C = 1000, D = 3072); the distribution is the same.
    """
    rate = _check_rate("inst", rate)
    clean = _check_labels("inst", labels, num_classes)
    _need_two_classes("inst", rate, num_classes)
    if features is None:
        raise ValueError(f"noise protocol 'inst': rate {rate} needs per-sample features "
                         "(flattened 32x32 RGB pixels), none given")
    feats = np.asarray(features)
    if feats.ndim != 2 or feats.shape[0] != clean.size:
        raise ValueError(f"noise protocol 'inst': features must have shape (N={clean.size}, D), got {feats.shape}")
    if not np.all(np.isfinite(feats)):
        raise ValueError("noise protocol 'inst': features contain NaN or inf")
    if not (pixel_scale > 0 and math.isfinite(pixel_scale)):
        raise ValueError(f"noise protocol 'inst': pixel_scale must be a positive number, got {pixel_scale}")
    if rate == 0.0:
        return NoiseResult.from_labels(clean.copy(), clean, num_classes)

    rng = noise_rng("inst", rate, seed, dataset_id)
    n, d = feats.shape
    lo, hi = (0.0 - rate) / flip_std, (1.0 - rate) / flip_std
    q = np.clip(stats.truncnorm.rvs(lo, hi, loc=rate, scale=flip_std, size=n, random_state=rng), 0.0, 1.0)
    flip = rng.random(n) < q
    u = 1.0 - rng.random(n)  # in (0, 1]: the first class whose cumulative mass reaches u has mass > 0

    def projection(y: int) -> np.ndarray:
        # float32 draws: half the time of float64, which dominates for ImageNet (3e9 draws)
        gen = noise_rng("inst_projection", rate, seed, f"{dataset_id}|class={y}")
        return gen.standard_normal((d, num_classes), dtype=np.float32)

    scaled = feats.astype(np.float64) * float(pixel_scale) if pixel_scale != 1.0 else feats
    probs = inst_flip_distribution(scaled, clean, projection)
    cum = np.cumsum(probs, axis=1)
    target = np.minimum((cum < (u * cum[:, -1])[:, None]).sum(axis=1), num_classes - 1)
    noisy = np.where(flip, target, clean)
    return NoiseResult.from_labels(noisy, clean, num_classes)


def real_noise(labels: Any, num_classes: int, clean_labels: Any | None = None) -> NoiseResult:
    """Labels as the dataset gives them; statistics only where the truth is known (CIFAR-100N)."""
    noisy = _check_labels("real", labels, num_classes)
    clean = None if clean_labels is None else _check_labels("real", clean_labels, num_classes)
    if clean is not None and clean.shape != noisy.shape:
        raise ValueError(f"noise protocol 'real': {clean.size} clean labels for {noisy.size} noisy labels")
    return NoiseResult.from_labels(noisy, clean, num_classes)


# ----------------------------------------------------------------------------------------------
# Few-shot constructing protocols (PTNL / JoAPR)
# ----------------------------------------------------------------------------------------------
def fewshot_fp_count(protocol: str, rate: float, shots: int) -> int:
    """False positives per class, which must be a whole number: rate*K = 10.4 has no PTNL cell."""
    rate = _check_rate(protocol, rate)
    if int(shots) != shots or shots < 1:
        raise ValueError(f"noise protocol '{protocol}': rate {rate}: shots must be a positive integer, got {shots}")
    exact = rate * shots
    num_fp = round_half_up(exact)
    if abs(exact - num_fp) > 1e-6:
        raise ValueError(f"noise protocol '{protocol}': rate {rate} cannot be expressed with {shots} shots: "
                         f"rate*shots = {exact:g} is not a whole number of false positives per class")
    return num_fp


def ptnl_fewshot(pool_labels: Any, num_classes: int, shots: int, rate: float, seed: int, dataset_id: str,
                 first_half_clean: bool = True, pair: bool = False,
                 replace_if_short: bool = False) -> FewShotNoise:
    """Build a K-shot set per class in which round(rate*K) shots of class c are images of other classes.

    Following PTNL / JoAPR: each class's pool (its images in pool order) is split at ceil(n/2); with
    `first_half_clean` the K - num_fp clean shots of class c come from the first half of c's pool and
    false positives from the second halves of the other classes' pools, so no image is both a clean
    shot and a false positive. Without it, clean shots come from the whole class pool and false
    positives from the images no class chose as a clean shot. No image is used twice (unless
    `replace_if_short` had to sample with replacement).

    Sym (`pair=False`): the false positives of c are drawn uniformly from all eligible images of the
    other classes. Pair (`pair=True`, JoAPR pairflip): they are drawn from class (c + 1) mod C.

    A class whose clean half holds fewer than K - num_fp images, or too few false-positive candidates,
    is an error; `replace_if_short=True` samples with replacement instead, as PTNL's code does.
    """
    protocol = "pair" if pair else "ptnl_fewshot"
    num_fp = fewshot_fp_count(protocol, rate, shots)
    pool = _check_labels(protocol, pool_labels, num_classes)
    _need_two_classes(protocol, float(rate), num_classes)
    rng = noise_rng(protocol, float(rate), seed, dataset_id)
    num_clean = int(shots) - num_fp

    members = [np.flatnonzero(pool == c) for c in range(num_classes)]
    clean_pool, fp_pool = [], []
    for c, idx in enumerate(members):
        if idx.size == 0:
            raise ValueError(f"noise protocol '{protocol}': rate {rate}: class {c} has no image in the pool")
        split = math.ceil(idx.size / 2) if first_half_clean else idx.size
        clean_pool.append(idx[:split])
        fp_pool.append(idx[split:])

    def draw(candidates: np.ndarray, k: int, what: str) -> np.ndarray:
        if k <= candidates.size:
            return rng.choice(candidates, size=k, replace=False)
        if replace_if_short and candidates.size > 0:
            return rng.choice(candidates, size=k, replace=True)
        raise ValueError(f"noise protocol '{protocol}': rate {rate} with {shots} shots needs {k} {what} "
                         f"but only {candidates.size} exist (set replace_if_short to sample with "
                         "replacement, as PTNL's code does)")

    clean_shots = [draw(clean_pool[c], num_clean, f"clean shots of class {c}") for c in range(num_classes)]
    if not first_half_clean:
        chosen = np.concatenate(clean_shots) if clean_shots else np.zeros(0, np.int64)
        fp_pool = [np.setdiff1d(members[c], chosen) for c in range(num_classes)]

    fp_shots: list[np.ndarray] = []
    if num_fp > 0 and pair:
        for c in range(num_classes):
            fp_shots.append(draw(fp_pool[(c + 1) % num_classes], num_fp,
                                 f"false positives for class {c} from class {(c + 1) % num_classes}"))
    elif num_fp > 0:
        used = np.zeros(pool.size, dtype=bool)
        eligible_all = np.zeros(pool.size, dtype=bool)
        for p in fp_pool:
            eligible_all[p] = True
        for c in range(num_classes):
            eligible = eligible_all & ~used & (pool != c)
            picked = draw(np.flatnonzero(eligible), num_fp, f"false positives for class {c} from other classes")
            used[picked] = True
            fp_shots.append(picked)
    else:
        fp_shots = [np.zeros(0, np.int64) for _ in range(num_classes)]

    indices = np.concatenate([np.concatenate([clean_shots[c], fp_shots[c]]) for c in range(num_classes)])
    indices = indices.astype(np.int64)
    assigned = np.repeat(np.arange(num_classes, dtype=np.int64), [clean_shots[c].size + fp_shots[c].size
                                                                  for c in range(num_classes)])
    true = pool[indices]
    return FewShotNoise(indices=indices, labels=assigned, true_labels=true, num_fp_per_class=num_fp,
                        result=NoiseResult.from_labels(assigned, true, num_classes))
