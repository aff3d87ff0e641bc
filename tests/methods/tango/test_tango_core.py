"""TANGO numerical core: TAC, blocked neighbour search, purification, anchor sentences."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from noisy_prompt.methods.tango import anchors as anchors_mod
from noisy_prompt.data.readers.templates import DESCRIPTION_ALIASES as DEFAULT_ALIASES
from noisy_prompt.methods.tango.anchors import (
    TEMPLATES,
    load_cupl,
    match_descriptions,
    template_sentences,
)
from noisy_prompt.methods.tango.neighbours import blocked_topk
from noisy_prompt.methods.tango.purification import (
    knn_label_vote,
    purify,
    purify_dense,
    resolve_k,
    semantic_to_vision,
    vision_to_semantic,
)
from noisy_prompt.methods.tango.tac import class_anchor_table, tac_log_probs, tac_temperature


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def _clustered(n_per_class, num_classes, dim, anchors_per_class, spread, seed, flip=0.0):
    """Images and anchors around one centre per class; `flip` of the labels moved to another class."""
    g = torch.Generator().manual_seed(seed)
    centres = _unit(torch.randn(num_classes, dim, generator=g))
    clean = torch.arange(num_classes).repeat_interleave(n_per_class)
    feats = _unit(centres[clean] + spread * torch.randn(len(clean), dim, generator=g))
    a_labels = torch.arange(num_classes).repeat_interleave(anchors_per_class)
    anchors = _unit(centres[a_labels] + spread * torch.randn(len(a_labels), dim, generator=g))
    noisy = clean.clone()
    n_flip = int(round(flip * len(clean)))
    flipped = torch.randperm(len(clean), generator=g)[:n_flip]
    shift = torch.randint(1, num_classes, (n_flip,), generator=g)
    noisy[flipped] = (clean[flipped] + shift) % num_classes
    return feats, noisy, clean, anchors, a_labels


# ----------------------------------------------------------------------------------------- TAC


def _naive_tac(feats, anchors, anchor_labels, num_classes, tau):
    a = torch.exp(tau * feats @ anchors.T)
    logits = a @ F.one_hot(anchor_labels, num_classes).to(a.dtype)
    return logits / logits.sum(dim=1, keepdim=True)


def _uneven_anchors(dim, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([2, 0, 1, 2, 1, 0, 2, 2, 1])  # 2, 3 and 4 anchors, interleaved
    return _unit(torch.randn(len(labels), dim, generator=g)), labels


def test_tac_matches_naive_formula_with_uneven_anchor_counts():
    anchors, labels = _uneven_anchors(8, seed=0)
    feats = _unit(torch.randn(6, 8, generator=torch.Generator().manual_seed(1)))
    log_p = tac_log_probs(feats.double(), anchors.double(), labels, 3, tau=5.0)
    expected = _naive_tac(feats.double(), anchors.double(), labels, 3, 5.0)
    assert log_p.shape == (6, 3)
    torch.testing.assert_close(log_p.exp().double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(log_p.exp().sum(dim=1), torch.ones(6), rtol=0, atol=1e-5)


def test_tac_is_finite_at_tau_100_where_naive_float32_overflows():
    anchors, labels = _uneven_anchors(8, seed=2)
    # image 0 sits on anchor 0 (cos = 1) and opposite anchor 1: exp(100) overflows float32, and
    # class 0 (anchor 1 and 5 flipped to -image direction) is ~200 logit units below class 2.
    feats = anchors[[0, 3, 4]].clone()
    anchors = anchors.clone()
    anchors[1] = -feats[0]
    anchors[5] = -feats[0]
    naive32 = _naive_tac(feats, anchors, labels, 3, 100.0)
    assert not torch.isfinite(naive32).all()
    log_p = tac_log_probs(feats, anchors, labels, 3, tau=100.0)
    assert log_p.dtype == torch.float32 and torch.isfinite(log_p).all()
    assert log_p[0, 0] < -150  # far class stays a finite, very negative number, not -inf
    expected64 = _naive_tac(feats.double(), anchors.double(), labels, 3, 100.0)
    torch.testing.assert_close(log_p.exp().double(), expected64, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(log_p.exp().sum(dim=1), torch.ones(3), rtol=0, atol=1e-5)


def test_tac_gradients_reach_features_and_trainable_anchors():
    anchors, labels = _uneven_anchors(8, seed=3)
    raw = torch.randn(5, 8, generator=torch.Generator().manual_seed(4), requires_grad=True)
    anchor_param = torch.nn.Parameter(anchors.clone())
    log_p = tac_log_probs(_unit(raw), _unit(anchor_param), labels, 3, tau=torch.tensor(100.0))
    F.nll_loss(log_p, torch.tensor([0, 1, 2, 0, 1])).backward()
    for grad in (raw.grad, anchor_param.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_tac_rejects_class_without_anchor_and_bad_labels():
    feats = _unit(torch.randn(2, 4))
    anchors = _unit(torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"without anchors: \[2\]"):
        tac_log_probs(feats, anchors, torch.tensor([0, 1, 1, 0]), 3, tau=100.0)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        tac_log_probs(feats, anchors, torch.tensor([0, 1, 2, 3]), 3, tau=100.0)
    with pytest.raises(ValueError, match="anchor_labels must have shape"):
        tac_log_probs(feats, anchors, torch.tensor([0, 1, 2]), 3, tau=100.0)


def test_tac_precomputed_table_and_autocast_give_float32_same_result():
    anchors, labels = _uneven_anchors(8, seed=5)
    feats = _unit(torch.randn(4, 8, generator=torch.Generator().manual_seed(6)))
    reference = tac_log_probs(feats, anchors, labels, 3, tau=100.0)
    table = class_anchor_table(labels, 3)
    torch.testing.assert_close(tac_log_probs(feats, anchors, labels, 3, 100.0, anchor_table=table), reference)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = tac_log_probs(feats, anchors, labels, 3, tau=100.0)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, reference)


# ------------------------------------------------------------------------------ blocked top-k


@pytest.mark.parametrize("block_size", [1, 7, 32, 103, 500])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_blocked_topk_equals_dense_topk(block_size, exclude_self):
    g = torch.Generator().manual_seed(block_size)
    feats = _unit(torch.randn(103, 8, generator=g))
    dense = feats @ feats.T
    if exclude_self:
        dense.fill_diagonal_(float("-inf"))
    ref_values, ref_indices = dense.topk(9, dim=1)
    values, indices = blocked_topk(feats, feats, 9, block_size, exclude_self=exclude_self)
    assert torch.equal(indices, ref_indices)
    torch.testing.assert_close(values, ref_values)
    if exclude_self:
        assert not (indices == torch.arange(103)[:, None]).any()
    else:
        assert torch.equal(indices[:, 0], torch.arange(103))  # a point is its own nearest key


@pytest.mark.parametrize("block_size", [5, 37, 64])
def test_blocked_topk_queries_against_other_keys(block_size):
    g = torch.Generator().manual_seed(11)
    queries, keys = _unit(torch.randn(37, 6, generator=g)), _unit(torch.randn(91, 6, generator=g))
    ref_values, ref_indices = (queries @ keys.T).topk(12, dim=1)
    values, indices = blocked_topk(queries, keys, 12, block_size)
    assert torch.equal(indices, ref_indices)
    torch.testing.assert_close(values, ref_values)


def test_blocked_topk_caps_k_and_validates():
    feats = _unit(torch.randn(10, 4))
    values, indices = blocked_topk(feats, feats, 50, 3, exclude_self=True)
    assert indices.shape == (10, 9)
    # every other point appears exactly once per row
    others = torch.stack([torch.cat([torch.arange(i), torch.arange(i + 1, 10)]) for i in range(10)])
    assert torch.equal(indices.sort(dim=1).values, others)
    assert blocked_topk(feats, feats, 50, 3)[1].shape == (10, 10)
    with pytest.raises(ValueError, match="same set"):
        blocked_topk(feats, feats[:5], 2, 3, exclude_self=True)
    with pytest.raises(ValueError, match="block_size"):
        blocked_topk(feats, feats, 2, 0)
    with pytest.raises(ValueError, match="no neighbours"):
        blocked_topk(feats[:1], feats[:1], 2, 3, exclude_self=True)


# ------------------------------------------------------------------------------- purification


def test_knn_vote_and_vision_to_semantic_on_hand_example():
    e = torch.eye(4)
    # two tight pairs: near e0 (labels 0, 1) and near e1 (labels 1, 1); k=1 -> partner's label
    feats = _unit(torch.stack([e[0] + 0.1 * e[2], e[0] + 0.1 * e[3], e[1] + 0.1 * e[2], e[1] + 0.1 * e[3]]))
    p_vis = knn_label_vote(feats, torch.tensor([0, 1, 1, 1]), 2, k=1, block_size=3)
    assert torch.equal(p_vis, torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]))
    # anchors: 2 per class at e0 (class 0) and e1 (class 1) -> |A|/C = 2 nearest anchors
    anchors = _unit(torch.stack([e[0], e[0] + 0.05 * e[2], e[1], e[1] + 0.05 * e[3]]))
    p_sem = vision_to_semantic(feats, anchors, torch.tensor([0, 0, 1, 1]), 2, block_size=2)
    assert torch.equal(p_sem, torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]))


def test_semantic_to_vision_degree_zero_takes_p_sem():
    e = torch.eye(3)
    feats = _unit(torch.stack([e[0] + s * e[2] for s in (0.0, 0.1, 0.5)] + [e[1] + s * e[2] for s in (0.0, 0.1, 0.5)]))
    anchors = _unit(torch.stack([e[0], e[1], e[0] + 0.2 * e[1]]))
    labels = torch.tensor([0, 1, 1])
    p_sem = torch.full((6, 2), 0.5)
    y_sem = semantic_to_vision(feats, anchors, labels, 2, m=2, p_sem=p_sem, block_size=2)
    # anchor 0 (class 0) picks images 0, 1; anchor 1 (class 1) picks 3, 4; anchor 2 (class 1) picks 0, 1
    expected = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.0, 1.0], [0.0, 1.0], [0.5, 0.5]])
    torch.testing.assert_close(y_sem, expected)
    p_sem[2] = torch.tensor([0.9, 0.1])
    assert torch.equal(semantic_to_vision(feats, anchors, labels, 2, 2, p_sem, 4)[2], torch.tensor([0.9, 0.1]))


def _assert_same_result(a, b):
    for name in ("q", "soft_labels", "p_vis", "p_sem", "y_sem"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=1e-6, msg=name)
    assert torch.equal(a.clean_mask, b.clean_mask)
    assert torch.equal(a.degree, b.degree)
    assert a.stats.keys() == b.stats.keys()
    for key in a.stats:
        assert a.stats[key] == pytest.approx(b.stats[key]), key


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("block_size, m", [(64, None), (1000, 15)])
def test_purify_blocked_equals_dense(beta, block_size, m):
    feats, noisy, clean, anchors, a_labels = _clustered(60, 5, 16, 8, spread=0.9, seed=7, flip=0.4)
    kwargs = dict(beta=beta, k=20, m=m, block_size=block_size, clean_labels=clean)
    blocked = purify(feats, noisy, anchors, a_labels, 5, **kwargs)
    dense = purify_dense(feats, noisy, anchors, a_labels, 5, **kwargs)
    _assert_same_result(blocked, dense)
    # the example is not degenerate: some but not all selected
    assert 0 < blocked.clean_mask.sum() < 300
    if m is not None:  # 40 anchors x 15 picks cannot cover 300 images
        assert blocked.stats["num_degree_zero"] > 0


def test_purify_blocked_equals_dense_with_explicit_m_and_k_cap():
    feats, noisy, _, anchors, a_labels = _clustered(10, 3, 8, 5, spread=0.8, seed=8, flip=0.3)
    blocked = purify(feats, noisy, anchors, a_labels, 3, k=500, m=7, block_size=4)
    dense = purify_dense(feats, noisy, anchors, a_labels, 3, k=500, m=7)
    _assert_same_result(blocked, dense)
    assert "precision" not in blocked.stats  # only with clean labels


def test_purify_semantics_on_separated_clusters_with_40_percent_flips():
    feats, noisy, clean, anchors, a_labels = _clustered(100, 4, 16, 10, spread=0.15, seed=9, flip=0.4)
    res = purify(feats, noisy, anchors, a_labels, 4, beta=0.5, k=20, m=10, block_size=128, clean_labels=clean)
    truly_clean = noisy == clean
    assert truly_clean.float().mean() == pytest.approx(0.6)
    selected = res.clean_mask
    precision = (selected & truly_clean).sum().item() / selected.sum().item()
    recall = (selected & truly_clean).sum().item() / truly_clean.sum().item()
    assert precision > 0.95 > truly_clean.float().mean()
    assert recall > 0.9
    assert res.stats["precision"] == pytest.approx(precision)
    assert res.stats["recall"] == pytest.approx(recall)
    assert res.stats["clean_fraction"] == pytest.approx(selected.float().mean().item())
    assert res.stats["soft_label_accuracy"] > 0.95 > res.stats["noisy_label_accuracy"]
    ones = torch.ones(400)
    for probs in (res.p_vis, res.p_sem, res.q, res.y_sem, res.soft_labels):
        torch.testing.assert_close(probs.sum(dim=1), ones)
        assert (probs >= 0).all()
    # m=10 with 10 anchors per class of 100 images: many images are picked by no anchor
    zero = res.degree == 0
    assert res.stats["num_degree_zero"] == zero.sum().item() > 0
    assert torch.equal(res.y_sem[zero], res.p_sem[zero])
    assert torch.equal(res.y_sem[~zero].argmax(dim=1), clean[~zero])  # anchors pick their own cluster


def test_purify_validates_inputs():
    feats, noisy, _, anchors, a_labels = _clustered(5, 2, 4, 2, spread=0.5, seed=1)
    with pytest.raises(ValueError, match="beta"):
        purify(feats, noisy, anchors, a_labels, 2, beta=1.5)
    with pytest.raises(ValueError, match=r"noisy_labels must lie in \[0, 2\)"):
        purify(feats, noisy + 1, anchors, a_labels, 2)
    with pytest.raises(ValueError, match="noisy_labels must have shape"):
        purify(feats, noisy[:-1], anchors, a_labels, 2)
    with pytest.raises(ValueError, match="anchors must be"):
        purify(feats, noisy, anchors[:, :3], a_labels, 2)


class _LargestTensorGuard(TorchDispatchMode):
    """Fails as soon as any torch op produces a tensor with more than `limit` elements."""

    class TooLarge(AssertionError):
        pass

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.largest = limit, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
                if t.numel() > self.limit:
                    raise self.TooLarge(f"{func} produced {tuple(t.shape)} (> {self.limit} elements)")
        return out


def test_purify_never_allocates_n_by_n_and_the_guard_catches_dense():
    block_size = 512
    feats, noisy, _, anchors, a_labels = _clustered(2000, 10, 32, 40, spread=0.7, seed=3, flip=0.2)
    n, num_anchors = feats.shape[0], anchors.shape[0]
    assert n == 20_000
    limit = block_size * max(n, num_anchors)  # one similarity slab
    guard = _LargestTensorGuard(limit)
    with guard:
        purify(feats, noisy, anchors, a_labels, 10, k=50, block_size=block_size)
    assert 0 < guard.largest <= limit < n * n // 30

    # the same guard trips on the dense reference, already at N = 2000
    small = slice(0, 20_000, 10)
    small_limit = block_size * max(2000, num_anchors)
    with pytest.raises(_LargestTensorGuard.TooLarge):
        with _LargestTensorGuard(small_limit):
            purify_dense(feats[small], noisy[small], anchors, a_labels, 10, k=50, block_size=block_size)


_RSS_SCRIPT = textwrap.dedent(
    """
    import resource, sys, torch
    import torch.nn.functional as F
    from noisy_prompt.methods.tango.purification import purify
    torch.manual_seed(0)
    n, c, d = 20_000, 10, 32
    feats = F.normalize(torch.randn(n, d), dim=1)
    labels = torch.randint(0, c, (n,))
    anchors = F.normalize(torch.randn(c * 40, d), dim=1)
    a_labels = torch.arange(c).repeat_interleave(40)
    purify(feats[:600], labels[:600], anchors, a_labels, c, k=50, block_size=512)  # warm up kernels
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    purify(feats, labels, anchors, a_labels, c, k=50, block_size=512)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024)  # ru_maxrss is in KiB on Linux
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss units are KiB on Linux only")
def test_purify_peak_rss_stays_far_below_n_squared():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT], capture_output=True, text=True, timeout=120, env=env, check=True
    )
    grown = int(out.stdout.strip().splitlines()[-1])
    # measured once on CPU: blocked ~45 MiB, purify_dense ~3.1 GiB for this problem
    n_squared_bytes = 20_000**2 * 4  # 1.6 GB: what a single dense similarity matrix would take
    assert grown < n_squared_bytes / 8, f"peak RSS grew by {grown / 2**20:.0f} MiB"


