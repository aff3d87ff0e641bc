"""SSR, LSL, DivideMix and DeFT LightningModules on a tiny random CLIP and the synthetic world: trainable sets,
the per-epoch verdicts equal the pure cores on the same features, a two-epoch fit updates what each method
trains, label_issues.csv, checkpoint content, and the presets compose with TANGO's recipe."""
from __future__ import annotations

import csv

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf

import noisy_prompt.config  # noqa: F401  (resolvers)
from fake_trees import save_tiny_clip
from noisy_prompt.config import ctor_kwargs
from noisy_prompt.data.datamodule import CLIPDataModule
from noisy_prompt.data.facts import DataFacts
from noisy_prompt.methods.baselines import core
from noisy_prompt.methods.baselines.common import augment_view
from noisy_prompt.methods.baselines.core import class_balanced_weights
from noisy_prompt.methods.baselines.deft import DeFT, deep_prompt_forward
from noisy_prompt.methods.baselines.dividemix import DivideMix
from noisy_prompt.methods.baselines.ssr import LSL, SSR
from noisy_prompt.methods.selection import LABEL_ISSUE_COLUMNS
from noisy_prompt.noise import NoiseSpec
from paths import CONF

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PER_CLASS = 4
FAST = {"ssr": {"k": 10}, "lsl": {"k": 10, "k_st": 3}, "dividemix": {},
        # threshold 0: a one-epoch detector on a random tiny CLIP over 64 classes can accept nobody, and then
        # phase 2 has nothing to train on; these tests check what trains, not the detector's quality.
        "deft": {"phase1": {"epochs": 1, "n_ctx": 4, "vpt_tokens": 3, "threshold": 0.0}}}
CLASSES = {"ssr": SSR, "lsl": LSL, "dividemix": DivideMix, "deft": DeFT}
OPTIM = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "warmup_epochs": 0, "warmup_lr": 0.0}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> dict:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), TINY)


@pytest.fixture(scope="module")
def dm(backbone) -> CLIPDataModule:
    d = CLIPDataModule("synthetic", reader_kwargs={"num_train_per_class": PER_CLASS, "num_val_per_class": 0,
                                                   "num_test_per_class": 1},
                       shots=None, noise=NoiseSpec(name="sym50", protocol="sym", rate=0.5), seed=1, backbone=backbone,
                       input="images", train_aug="none", batch_size=64, eval_batch_size=256, val_from="test")
    d.setup("fit")
    return d


def _module(name, backbone, dm, **kwargs):
    kw = {**FAST[name], "max_epochs": 2, "optim": OPTIM, **kwargs}
    return CLASSES[name](backbone=backbone, classnames=list(dm.classnames), templates=["a photo of a {}."],
                         test_sets=["test"], input="images", seed=3, **kw)


def _trainable(m) -> set[str]:
    return {n for n, p in m.named_parameters() if p.requires_grad}


def _under(m, *prefixes) -> set[str]:
    return {n for n, _ in m.named_parameters() if n.startswith(prefixes)}


# ---------------------------------------------------------------------------------- construction


def test_trainable_sets(backbone, dm):
    ssr = _module("ssr", backbone, dm)
    assert _trainable(ssr) == _under(ssr, "clip.visual.", "head.", "proj_head.", "pred_head.")
    assert "clip.visual.proj" in _trainable(ssr) and "clip.text_projection" not in _trainable(ssr)
    dmx = _module("dividemix", backbone, dm)
    assert _trainable(dmx) == _under(dmx, "clip.visual.", "visual_b.", "head.", "head_b.")
    assert not torch.equal(dmx.head.weight, dmx.head_b.weight)  # the heads differ by a seeded draw
    assert all(torch.equal(a, b) for a, b in zip(dmx.clip.visual.parameters(), dmx.visual_b.parameters()))
    deft = _module("deft", backbone, dm)
    # Phase 1: prompts only (the tower is frozen); the phase-2 head exists from the start.
    assert _trainable(deft) == {"ctx_pos", "ctx_neg", "vpt", "head.weight", "head.bias"}
    assert deft.vpt.shape == (TINY["vision_cfg"]["layers"], 3, TINY["vision_cfg"]["width"])
    assert deft.ctx_pos.shape == (4, TINY["text_cfg"]["width"]) and not torch.equal(deft.ctx_pos, deft.ctx_neg)
    for m in (ssr, dmx, deft):
        assert all(n.startswith("clip.visual.") or not n.startswith("clip.") for n in m.trainable_state_names())


