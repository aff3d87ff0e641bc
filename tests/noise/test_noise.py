"""Label-noise protocols (docs/noise.md): determinism, exact counts, mappings, few-shot construction, configs."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from noisy_prompt.data.readers.cifar100_classes import CIFAR100_COARSE_NAMES, CIFAR100_FINE_NAMES, CIFAR100_SUPERCLASS
from noisy_prompt.noise import (
    NoiseSpec,
    asym_cyclic_noise,
    asym_superclass_noise,
    clean_noise,
    dataset_identity,
    inst_noise,
    noise_rng,
    ptnl_fewshot,
    real_noise,
    sym_noise,
)
from noisy_prompt.noise.protocols import inst_flip_distribution
from paths import CONF

NOISE_CONF = CONF / "noise"
EXPECTED_CONFIGS = {
    "clean", "sym12.5", "sym25", "sym40", "sym50", "sym60", "sym65", "sym80", "inst20", "inst40", "inst60",
    "inst80", "asym30", "asym30_superclass", "ptnl_fp2", "ptnl_fp4", "ptnl_fp8", "pair_fp2", "pair_fp4",
    "pair_fp8", "real",
}


def _labels(n: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, c, size=n).astype(np.int64)


def _interleaved_pool(num_classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    """Class labels in a shuffled file order, so 'first half of the class' is not 'first rows'."""
    pool = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(seed).permutation(pool).astype(np.int64)


# ---------------------------------------------------------------------------------------------- rng
def test_noise_rng_depends_on_every_key_and_nothing_else():
    a = noise_rng("sym", 0.4, 1, "ds").random(5)
    np.random.seed(123)
    random.seed(123)
    assert np.array_equal(a, noise_rng("sym", 0.4, 1, "ds").random(5))
    for other in [("asym", 0.4, 1, "ds"), ("sym", 0.5, 1, "ds"), ("sym", 0.4, 2, "ds"), ("sym", 0.4, 1, "ds2")]:
        assert not np.array_equal(a, noise_rng(*other).random(5)), other


def test_dataset_identity_changes_with_class_order():
    assert dataset_identity("d", ["a", "b"]) != dataset_identity("d", ["b", "a"])
    assert dataset_identity("d", ["a", "b"]) == dataset_identity("d", ["a", "b"])


# ---------------------------------------------------------------------------------------------- determinism
def test_sym_is_deterministic_and_ignores_global_rng_state_and_call_order():
    import torch

    y = _labels(500, 10)
    first = sym_noise(y, 10, 0.5, 1, "ds").noisy_labels
    np.random.seed(7)
    random.seed(7)
    torch.manual_seed(7)
    np.random.random(100)
    asym_cyclic_noise(y, 10, 0.3, 1, "ds")  # another draw in between must not shift the stream
    inst_noise(y, 10, 0.4, 1, "ds", np.ones((500, 3)))
    again = sym_noise(y, 10, 0.5, 1, "ds").noisy_labels
    assert np.array_equal(first, again)


@pytest.mark.parametrize("fn", ["sym", "asym", "superclass", "inst"])
def test_different_seeds_and_datasets_give_different_noise(fn):
    y = _labels(2000, 100)
    feats = np.random.default_rng(1).random((2000, 12))

    def run(seed, ds):
        if fn == "sym":
            return sym_noise(y, 100, 0.4, seed, ds).noisy_labels
        if fn == "asym":
            return asym_cyclic_noise(y, 100, 0.3, seed, ds).noisy_labels
        if fn == "superclass":
            return asym_superclass_noise(y, 100, 0.3, seed, ds, CIFAR100_SUPERCLASS).noisy_labels
        return inst_noise(y, 100, 0.4, seed, ds, feats).noisy_labels

    base = run(1, "a")
    assert np.array_equal(base, run(1, "a"))
    assert not np.array_equal(base, run(2, "a"))
    assert not np.array_equal(base, run(1, "b"))


# ---------------------------------------------------------------------------------------------- clean / sym
def test_clean_is_exact_identity():
    y = _labels(300, 7)
    res = clean_noise(y, 7)
    assert np.array_equal(res.noisy_labels, y) and res.noisy_labels is not y
    assert res.realised_rate == 0.0
    assert np.array_equal(res.transition, np.eye(7))


@pytest.mark.parametrize("rate", [0.125, 0.25, 0.5, 0.65, 0.8])
def test_sym_exclude_true_flips_exactly_round_rN(rate):
    y = _labels(1000, 10)
    res = sym_noise(y, 10, rate, 3, "ds", exclude_true=True)
    assert int(np.sum(res.noisy_labels != y)) == round(rate * 1000)
    assert res.realised_rate == pytest.approx(rate, abs=1e-12)
    assert res.noisy_labels.dtype == np.int64 and res.noisy_labels.min() >= 0 and res.noisy_labels.max() < 10


def test_sym_rounds_half_up():
    # 0.125 * 4 = 0.5 -> 1 sample (Python's round would give 0)
    res = sym_noise(np.array([0, 1, 2, 3]), 4, 0.125, 1, "ds")
    assert int(np.sum(res.noisy_labels != np.arange(4))) == 1


def test_sym_exclude_true_targets_are_uniform_over_other_classes():
    y = np.zeros(40000, dtype=np.int64)
    res = sym_noise(y, 5, 0.5, 1, "ds")
    counts = np.bincount(res.noisy_labels, minlength=5)
    assert counts[0] == 20000
    assert np.all(np.abs(counts[1:] / 20000 - 0.25) < 0.02)


def test_sym_including_true_class_realises_about_r_times_c_minus_one_over_c():
    y = _labels(100000, 10)
    res = sym_noise(y, 10, 0.4, 1, "ds", exclude_true=False)
    assert res.realised_rate == pytest.approx(0.4 * 9 / 10, abs=0.01)
    assert res.realised_rate < 0.39  # clearly not the exclude-true rate
    # still only round(r*N) samples were touched: the rest are unchanged, so realised <= r
    assert int(np.sum(res.noisy_labels != y)) <= 40000


# ---------------------------------------------------------------------------------------------- asym
def test_asym_cyclic_maps_to_next_class_with_exact_count():
    y = _labels(1000, 10)
    res = asym_cyclic_noise(y, 10, 0.3, 1, "ds")
    flipped = res.noisy_labels != y
    assert int(flipped.sum()) == 300
    assert np.array_equal(res.noisy_labels[flipped], (y[flipped] + 1) % 10)
    assert res.transition[9, 0] > 0 and res.transition[9, 0] + res.transition[9, 9] == pytest.approx(1.0)


def test_asym_superclass_stays_in_superclass_and_moves_to_the_next_member():
    sc = np.asarray(CIFAR100_SUPERCLASS)
    y = _labels(20000, 100)
    res = asym_superclass_noise(y, 100, 0.3, 1, "cifar100", CIFAR100_SUPERCLASS)
    assert np.array_equal(sc[res.noisy_labels], sc[y])
    flipped = res.noisy_labels != y
    assert res.realised_rate == pytest.approx(0.3, abs=0.015)
    for clean, noisy in set(zip(y[flipped].tolist(), res.noisy_labels[flipped].tolist())):
        members = sorted(np.flatnonzero(sc == sc[clean]).tolist())
        assert noisy == members[(members.index(clean) + 1) % len(members)]
    # each class flips to exactly one successor
    assert np.all((res.transition > 0).sum(axis=1) == 2)


def test_asym_superclass_rejects_singleton_superclass_and_missing_map():
    with pytest.raises(ValueError, match="only class"):
        asym_superclass_noise(np.array([0, 1, 2]), 3, 0.3, 1, "ds", [0, 0, 1])
    with pytest.raises(ValueError, match="superclass map"):
        asym_superclass_noise(np.array([0, 1, 2]), 3, 0.3, 1, "ds", None)


def test_cifar100_superclass_table():
    sc = np.asarray(CIFAR100_SUPERCLASS)
    assert sc.shape == (100,) and len(CIFAR100_FINE_NAMES) == 100 and len(CIFAR100_COARSE_NAMES) == 20
    assert np.array_equal(np.bincount(sc, minlength=20), np.full(20, 5))
    assert CIFAR100_FINE_NAMES == sorted(CIFAR100_FINE_NAMES)  # the standard fine order is alphabetical
    coarse = dict(zip(CIFAR100_FINE_NAMES, (CIFAR100_COARSE_NAMES[k] for k in sc)))
    assert coarse["apple"] == "fruit_and_vegetables"
    assert coarse["aquarium_fish"] == "fish"
    assert coarse["whale"] == "aquatic_mammals"
    assert coarse["worm"] == "non-insect_invertebrates"
    assert coarse["lawn_mower"] == "vehicles_2" and coarse["pickup_truck"] == "vehicles_1"
    assert coarse["keyboard"] == "household_electrical_devices"


# ---------------------------------------------------------------------------------------------- inst
@pytest.mark.parametrize("rate", [0.2, 0.4, 0.6, 0.8])
def test_inst_realised_rate_is_close_to_r(rate):
    y = _labels(4000, 10)
    feats = np.random.default_rng(2).integers(0, 256, size=(4000, 24)).astype(np.float64)
    res = inst_noise(y, 10, rate, 1, "ds", feats)
    assert res.realised_rate == pytest.approx(rate, abs=0.035)
    assert np.allclose(res.transition.sum(axis=1), 1.0)


def test_inst_flip_distribution_excludes_the_true_class():
    feats = np.random.default_rng(0).random((50, 6))
    y = _labels(50, 4)
    w = np.random.default_rng(1).standard_normal((4, 6, 4))
    probs = inst_flip_distribution(feats, y, lambda c: w[c])
    assert np.all(probs[np.arange(50), y] == 0.0)
    assert np.allclose(probs.sum(axis=1), 1.0)


def test_inst_on_raw_pixels_flips_to_the_argmax_of_the_projection():
    """Raw 0..255 scores saturate the softmax: a flipped sample goes to argmax_{c != y} f.W[y]."""
    n, d, c, rate, seed, ds = 600, 30, 8, 0.5, 4, "ds"
    y = _labels(n, c)
    feats = np.random.default_rng(5).integers(0, 256, size=(n, d)).astype(np.float64)
    res = inst_noise(y, c, rate, seed, ds, feats)
    flipped = res.noisy_labels != y
    assert flipped.sum() > 200
    w = {k: noise_rng("inst_projection", rate, seed, f"{ds}|class={k}").standard_normal((d, c), dtype=np.float32)
         for k in range(c)}
    for i in np.flatnonzero(flipped):
        scores = feats[i] @ w[int(y[i])].astype(np.float64)
        scores[y[i]] = -np.inf
        assert res.noisy_labels[i] == int(np.argmax(scores))


def test_inst_pixel_scale_changes_targets_not_which_samples_flip():
    y = _labels(2000, 10)
    feats = np.random.default_rng(5).integers(0, 256, size=(2000, 30)).astype(np.float64)
    raw = inst_noise(y, 10, 0.4, 1, "ds", feats)
    unit = inst_noise(y, 10, 0.4, 1, "ds", feats, pixel_scale=1 / 255)
    assert np.array_equal(raw.noisy_labels != y, unit.noisy_labels != y)
    assert not np.array_equal(raw.noisy_labels, unit.noisy_labels)


def test_inst_accepts_uint8_pixels_and_rate_zero_is_identity():
    y = _labels(200, 5)
    pix = np.random.default_rng(0).integers(0, 256, size=(200, 12), dtype=np.uint8)
    assert np.array_equal(inst_noise(y, 5, 0.4, 1, "ds", pix).noisy_labels,
                          inst_noise(y, 5, 0.4, 1, "ds", pix.astype(np.float64)).noisy_labels)
    assert np.array_equal(inst_noise(y, 5, 0.0, 1, "ds", pix).noisy_labels, y)


def test_inst_needs_matching_features():
    y = _labels(10, 3)
    with pytest.raises(ValueError, match=r"'inst'.*features"):
        inst_noise(y, 3, 0.4, 1, "ds", None)
    with pytest.raises(ValueError, match=r"shape \(N=10, D\)"):
        inst_noise(y, 3, 0.4, 1, "ds", np.zeros((9, 4)))


# ---------------------------------------------------------------------------------------------- few-shot
def _class_halves(pool: np.ndarray, c: int) -> tuple[set, set]:
    idx = np.flatnonzero(pool == c)
    split = math.ceil(idx.size / 2)
    return set(idx[:split].tolist()), set(idx[split:].tolist())


@pytest.mark.parametrize("pair", [False, True])
@pytest.mark.parametrize("rate,num_fp", [(0.125, 2), (0.25, 4), (0.5, 8)])
def test_ptnl_fewshot_structure(pair, rate, num_fp):
    c_num, k = 6, 16
    pool = _interleaved_pool(c_num, 41)
    fs = ptnl_fewshot(pool, c_num, k, rate, 1, "ds", pair=pair)
    assert fs.num_fp_per_class == num_fp
    assert len(set(fs.indices.tolist())) == fs.indices.size  # no image twice
    assert np.array_equal(fs.true_labels, pool[fs.indices])
    for c in range(c_num):
        rows = fs.labels == c
        assert rows.sum() == k
        idx, true = fs.indices[rows], fs.true_labels[rows]
        fp = true != c
        assert fp.sum() == num_fp
        first, _ = _class_halves(pool, c)
        assert set(idx[~fp].tolist()) <= first  # clean shots: first half of the class's own images
        for i, t in zip(idx[fp].tolist(), true[fp].tolist()):
            assert i in _class_halves(pool, t)[1]  # false positives: second half of their true class
        if pair:
            assert np.all(true[fp] == (c + 1) % c_num)
    assert fs.result.realised_rate == pytest.approx(rate)
    # per_class_rate is per *true* class; under pair each class lends num_fp images to exactly one class
    if pair:
        assert fs.result.per_class_rate == pytest.approx([rate] * c_num)
    else:
        assert all(0.0 <= r < 1.0 for r in fs.result.per_class_rate)
    assert np.allclose(fs.result.transition.sum(axis=1), 1.0)


def test_ptnl_fewshot_sym_false_positives_spread_over_other_classes():
    pool = _interleaved_pool(6, 200)
    fs = ptnl_fewshot(pool, 6, 16, 0.5, 1, "ds")
    assert len(set(fs.true_labels[fs.is_false_positive].tolist())) == 6
    assert np.all(fs.labels[fs.is_false_positive] != fs.true_labels[fs.is_false_positive])


def test_ptnl_fewshot_without_first_half_rule_uses_whole_pool_and_no_duplicates():
    pool = _interleaved_pool(5, 30)
    fs = ptnl_fewshot(pool, 5, 16, 0.25, 2, "ds", first_half_clean=False)
    assert len(set(fs.indices.tolist())) == fs.indices.size
    clean_idx = fs.indices[~fs.is_false_positive]
    second_halves = set().union(*(_class_halves(pool, c)[1] for c in range(5)))
    assert set(clean_idx.tolist()) & second_halves  # 60 clean shots of 150 images: some from second halves


def test_ptnl_fewshot_is_deterministic_and_seed_dependent():
    pool = _interleaved_pool(4, 40)
    a = ptnl_fewshot(pool, 4, 16, 0.25, 1, "ds")
    np.random.seed(0)
    assert np.array_equal(a.indices, ptnl_fewshot(pool, 4, 16, 0.25, 1, "ds").indices)
    assert not np.array_equal(a.indices, ptnl_fewshot(pool, 4, 16, 0.25, 2, "ds").indices)


def test_ptnl_fewshot_rejects_inexpressible_rates_and_small_classes():
    pool = _interleaved_pool(4, 40)
    with pytest.raises(ValueError, match=r"'ptnl_fewshot'.*0\.65.*10\.4"):
        ptnl_fewshot(pool, 4, 16, 0.65, 1, "ds")
    with pytest.raises(ValueError, match=r"'pair'.*0\.125.*0\.5 is not a whole number"):
        ptnl_fewshot(pool, 4, 4, 0.125, 1, "ds", pair=True)
    small = _interleaved_pool(4, 20)  # first half = 10 < 14 clean shots
    with pytest.raises(ValueError, match=r"needs 14 clean shots of class 0 but only 10 exist.*replace_if_short"):
        ptnl_fewshot(small, 4, 16, 0.125, 1, "ds")
    fs = ptnl_fewshot(small, 4, 16, 0.125, 1, "ds", replace_if_short=True)
    assert np.array_equal(np.bincount(fs.labels), [16] * 4)


# ---------------------------------------------------------------------------------------------- results
def test_noise_result_summary_is_strict_json_and_marks_absent_classes():
    res = sym_noise(np.array([0, 0, 1, 1, 1, 1]), 3, 0.5, 1, "ds")  # class 2 absent
    s = res.summary()
    json.dumps(s, allow_nan=False)
    assert s["per_class_rate"][2] is None and s["transition"][2] == [0.0, 0.0, 0.0]
    assert s["realised_rate"] == pytest.approx(0.5) and s["num_noisy"] == 3
    assert np.allclose(np.asarray(s["transition"][:2]).sum(axis=1), 1.0)
    assert "transition" not in res.summary(include_transition=False)


def test_real_noise_stats_only_with_known_clean_labels():
    noisy = np.array([0, 1, 1, 2])
    unknown = real_noise(noisy, 3)
    assert unknown.realised_rate is None and unknown.summary()["realised_rate"] is None
    json.dumps(unknown.summary(), allow_nan=False)
    known = real_noise(noisy, 3, clean_labels=np.array([0, 1, 2, 2]))
    assert known.realised_rate == pytest.approx(0.25)
    assert np.array_equal(known.noisy_labels, noisy)


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, float("nan")])
def test_rates_outside_unit_interval_are_errors(rate):
    with pytest.raises(ValueError, match=r"'sym'.*outside \[0, 1\)"):
        sym_noise(np.array([0, 1]), 2, rate, 1, "ds")
    with pytest.raises(ValueError, match=r"sym50.*'sym'.*outside \[0, 1\)"):
        NoiseSpec(name="sym50", protocol="sym", rate=rate)


def test_asym_at_half_or_more_is_an_error():
    with pytest.raises(ValueError, match=r"'asym'.*0\.5.*majority"):
        asym_cyclic_noise(np.array([0, 1]), 2, 0.5, 1, "ds")
    with pytest.raises(ValueError, match=r"'asym'.*0\.6"):
        NoiseSpec(name="a", protocol="asym", rate=0.6, asym_variant="superclass")


def test_labels_out_of_range_are_errors():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        sym_noise(np.array([0, 3]), 3, 0.5, 1, "ds")
    with pytest.raises(ValueError, match="integers"):
        sym_noise(np.array([0.0, 1.0]), 3, 0.5, 1, "ds")


# ---------------------------------------------------------------------------------------------- NoiseSpec
def test_noise_spec_validation_messages():
    with pytest.raises(ValueError, match=r"unknown protocol 'symm'.*clean, sym, asym, inst, ptnl_fewshot, pair, real"):
        NoiseSpec(name="x", protocol="symm", rate=0.1)
    with pytest.raises(ValueError, match=r"'clean'.*0\.2 must be 0"):
        NoiseSpec(name="x", protocol="clean", rate=0.2)
    with pytest.raises(ValueError, match="asym_variant 'block'"):
        NoiseSpec(name="x", protocol="asym", rate=0.2, asym_variant="block")
    y = _labels(20, 4)
    with pytest.raises(ValueError, match=r"'inst', rate 0\.4.*features"):
        NoiseSpec(name="x", protocol="inst", rate=0.4).apply(y, 4, 1, "ds")
    with pytest.raises(ValueError, match=r"'asym' superclass, rate 0\.3.*superclass map"):
        NoiseSpec(name="x", protocol="asym", rate=0.3, asym_variant="superclass").apply(y, 4, 1, "ds")
    with pytest.raises(ValueError, match="build_fewshot"):
        NoiseSpec(name="x", protocol="pair", rate=0.25).apply(y, 4, 1, "ds")
    with pytest.raises(ValueError, match="does not build"):
        NoiseSpec(name="x", protocol="sym", rate=0.25).build_fewshot(y, 4, 16, 1, "ds")


def test_noise_spec_dispatches_to_the_protocols():
    y = _labels(400, 10)
    feats = np.random.default_rng(0).random((400, 5))
    assert np.array_equal(NoiseSpec("s", "sym", 0.4, exclude_true=False).apply(y, 10, 2, "ds").noisy_labels,
                          sym_noise(y, 10, 0.4, 2, "ds", exclude_true=False).noisy_labels)
    assert np.array_equal(NoiseSpec("a", "asym", 0.3).apply(y, 10, 2, "ds").noisy_labels,
                          asym_cyclic_noise(y, 10, 0.3, 2, "ds").noisy_labels)
    spec_inst = NoiseSpec("i", "inst", 0.4, pixel_scale=0.5)
    assert spec_inst.needs_pixels and not spec_inst.is_fewshot_constructing
    assert np.array_equal(spec_inst.apply(y, 10, 2, "ds", features=feats).noisy_labels,
                          inst_noise(y, 10, 0.4, 2, "ds", feats, pixel_scale=0.5).noisy_labels)
    assert np.array_equal(NoiseSpec("c", "clean").apply(y, 10, 2, "ds").noisy_labels, y)
    real = NoiseSpec("r", "real").apply(y, 10, 2, "ds", clean_labels=y)
    assert real.realised_rate == 0.0
    pool = _interleaved_pool(5, 40)
    spec_pair = NoiseSpec("p", "pair", 0.25)
    assert spec_pair.is_fewshot_constructing and not spec_pair.needs_pixels
    fs = spec_pair.build_fewshot(pool, 5, 16, 3, "ds")
    assert np.array_equal(fs.indices, ptnl_fewshot(pool, 5, 16, 0.25, 3, "ds", pair=True).indices)


# ---------------------------------------------------------------------------------------------- configs
def test_every_noise_config_instantiates_a_spec_named_after_its_file():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    files = sorted(NOISE_CONF.glob("*.yaml"))
    assert {f.stem for f in files} == EXPECTED_CONFIGS
    specs = {}
    for f in files:
        spec = instantiate(OmegaConf.load(f))
        assert isinstance(spec, NoiseSpec), f
        assert spec.name == f.stem, f
        specs[f.stem] = spec
    for name in ("sym12.5", "sym25", "sym50", "sym65", "sym80"):
        assert specs[name].protocol == "sym" and specs[name].exclude_true, name
        assert specs[name].rate == pytest.approx(float(name[3:]) / 100)
    for name in ("sym40", "sym60"):  # TANGO tables, DeFT convention
        assert specs[name].protocol == "sym" and not specs[name].exclude_true, name
    for name in ("inst20", "inst40", "inst60", "inst80"):
        assert specs[name].protocol == "inst" and specs[name].pixel_scale == 1.0
        assert specs[name].rate == pytest.approx(int(name[4:]) / 100)
    assert specs["asym30"].asym_variant == "cyclic" and specs["asym30"].rate == pytest.approx(0.3)
    assert specs["asym30_superclass"].asym_variant == "superclass"
    for fp in (2, 4, 8):
        assert specs[f"ptnl_fp{fp}"].protocol == "ptnl_fewshot" and specs[f"ptnl_fp{fp}"].rate * 16 == fp
        assert specs[f"pair_fp{fp}"].protocol == "pair" and specs[f"pair_fp{fp}"].rate * 16 == fp
    assert specs["clean"].protocol == "clean" and specs["real"].protocol == "real"


def test_dotted_config_name_composes_through_hydra():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(NOISE_CONF.parent), version_base="1.3"):
        cfg = compose(overrides=["+noise=sym12.5"])
    assert instantiate(cfg.noise) == NoiseSpec(name="sym12.5", protocol="sym", rate=0.125, exclude_true=True)