# ------------------------------------------------------------------------------------ anchors


def _write(tmp_path, content, name="cupl.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def test_load_cupl_reads_object_of_lists(tmp_path):
    data = {"golden retriever": ["a dog.", "a gold dog."], "cat": []}
    assert load_cupl(_write(tmp_path, data)) == data


@pytest.mark.parametrize(
    "content, pattern",
    [
        ("{not json", r"not valid JSON"),
        (["a", "b"], r"expected a JSON object .* got a list"),
        ({"cat": "a cat."}, r"entry 'cat' must be a list of sentences, got a str"),
        ({"dog": ["ok", 3]}, r"entry 'dog' item 1 must be a string, got int 3"),
    ],
)
def test_load_cupl_errors_name_path_and_key(tmp_path, content, pattern):
    path = _write(tmp_path, content)
    with pytest.raises(ValueError, match=pattern) as info:
        load_cupl(path)
    assert str(path) in str(info.value)


def test_load_cupl_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        load_cupl(tmp_path / "nowhere.json")


def test_match_descriptions_keys_aliases_cap_and_fallback(caplog):
    descriptions = {
        "golden retriever": [f"retriever {i}." for i in range(50)],
        "Tabby_Cat": ["a striped cat.", "  ", "a tabby."],
        "side of a car": ["a car seen from the side."],
        "head of a  crocodile": ["a crocodile's snout."],
        "empty": [],
    }
    classnames = ["Golden_Retriever", "tabby cat", "car_side", "crocodile head", "unicorn", "empty"]
    with caplog.at_level(logging.WARNING, logger=anchors_mod.__name__):
        sentences, fell_back = match_descriptions(
            classnames, descriptions, k=40, aliases=DEFAULT_ALIASES["caltech101"]
        )
    assert sentences[0] == [f"retriever {i}." for i in range(40)]  # capped at k, file order
    assert sentences[1] == ["a striped cat.", "a tabby."]  # fewer than k: all (blank dropped)
    assert sentences[2] == ["a car seen from the side."]  # alias "car side" -> "side of a car"
    assert sentences[3] == ["a crocodile's snout."]  # alias target with a doubled space
    assert fell_back == ["unicorn", "empty"]
    assert sentences[4] == template_sentences("unicorn", 40)
    assert len(sentences[5]) == 40 and all("empty" in s for s in sentences[5])
    assert "unicorn" in caplog.text and "empty" in caplog.text and "2 of 6" in caplog.text


def test_match_descriptions_without_file_and_alias_to_absent_key():
    sentences, fell_back = match_descriptions(["car side", "dog"], None, k=3)
    assert fell_back == ["car side", "dog"] and all(len(s) == 3 for s in sentences)
    # alias points at a key the file lacks: the class's own name is still tried
    sentences, fell_back = match_descriptions(["face"], {"Face": ["a face."]}, aliases={"face": "off-center face"})
    assert sentences == [["a face."]] and fell_back == []


def test_imagenet_duplicate_names_share_one_entry():
    descriptions = {"missile": ["a rocket."], "sunglasses": ["dark glasses."]}
    names = ["missile", "projectile", "sunglass", "sunglasses"]
    sentences, fell_back = match_descriptions(names, descriptions, aliases=DEFAULT_ALIASES["imagenet"])
    assert fell_back == []
    assert sentences == [["a rocket."], ["a rocket."], ["dark glasses."], ["dark glasses."]]


def test_template_sentences_are_varied_and_cycle():
    assert len(set(TEMPLATES)) == len(TEMPLATES) >= 40
    forty = template_sentences("sea_horse", 40)
    assert len(set(forty)) == 40 and all("sea horse" in s and "_" not in s for s in forty)
    hundred = template_sentences("ox", 100)
    assert len(hundred) == 100 and hundred[len(TEMPLATES)] == hundred[0]
    with pytest.raises(ValueError, match="k must be >= 1"):
        template_sentences("ox", 0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        match_descriptions(["ox"], None, k=0)


def test_default_aliases_are_normalised_class_names():
    for dataset, aliases in DEFAULT_ALIASES.items():
        for name, key in aliases.items():
            assert name == anchors_mod.normalise_key(name), (dataset, name)
            assert anchors_mod.normalise_key(key) != name, (dataset, name)


# ------------------------------------------------------------------------ readings of section 4b (switches)
def test_k_auto_is_four_tenths_of_images_per_class():
    assert resolve_k("auto", 50_000, 100) == 200  # CIFAR-100: the paper's k
    assert resolve_k("auto", 2_520, 42) == 24  # 60 images per class: round(24.0)
    assert resolve_k("auto", 130, 10) == 5  # round(5.2)
    assert resolve_k("auto", 10, 5) == 1  # round(0.8) = 1, and never below 1
    assert resolve_k("auto", 6, 6) == 1
    assert resolve_k(200, 10, 5) == 200 and resolve_k(7.0, 10, 5) == 7  # integers pass (capped later)
    for bad in ("fast", 0, -3, 2.5, True):
        with pytest.raises(ValueError, match="model.k must be a positive integer or 'auto'"):
            resolve_k(bad, 100, 10)


def test_purify_with_k_auto_equals_the_resolved_integer_and_is_capped():
    feats, noisy, clean, anchors, a_labels = _clustered(20, 5, 8, 4, spread=0.9, seed=3, flip=0.4)
    auto = purify(feats, noisy, anchors, a_labels, 5, k="auto", clean_labels=clean)
    fixed = purify(feats, noisy, anchors, a_labels, 5, k=8, clean_labels=clean)  # round(0.4 x 100/5) = 8
    other = purify(feats, noisy, anchors, a_labels, 5, k=20, clean_labels=clean)
    assert torch.equal(auto.p_vis, fixed.p_vis) and not torch.equal(auto.p_vis, other.p_vis)
    # 2 images of 2 classes: auto gives 1, the cap N - 1 = 1 holds
    tiny = purify(feats[:2], torch.tensor([0, 1]), anchors[:2], torch.tensor([0, 1]), 2, k="auto")
    assert tiny.p_vis.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    _assert_same_result(auto, purify_dense(feats, noisy, anchors, a_labels, 5, k="auto", clean_labels=clean))


def _angles(*degrees):
    rad = torch.tensor(degrees, dtype=torch.float64) * torch.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1).float()


def test_weighted_knn_vote_hand_computed():
    # Point 0 at 0°, its two nearest others: point 1 (cos 0.9, label 0) and point 3 (cos 0.6, label 1);
    # point 2 is opposite (cos -1). Labels [0, 0, 0, 1]: class prior [0.75, 0.25].
    deg = 180 / torch.pi
    feats = _angles(0.0, float(torch.acos(torch.tensor(0.9)) * deg), 180.0, -float(torch.acos(torch.tensor(0.6)) * deg))
    labels = torch.tensor([0, 0, 0, 1])
    uniform = knn_label_vote(feats, labels, 2, k=2, block_size=2)
    weighted = knn_label_vote(feats, labels, 2, k=2, block_size=2, vote="weighted")
    assert uniform[0].tolist() == pytest.approx([0.5, 0.5])
    # class totals 0.9 and 0.6, divided by the prior: 1.2 and 2.4, normalised: [1/3, 2/3]
    assert weighted[0].tolist() == pytest.approx([1 / 3, 2 / 3], abs=1e-6)
    torch.testing.assert_close(weighted.sum(1), torch.ones(4))
    # blocks of any size, and the dense reference, agree
    torch.testing.assert_close(knn_label_vote(feats, labels, 2, k=2, block_size=1, vote="weighted"), weighted)
    with pytest.raises(ValueError, match="model.knn_vote must be one of"):
        knn_label_vote(feats, labels, 2, k=2, block_size=2, vote="softmax")


def test_weighted_vote_is_uniform_where_every_neighbour_is_dissimilar():
    # The 4 vertices of a regular simplex: every pair has cos -1/3, so with k=3 every weight clamps to 0
    # and each row votes 1/C (the uniform count would say [1/3, 2/3] for point 0).
    feats = _unit(torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]))
    labels = torch.tensor([0, 1, 0, 1])
    out = knn_label_vote(feats, labels, 2, k=3, block_size=4, vote="weighted")
    torch.testing.assert_close(out, torch.full((4, 2), 0.5))
    assert knn_label_vote(feats, labels, 2, k=3, block_size=4)[0].tolist() == pytest.approx([1 / 3, 2 / 3])