def test_zero_shot_head_and_test_logits(backbone, dm):
    m = _module("ssr", backbone, dm).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        v = F.normalize(m.clip.visual(x), dim=-1)
        want = m.logit_scale * v @ m.template_text_features().T
        torch.testing.assert_close(m.logits(x), want)
    dmx = _module("dividemix", backbone, dm).eval()
    with torch.no_grad():
        torch.testing.assert_close(dmx.logits(x), dmx.net_logits("a", x) + dmx.net_logits("b", x))


def test_deep_prompts_without_tokens_are_the_plain_tower(backbone, dm):
    m = _module("deft", backbone, dm).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = m.clip.visual(x)
        empty = torch.zeros(TINY["vision_cfg"]["layers"], 0, TINY["vision_cfg"]["width"])
        torch.testing.assert_close(deep_prompt_forward(m.clip.visual, x, empty), plain)
        assert not torch.allclose(deep_prompt_forward(m.clip.visual, x, m.vpt), plain)
    with pytest.raises(ValueError, match="prompts must be"):
        deep_prompt_forward(m.clip.visual, x, torch.zeros(1, 2, TINY["vision_cfg"]["width"]))


def test_config_errors_name_the_key(backbone, dm):
    with pytest.raises(ValueError, match=r"model.max_epochs \(1\) must exceed model.phase1.epochs \(1\)"):
        _module("deft", backbone, dm, max_epochs=1)
    with pytest.raises(ValueError, match="model.phase1: unknown keys"):
        _module("deft", backbone, dm, phase1={"epochs": 1, "ctx": 3})
    with pytest.raises(ValueError, match="theta_r"):
        _module("ssr", backbone, dm, theta_r=1.5)
    with pytest.raises(ValueError, match="model.input must be 'images'"):
        SSR(backbone=backbone, classnames=list(dm.classnames), input="features")
    with pytest.raises(ValueError, match="model.gmm: unknown keys"):
        _module("dividemix", backbone, dm, gmm={"iters": 3})
    with pytest.raises(ValueError, match="model.head_init"):
        _module("ssr", backbone, dm, head_init="text")


# ------------------------------------------------------------------------------- verdicts = cores


def test_ssr_and_lsl_verdicts_are_the_cores_on_the_same_features(backbone, dm):
    m = _module("lsl", backbone, dm, theta_r=0.05)
    v, extra = m.score_training_set(dm)
    m.eval()
    feats, probs = [], []
    with torch.no_grad():
        for batch in dm.train_eval_dataloader():
            f = m.image_features(batch["x"])
            feats.append(f)
            probs.append(torch.softmax(m.head(f), 1))
    feats, probs = torch.cat(feats), torch.cat(probs)
    given = torch.as_tensor(dm.train_labels)
    working, relabelled = core.ssr_relabel(probs, given, 0.05)
    assert relabelled.any() and torch.equal(m.working, working)
    vote = core.weighted_knn_vote(feats, working, m.num_classes, 10)
    clean, _ = core.ssr_select(vote, working, 1.0)
    assert torch.equal(v.clean_mask, clean) and torch.equal(v.suggested, working)
    assert torch.equal(v.given, given) and torch.equal(v.true, torch.as_tensor(dm.train_clean))
    torch.testing.assert_close(m.sample_weight, class_balanced_weights(working, clean, m.num_classes))
    st, _ = core.structural_labels(feats, working, m.num_classes, 3)
    torch.testing.assert_close(m.structural, st)
    assert extra["num_relabelled"] == float(relabelled.sum())


def test_dividemix_co_divide_is_the_gmm_of_each_network(backbone, dm):
    m = _module("dividemix", backbone, dm)
    v, extra = m.score_training_set(dm)
    m.eval()
    given = torch.as_tensor(dm.train_labels)
    with torch.no_grad():
        x = torch.cat([b["x"] for b in dm.train_eval_dataloader()])
        for net in "ab":
            losses = F.cross_entropy(m.net_logits(net, x), given, reduction="none")
            torch.testing.assert_close(m.p_clean[net], core.gmm_clean_probability(losses, **m.gmm_cfg))
    torch.testing.assert_close(v.score, (m.p_clean["a"] + m.p_clean["b"]) / 2)
    assert torch.equal(v.clean_mask, v.score > 0.5)
    assert extra["num_clean_a"] == float((m.p_clean["a"] > 0.5).sum())