def test_weighted_vote_is_the_ssr_baselines_vote():
    # TANGO's `knn_vote: weighted` reading is SSR's vote: the same numbers as the SSR baseline's function.
    core = pytest.importorskip("noisy_prompt.methods.baselines.core")
    feats, noisy, _, _, _ = _clustered(30, 4, 8, 2, spread=1.2, seed=5, flip=0.5)
    noisy[:7] = 0  # an unbalanced prior
    ours = knn_label_vote(feats, noisy, 4, k=12, block_size=16, vote="weighted")
    torch.testing.assert_close(ours, core.weighted_knn_vote(feats, noisy, 4, k=12, block_size=16))


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_purify_weighted_vote_blocked_equals_dense(beta):
    feats, noisy, clean, anchors, a_labels = _clustered(40, 5, 16, 8, spread=0.9, seed=9, flip=0.4)
    kwargs = dict(beta=beta, k=15, block_size=32, clean_labels=clean, knn_vote="weighted")
    blocked = purify(feats, noisy, anchors, a_labels, 5, **kwargs)
    _assert_same_result(blocked, purify_dense(feats, noisy, anchors, a_labels, 5, **kwargs))
    uniform = purify(feats, noisy, anchors, a_labels, 5, **{**kwargs, "knn_vote": "uniform"})
    assert not torch.allclose(blocked.p_vis, uniform.p_vis)


def test_tac_literal_form_is_exp_of_the_raw_cosine():
    assert tac_temperature("logsumexp", None, 100.0) == 100.0
    assert tac_temperature("logsumexp", 7.0, 100.0) == 7.0
    assert tac_temperature("literal", None, 100.0) == 1.0
    with pytest.raises(ValueError, match="tac_form=literal has no temperature"):
        tac_temperature("literal", 7.0, 100.0)
    with pytest.raises(ValueError, match="model.tac_form must be one of"):
        tac_temperature("softmax", None, 100.0)
    g = torch.Generator().manual_seed(2)
    feats = _unit(torch.randn(3, 6, generator=g))
    anchors, labels = _uneven_anchors(6, seed=4)
    literal = tac_log_probs(feats, anchors, labels, 3, tac_temperature("literal", None, 100.0)).exp()
    # the printed formula: a_ij = exp(v.t_j), p(c|x) = sum_{j in c} a_ij / sum_j a_ij
    a = torch.exp(feats.double() @ anchors.double().T)
    expected = torch.stack([a[:, labels == c].sum(1) for c in range(3)], dim=1) / a.sum(1, keepdim=True)
    torch.testing.assert_close(literal.double(), expected, rtol=1e-5, atol=1e-6)
    # nearly flat: the per-class sums lie in [K/e, K e], so no probability strays far from the anchor share
    share = torch.bincount(labels, minlength=3).double() / len(labels)
    assert (literal.double() / share).max() < torch.e ** 2 and (literal.double() / share).min() > torch.e ** -2