def test_deft_verdicts_hold_where_p_yes_saturates(backbone, dm):
    """Every class's pos − neg above 17 (p_yes = 1.0 in float32), the given label's the largest: every sample
    is clean, also under the real-noise argmax rule (read from p_yes, all classes tied and argmax picked 0)."""
    m = _module("deft", backbone, dm, phase1={**FAST["deft"]["phase1"], "threshold": 0.5, "require_argmax": "on"})
    given = torch.as_tensor(dm.train_labels)
    order = {"n": 0}

    def saturated(x):
        rows = given[order["n"]: order["n"] + len(x)]
        order["n"] += len(x)
        pos = 30.0 + 7.0 * F.one_hot(rows, m.num_classes).float()
        return pos, torch.full_like(pos, 12.0)

    m.prompt_logits = saturated
    v, _ = m.score_training_set(dm)
    assert torch.equal(v.given, given) and bool((given != 0).any())
    assert bool(v.clean_mask.all()), f"{int((~v.clean_mask).sum())} of {len(given)} judged noisy"


# ------------------------------------------------------------------------------------- training


class _Snapshots(L.Callback):
    """Parameter copies at the end of every epoch."""

    def __init__(self):
        self.params = []

    def on_train_epoch_end(self, trainer, module):
        self.params.append({n: p.detach().clone() for n, p in module.named_parameters()})


@pytest.fixture(scope="module", params=sorted(CLASSES))
def fitted(request, backbone, dm, tmp_path_factory):
    name = request.param
    m = _module(name, backbone, dm)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    snaps = _Snapshots()
    root = tmp_path_factory.mktemp(f"fit_{name}")
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=str(root), callbacks=[snaps])
    trainer.fit(m, datamodule=dm)
    ckpt = root / "final.ckpt"
    trainer.save_checkpoint(ckpt)
    trainer.test(m, datamodule=dm, verbose=False)
    return {"name": name, "module": m, "before": before, "snaps": snaps, "ckpt": ckpt, "root": root}


def _changed(a: dict, b: dict) -> set[str]:
    return {n for n in a if not torch.equal(a[n], b[n])}


@pytest.mark.slow
def test_fit_trains_what_the_method_trains(fitted):
    name, m, before, snaps = fitted["name"], fitted["module"], fitted["before"], fitted["snaps"]
    after = {n: p.detach() for n, p in m.named_parameters()}
    changed = _changed(before, after)
    assert not any(n.startswith(("clip.transformer.", "clip.token_embedding")) for n in changed)
    assert "clip.logit_scale" not in changed
    if name in ("ssr", "lsl"):
        assert {"clip.visual.proj", "head.weight", "proj_head.0.weight", "pred_head.0.weight"} <= changed
    elif name == "dividemix":
        assert {"clip.visual.proj", "visual_b.proj", "head.weight", "head_b.weight"} <= changed
    else:  # DeFT: phase 1 moves the prompts only; phase 2 the tower and head, never the prompts
        epoch1 = _changed(before, snaps.params[0])
        assert epoch1 == {"ctx_pos", "ctx_neg", "vpt"}
        epoch2 = _changed(snaps.params[0], snaps.params[1])
        assert "clip.visual.proj" in epoch2 and "head.weight" in epoch2
        assert not epoch2 & {"ctx_pos", "ctx_neg", "vpt"}
        assert m.phase == 2
    assert len(m.val_history) == 2 and "acc" in m.test_report["test"]


@pytest.mark.slow
def test_verdict_history_metrics_and_results(fitted):
    name, m = fitted["name"], fitted["module"]
    hist = m.purification_history
    # SSR/LSL: before both epochs; DivideMix: after its 1 warm-up epoch; DeFT: phase-1 epoch, then the final pass.
    assert [h["epoch"] for h in hist] == {"ssr": [0, 1], "lsl": [0, 1], "dividemix": [1], "deft": [0, 1]}[name]
    for h in hist:
        assert {"clean_fraction", "num_clean", "precision", "recall", "noisy_label_acc"} <= set(h)
        assert h["clean_fraction"] == pytest.approx(h["num_clean"] / len(m.verdicts.given))
        assert 0.0 <= h["precision"] <= 1.0 and 0.0 <= h["recall"] <= 1.0
    metrics = m.extra_metrics()
    assert metrics["purify/precision_last"] == hist[-1]["precision"]
    assert metrics["purify/clean_fraction_first"] == hist[0]["clean_fraction"]
    assert m.extra_results() == {"purification": hist}
    assert "purification_history" in m.REPORT_ATTRS


@pytest.mark.slow
def test_label_issues_csv(fitted, dm, tmp_path):
    m = fitted["module"]
    m.write_label_issues(tmp_path / "label_issues.csv")
    with (tmp_path / "label_issues.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == LABEL_ISSUE_COLUMNS
        rows = list(reader)
    assert [int(r["index"]) for r in rows] == list(range(len(dm.train_labels)))
    assert [int(r["given_label"]) for r in rows] == [int(v) for v in dm.train_labels]
    assert [int(r["true_label"]) for r in rows] == [int(v) for v in dm.train_clean]
    verdict = [r["verdict"] == "clean" for r in rows]
    assert {r["verdict"] for r in rows} <= {"clean", "noisy"}
    assert [int(r["method_label"]) for r in rows] == m.verdicts.suggested.tolist()
    assert verdict == m.verdicts.clean_mask.tolist()
    truly = [int(g) == int(t) for g, t in zip(dm.train_labels, dm.train_clean)]
    hits = sum(v and t for v, t in zip(verdict, truly))
    last = m.purification_history[-1]
    if fitted["name"] != "deft":  # DeFT's phase-1 epoch entries count training batches; its last entry is the file's
        assert last["num_clean"] == sum(verdict)
    assert m.purification_history[-1]["precision"] == pytest.approx(hits / sum(verdict) if any(verdict) else 0.0)
    assert all(r["given_class"] == dm.classnames[int(r["given_label"])] for r in rows)
    assert all(r["suggested_class"] == dm.classnames[int(r["suggested_label"])] for r in rows)


@pytest.mark.slow
def test_checkpoint_holds_trainable_state_and_history(fitted, backbone, dm):
    name, m = fitted["name"], fitted["module"]
    ckpt = torch.load(fitted["ckpt"], map_location="cpu", weights_only=False)
    keys = set(ckpt["state_dict"])
    assert keys == m.trainable_state_names()
    assert not any(k.startswith(("clip.transformer.", "clip.token_embedding")) for k in keys)
    assert ckpt["baseline"]["purification_history"] == m.purification_history
    fresh = _module(name, backbone, dm)
    fresh.load_state_dict(ckpt["state_dict"], strict=False)
    fresh.on_load_checkpoint(ckpt)
    assert torch.equal(fresh.clip.visual.proj, m.clip.visual.proj)
    if name == "deft":
        assert fresh.phase == 2 and torch.equal(fresh.final_verdicts.clean_mask.cpu(), m.final_verdicts.clean_mask.cpu())
        assert torch.equal(fresh.vpt, m.vpt)


def test_ssr_step_without_clean_samples_trains_the_fc_term_only(backbone, dm):
    m = _module("ssr", backbone, dm)
    m.log_dict = m.log = lambda *a, **kw: None
    from noisy_prompt.methods.baselines.common import Verdicts

    n = 6
    given = torch.arange(n) % m.num_classes
    none = torch.zeros(n, dtype=torch.bool)
    m.working, m.sample_weight = given, torch.zeros(n)
    m.verdicts = Verdicts(0, given, None, none, torch.zeros(n), given, torch.zeros(n))
    batch = {"x": torch.randn(n, 3, 32, 32), "label": given, "index": torch.arange(n)}
    loss = m.training_step(batch, 0)
    loss.backward()
    assert m.head.weight.grad is None or float(m.head.weight.grad.abs().sum()) == 0.0
    assert float(m.proj_head[0].weight.grad.abs().sum()) > 0 and m.clip.visual.proj.grad is not None


def test_augment_view_is_seeded_and_shape_preserving():
    x = torch.randn(4, 3, 16, 16)
    a = augment_view(x, torch.Generator().manual_seed(0))
    b = augment_view(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


# ----------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("preset", sorted(CLASSES))
def test_preset_composes_with_tangos_recipe(preset, backbone, dm):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cifar = compose(config_name="run", overrides=[f"model={preset}", "data=cifar100", "backbone=vit_b16"])
        syn = compose(config_name="run", overrides=[f"model={preset}", "data=synthetic_full", "noise=sym40",
                                                   "model.max_epochs=2"]
                      + (["model.phase1.epochs=1", "model.phase1.n_ctx=4"] if preset == "deft" else []))
    m = OmegaConf.to_container(cifar.model, resolve=True)
    assert m["name"] == preset and m["input"] == "images" and m["batch_size"] == 64
    assert m["optim"] == {"name": "sgd", "lr": 5e-4, "momentum": 0.9, "weight_decay": 5e-4, "warmup_epochs": 0,
                          "warmup_lr": 0.0}
    assert m["max_epochs"] == (30 if preset == "deft" else 20) and cifar.trainer.max_epochs == m["max_epochs"]
    if preset == "deft":
        assert (m["phase1"]["epochs"], m["phase1"]["lr"], m["phase1"]["n_ctx"], m["phase1"]["vpt_tokens"]) == (10, 0.03, 16, 20)
    if preset in ("ssr", "lsl"):
        assert (m["k"], m["theta_r"], m["theta_s"], m["lambda_fc"], m["mixup_alpha"]) == (200, 0.9, 1.0, 1.0, 4.0)
    if preset == "lsl":
        assert (m["k_st"], m["lambda_st"]) == (20, 1.0)
    if preset == "dividemix":
        assert (m["warmup_epochs"], m["p_threshold"], m["temperature"]) == (1, 0.5, 0.5)
    kwargs = ctor_kwargs(syn, "model")
    target = kwargs.pop("_target_")
    module = get_class(target)(**kwargs, backbone=backbone, classnames=list(dm.classnames),
                               templates=["a photo of a {}."], test_sets=["test"], seed=1)
    assert isinstance(module, CLASSES[preset]) and module.max_epochs == 2


def test_ssr_k_auto_scales_with_the_served_images_per_class(backbone, dm):
    m = _module("ssr", backbone, dm, k="auto")
    m.score_training_set(dm)
    n, c = len(dm.train_labels), m.num_classes
    assert m.knn_k == max(1, round(0.4 * n / c))
    with pytest.raises(ValueError, match="model.k must be a positive integer or 'auto'"):
        _module("ssr", backbone, dm, k="many")


def test_dividemix_warm_up_step_and_penalty_switch(backbone, dm):
    m = _module("dividemix", backbone, dm)
    assert m.warmup_epochs == 1 and m.current_epoch == 0
    m.log = m.log_dict = lambda *a, **kw: None

    assert not m.penalty_on()  # built without facts: no noise protocol, no penalty under `auto`
    # The noise protocol is a fact the module is built with (the paper's rule: the penalty under asymmetric noise).
    assert _module("dividemix", backbone, dm, facts=DataFacts(noise_protocol="asym")).penalty_on()
    assert not _module("dividemix", backbone, dm, facts=DataFacts(noise_protocol="sym")).penalty_on()
    assert _module("dividemix", backbone, dm, confidence_penalty="off",
                   facts=DataFacts(noise_protocol="asym")).penalty_on() is False
    # One warm-up step (CE on all samples) moves both networks, each with its own optimiser.
    opts = [torch.optim.SGD([*m.clip.visual.parameters(), *m.head.parameters()], lr=0.1),
            torch.optim.SGD([*m.visual_b.parameters(), *m.head_b.parameters()], lr=0.1)]
    m.optimizers = lambda: opts
    m.manual_backward = lambda loss: loss.backward()
    before_a, before_b = m.head.weight.detach().clone(), m.head_b.weight.detach().clone()
    batch = {"x": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 2, 3]), "index": torch.arange(4)}
    m.training_step(batch, 0)
    assert not torch.equal(m.head.weight, before_a) and not torch.equal(m.head_b.weight, before_b)


def test_lsl_k_st_auto(backbone, dm):
    from noisy_prompt.methods.baselines.ssr import resolve_k_st

    assert resolve_k_st("auto", 50000, 100) == 20 and resolve_k_st("auto", 10, 100) == 1 and resolve_k_st(7, 1, 1) == 7
    with pytest.raises(ValueError, match="model.k_st must be a positive integer or 'auto'"):
        resolve_k_st("some", 1, 1)
    m = _module("lsl", backbone, dm, k_st="auto")
    m.score_training_set(dm)
    assert m.k_st == max(1, round(0.04 * len(dm.train_labels) / m.num_classes))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deft", "dividemix"])
def test_resume_across_the_phase_boundary(name, backbone, dm, tmp_path):
    """Interrupted after epoch 1 (DeFT: end of phase 1; DivideMix: end of warm-up), resumed from the checkpoint:
    both optimisers' states come back and epoch 2 runs the second phase from the restored state."""
    def trainer(epochs):
        return L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=str(tmp_path))

    first = _module(name, backbone, dm)
    t1 = trainer(1)
    t1.fit(first, datamodule=dm)
    ckpt = tmp_path / "epoch1.ckpt"
    t1.save_checkpoint(ckpt)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert len(saved["optimizer_states"]) == 2

    resumed = _module(name, backbone, dm)
    tower_before = resumed.clip.visual.proj.detach().clone()
    trainer(2).fit(resumed, datamodule=dm, ckpt_path=str(ckpt))
    assert resumed.current_epoch == 2 and not torch.equal(resumed.clip.visual.proj, tower_before)
    assert [h["epoch"] for h in resumed.purification_history][-1] == 1
    if name == "deft":
        assert resumed.phase == 2 and torch.equal(resumed.vpt, first.vpt)  # phase 2 never moves the prompts
        assert resumed.final_verdicts is not None
    else:
        assert set(resumed.p_clean) == {"a", "b"}
