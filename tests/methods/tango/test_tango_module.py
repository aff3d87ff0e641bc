"""TANGO LightningModule on a tiny random CLIP and the synthetic world: trainable set, purification
between epochs, training loss, label-issue export, checkpoint content and the preset configs."""
from __future__ import annotations

import csv
import inspect
import json

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
from noisy_prompt.methods.base import ClassifierModule
from noisy_prompt.methods.tango.anchors import template_sentences
from noisy_prompt.methods.selection import LABEL_ISSUE_COLUMNS
from noisy_prompt.methods.tango.module import ANCHOR_SOURCE_ALIASES, Tango
from noisy_prompt.methods.tango.tac import tac_log_probs
from noisy_prompt.noise import NoiseSpec
from noisy_prompt.data.readers import read_dataset
from paths import CONF

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PER_CLASS = 6
READER_KWARGS = {"num_train_per_class": PER_CLASS, "num_val_per_class": 0, "num_test_per_class": 2}
# The classes the synthetic reader serves downstream (the world decides how many; read, not hard-coded).
CLASSNAMES = tuple(read_dataset("synthetic", None, **READER_KWARGS).classnames)
N_TRAIN = PER_CLASS * len(CLASSNAMES)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> dict:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), TINY)


def _module(backbone, k_anchors=4, **kwargs) -> Tango:
    kwargs.setdefault("anchors", {"source": "templates", "k": k_anchors})
    return Tango(backbone=backbone, classnames=list(CLASSNAMES), templates=["a photo of a {}."], test_sets=["test"],
                 input="images", seed=3, **kwargs)


def _datamodule(backbone, noise=None) -> CLIPDataModule:
    dm = CLIPDataModule("synthetic", reader_kwargs=dict(READER_KWARGS),
                        shots=None, noise=noise, seed=1, backbone=backbone, input="images", train_aug="none",
                        batch_size=64, eval_batch_size=256, val_from="test")
    dm.setup("fit")
    return dm


def _names(module, prefix):
    return {n for n, _ in module.named_parameters() if n.startswith(prefix)}


# ---------------------------------------------------------------------------------- construction


def test_only_the_vision_tower_trains_by_default(backbone):
    m = _module(backbone)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == _names(m, "clip.visual.") and trainable
    assert "clip.visual.proj" in trainable  # the projection is part of the encoder
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert {"clip.logit_scale", "clip.token_embedding.weight", "clip.text_projection"} <= frozen
    assert _names(m, "clip.transformer.") <= frozen
    assert "anchors" in dict(m.named_buffers()) and not isinstance(m.anchors, torch.nn.Parameter)
    assert m.trainable_state_names() == {n for n in m.state_dict() if n.startswith("clip.visual.")}
    assert m.tau == pytest.approx(float(m.clip.logit_scale.exp()))


def test_linear_and_trainable_anchor_variants_add_their_parameters(backbone):
    lin = _module(backbone, classifier="linear", beta=0.0)
    trainable = {n for n, p in lin.named_parameters() if p.requires_grad}
    assert trainable == _names(lin, "clip.visual.") | {"head.weight", "head.bias"}
    # Zero-shot start: each class weight is tau times its anchors' unit mean direction.
    means = torch.stack([lin.anchors[lin.anchor_labels == c].mean(0) for c in range(lin.num_classes)])
    torch.testing.assert_close(lin.head.weight, lin.tau * F.normalize(means, dim=-1))
    assert "head.weight" in lin.trainable_state_names()

    ta = _module(backbone, trainable_anchors=True)
    assert isinstance(ta.anchors, torch.nn.Parameter) and ta.anchors.requires_grad
    assert "anchors" in ta.trainable_state_names()
    assert ta.anchors in ta.trainable_parameters()
    with pytest.raises(ValueError, match="classifier=tac"):
        _module(backbone, classifier="linear", trainable_anchors=True)


def test_anchor_sources_and_fallback(backbone, tmp_path, caplog):
    k = 3
    tmpl = _module(backbone, anchors={"source": "templates", "k": k})
    assert tmpl.anchor_sentences[5] == template_sentences(CLASSNAMES[5], k)
    assert tmpl.anchors.shape == (k * len(CLASSNAMES), TINY["embed_dim"])
    torch.testing.assert_close(tmpl.anchors.norm(dim=-1), torch.ones(len(tmpl.anchors)))
    assert torch.equal(torch.bincount(tmpl.anchor_labels), torch.full((len(CLASSNAMES),), k))

    # source=dataset: the descriptions the datamodule hands over (class_descriptions), matched like a file
    own = {c.upper().replace(" ", "_"): [f"{c}, seen in the world number {i}." for i in range(5)] for c in CLASSNAMES}
    syn = _module(backbone, anchors={"source": "dataset", "k": k}, class_descriptions=own)
    assert syn.anchor_sentences[0] == [f"{CLASSNAMES[0]}, seen in the world number {i}." for i in range(k)]
    assert syn.anchor_fallback == [] and not torch.allclose(syn.anchors, tmpl.anchors)
    # the older name of that source is an alias (methods never import the synthetic world)
    alias = _module(backbone, anchors={"source": "synthetic", "k": k}, class_descriptions=own)
    assert alias.anchor_sentences == syn.anchor_sentences
    with pytest.raises(ValueError, match=r"anchors.source=dataset .* data 'cifar100' publishes none"):
        _module(backbone, anchors={"source": "dataset", "k": k}, dataset="cifar100")

    # One class in the file (spelled with an underscore and upper case), two sentences only; the rest fall back.
    path = tmp_path / "cupl.json"
    target = CLASSNAMES[1]
    path.write_text(json.dumps({target.title().replace(" ", "_"): ["a round red thing.", "a red disc."]}))
    with caplog.at_level("WARNING"):
        cupl = _module(backbone, anchors={"source": "cupl", "path": str(path), "k": k})
    assert cupl.anchor_sentences[1] == ["a round red thing.", "a red disc."]
    assert target not in cupl.anchor_fallback and len(cupl.anchor_fallback) == len(CLASSNAMES) - 1
    assert f"{len(CLASSNAMES) - 1} of {len(CLASSNAMES)} classes use template sentences" in caplog.text
    assert int((cupl.anchor_labels == 1).sum()) == 2
    assert cupl.extra_metrics()["anchors/num_fallback_classes"] == len(CLASSNAMES) - 1

    no_file = _module(backbone, anchors={"source": "cupl", "path": None, "k": k})
    assert len(no_file.anchor_fallback) == len(CLASSNAMES)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        _module(backbone, anchors={"source": "cupl", "path": str(tmp_path / "nope.json"), "k": k})
    with pytest.raises(ValueError, match="anchors.source"):
        _module(backbone, anchors={"source": "llm", "k": k})
    with pytest.raises(ValueError, match="unknown keys"):
        _module(backbone, anchors={"source": "templates", "K": k})
    with pytest.raises(ValueError, match="input must be 'images'"):
        Tango(backbone=backbone, classnames=list(CLASSNAMES), input="features")


def test_logits_are_tac_log_probabilities(backbone):
    m = _module(backbone, tau=7.0).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        out = m.logits(x)
        v = F.normalize(m.clip.visual(x), dim=-1)
        ref = tac_log_probs(v, m.anchors, m.anchor_labels, m.num_classes, 7.0)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(5))


# --------------------------------------------------------------------------------------- training


def test_training_step_losses(backbone):
    m = _module(backbone)
    from noisy_prompt.methods.tango.module import PurifiedLabels

    n, c = 8, m.num_classes
    soft = torch.softmax(torch.randn(n, c, generator=torch.Generator().manual_seed(0)), dim=1)
    given = torch.arange(n) % c
    batch = {"x": torch.randn(4, 3, 32, 32), "label": given[[1, 3, 5, 7]], "index": torch.tensor([1, 3, 5, 7])}
    logged = {}
    m.log_dict = lambda d, **kw: logged.update({k: float(v.detach()) for k, v in d.items()})
    m.log = lambda *a, **kw: None

    def run(clean_mask):
        m.purified = PurifiedLabels(0, given, None, clean_mask, soft, torch.zeros(n))
        m.mix_generator.manual_seed(11)
        return m.training_step(batch, 0)

    none_clean = run(torch.zeros(n, dtype=torch.bool))
    assert logged["train/l_clean"] == 0.0 and logged["train/l_reg"] > 0
    assert float(none_clean.detach()) == pytest.approx(logged["train/l_reg"])
    all_clean = run(torch.ones(n, dtype=torch.bool))
    assert logged["train/l_clean"] > 0 and logged["train/clean_in_batch"] == 1.0
    # Same generator state, same mixup: L_reg does not depend on the clean mask.
    assert float(all_clean.detach()) == pytest.approx(logged["train/l_clean"] + float(none_clean.detach()), rel=1e-5)
    all_clean.backward()
    assert m.clip.visual.proj.grad is not None and m.clip.text_projection.grad is None


def _step_parts(m, clean_mask=None, seed=11):
    """One training step on a fixed batch with a fixed purification and Mixup draw: (loss, logged parts)."""
    from noisy_prompt.methods.tango.module import PurifiedLabels

    n, c = 8, m.num_classes
    soft = torch.softmax(torch.randn(n, c, generator=torch.Generator().manual_seed(0)), dim=1)
    given = torch.arange(n) % c
    mask = torch.ones(n, dtype=torch.bool) if clean_mask is None else clean_mask
    batch = {"x": torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), "label": given[[1, 3, 5, 7]],
             "index": torch.tensor([1, 3, 5, 7])}
    logged = {}
    m.log_dict = lambda d, **kw: logged.update({k: float(v.detach()) for k, v in d.items()})
    m.log = lambda *a, **kw: None
    m.purified = PurifiedLabels(0, given, None, mask, soft, torch.zeros(n))
    m.mix_generator.manual_seed(seed)
    return float(m.training_step(batch, 0).detach()), logged


def test_lreg_weight_scales_the_regulariser_alone(backbone):
    base_loss, base = _step_parts(_module(backbone))
    weighted = _module(backbone, lreg_weight=2.5)
    loss, parts = _step_parts(weighted)
    # same weights, batch, purification and Mixup draw: the two terms are unchanged, only their sum differs
    assert parts["train/l_clean"] == pytest.approx(base["train/l_clean"], rel=1e-6)
    assert parts["train/l_reg"] == pytest.approx(base["train/l_reg"], rel=1e-6)
    assert base_loss == pytest.approx(base["train/l_clean"] + base["train/l_reg"], rel=1e-6)
    assert loss == pytest.approx(base["train/l_clean"] + 2.5 * base["train/l_reg"], rel=1e-6)
    weighted.lreg_weight = 0.0
    assert _step_parts(weighted)[0] == pytest.approx(base["train/l_clean"], rel=1e-6)
    with pytest.raises(ValueError, match="model.lreg_weight must be >= 0"):
        _module(backbone, lreg_weight=-1.0)


def test_mixup_form_reaches_the_training_step(backbone, monkeypatch):
    import noisy_prompt.methods.tango.module as module_mod

    seen = []
    real = module_mod.mixup

    def spy(x, targets, alpha, generator, keep_larger=False):
        out = real(x, targets, alpha, generator, keep_larger=keep_larger)
        seen.append((alpha, keep_larger, out[2]))
        return out

    monkeypatch.setattr(module_mod, "mixup", spy)
    for kwargs, alpha, larger in (({}, 1.0, False), ({"mixup": "ssr"}, 4.0, True),
                                  ({"mixup": "ssr", "mixup_alpha": 2.0}, 2.0, True)):
        m = _module(backbone, **kwargs)
        for seed in range(4):
            _step_parts(m, seed=seed)
        assert all(a == alpha and k == larger for a, k, _ in seen[-4:]), kwargs
        if larger:
            assert all(lam >= 0.5 for _, _, lam in seen[-4:])
    with pytest.raises(ValueError, match="model.mixup must be one of"):
        _module(backbone, mixup="cutmix")


def test_tac_literal_form_in_the_module(backbone):
    m = _module(backbone, tac_form="literal").eval()
    assert m.tau == 1.0
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = m.logits(x).double().exp()
        v = F.normalize(m.clip.visual(x), dim=-1).double()
    a = torch.exp(v @ m.anchors.double().T)  # exp(v.t_j), no temperature
    labels = m.anchor_labels
    expected = torch.stack([a[:, labels == c].sum(1) for c in range(m.num_classes)], 1) / a.sum(1, keepdim=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-7)
    assert _module(backbone).tau == pytest.approx(float(m.logit_scale))  # the default form: CLIP's scale
    with pytest.raises(ValueError, match="tac_form=literal has no temperature"):
        _module(backbone, tac_form="literal", tau=5.0)


def test_k_auto_resolves_from_the_served_training_set(backbone):
    dm = _datamodule(backbone, NoiseSpec(name="sym50", protocol="sym", rate=0.5))
    n, c = len(dm.train_labels), len(dm.classnames)
    auto = _module(backbone, k="auto")
    stats = auto.purify_training_set(dm)
    assert c == len(CLASSNAMES) and stats["k"] == max(1, round(0.4 * n / c)) == 2  # 6 images per class
    fixed = _module(backbone, k=2)
    fixed.purify_training_set(dm)
    assert torch.equal(auto.purified.soft_labels, fixed.purified.soft_labels)
    weighted = _module(backbone, k="auto", knn_vote="weighted")
    weighted.purify_training_set(dm)
    assert weighted.knn_vote == "weighted" and not torch.equal(weighted.purified.soft_labels, fixed.purified.soft_labels)
    with pytest.raises(ValueError, match="model.k must be a positive integer or 'auto'"):
        _module(backbone, k="many")
    with pytest.raises(ValueError, match="model.knn_vote must be one of"):
        _module(backbone, knn_vote="softmax")


class _Recorder(L.Callback):
    """Copies of the purification result at each epoch (the module keeps only the last one)."""

    def __init__(self):
        self.masks, self.soft, self.logged = [], [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == 0:
            self.masks.append(module.purified.clean_mask.clone())
            self.soft.append(module.purified.soft_labels.clone())

    def on_train_epoch_end(self, trainer, module):
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("purify/")})


@pytest.fixture(scope="module")
def fitted(backbone, tmp_path_factory):
    noise = NoiseSpec(name="sym50", protocol="sym", rate=0.5)
    dm = _datamodule(backbone, noise)
    m = _module(backbone, k=10, optim={"name": "sgd", "lr": 0.5, "momentum": 0.9, "weight_decay": 0.0,
                                      "warmup_epochs": 0, "warmup_lr": 0.0}, max_epochs=2)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    rec = _Recorder()
    root = tmp_path_factory.mktemp("fit")
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=str(root), callbacks=[rec])
    trainer.fit(m, datamodule=dm)
    ckpt = root / "final.ckpt"
    trainer.save_checkpoint(ckpt)
    trainer.test(m, datamodule=dm, verbose=False)
    return {"module": m, "dm": dm, "before": before, "rec": rec, "trainer": trainer, "ckpt": ckpt, "root": root}


def test_fit_updates_the_vision_tower_only(fitted):
    m, before = fitted["module"], fitted["before"]
    changed = {n for n, p in m.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and changed <= {n for n in before if n.startswith("clip.visual.")}
    assert "clip.logit_scale" not in changed and not any(n.startswith("clip.transformer.") for n in changed)
    assert len(m.val_history) == 2 and "acc" in m.test_report["test"]
    assert {"train/loss", "train/l_clean", "train/l_reg"} <= set(m.history)


def test_epoch0_tac_accuracy_and_best_last_test_accuracy(fitted, backbone):
    m, dm = fitted["module"], fitted["dm"]
    metrics = m.extra_metrics()
    # epoch 0 = the TAC with the same anchors on the pretrained tower, before any step
    fresh = _module(backbone, k=10)
    reference = fresh.tac_test_accuracy(dm.test_dataloader()[0])
    assert m.epoch0_test_acc == pytest.approx(reference) and metrics["test/acc_epoch0"] == pytest.approx(reference)
    # validation is the test split (val_from=test): one point per epoch, last = the final test
    assert [p[0] for p in m.test_curve] == [1, 2]
    last = m.test_report["test"]["acc"]
    assert metrics["test/acc_last"] == pytest.approx(last) and metrics["test/acc_last_epoch"] == 2
    assert metrics["test/acc_best"] == pytest.approx(max([a for _, a in m.test_curve] + [last]))
    ckpt = torch.load(fitted["ckpt"], map_location="cpu", weights_only=False)
    assert ckpt["tango"]["epoch0_test_acc"] == m.epoch0_test_acc
    assert [p[0] for p in ckpt["epoch_curve"]["test_curve"]] == [1, 2]
    assert {"epoch0_test_acc", "test_curve", "epochs_trained"} <= set(m.REPORT_ATTRS)


def test_purification_runs_every_epoch_and_changes(fitted):
    m, rec, dm = fitted["module"], fitted["rec"], fitted["dm"]
    hist = m.purification_history
    assert [h["epoch"] for h in hist] == [0, 1]
    for h in hist:
        assert {"clean_fraction", "precision", "recall", "soft_label_acc"} <= set(h)
        assert 0.0 <= h["precision"] <= 1.0
    assert len(rec.masks) == 2 and rec.masks[0].shape == (N_TRAIN,)
    assert not torch.allclose(rec.soft[0], rec.soft[1])  # epoch 2 uses the epoch-1 weights
    assert not torch.equal(rec.masks[0], rec.masks[1])
    # Selection is the documented rule: mask == (argmax q == given), with the given labels in dataset order.
    assert torch.equal(m.purified.given.cpu(), torch.as_tensor(dm.train_labels))
    assert torch.equal(m.purified.true.cpu(), torch.as_tensor(dm.train_clean))
    metrics = m.extra_metrics()
    assert metrics["purify/precision_last"] == hist[-1]["precision"]
    assert metrics["purify/clean_fraction_first"] == hist[0]["clean_fraction"]
    assert [e["purify/clean_fraction"] for e in rec.logged] == pytest.approx([h["clean_fraction"] for h in hist])
    assert [e["purify/soft_label_acc"] for e in rec.logged] == pytest.approx([h["soft_label_acc"] for h in hist])
    assert {"purify/precision", "purify/recall"} <= set(rec.logged[-1])


def test_label_issues_csv(fitted, tmp_path):
    m, dm = fitted["module"], fitted["dm"]
    path = m.write_label_issues(tmp_path / "run" / "label_issues.csv")
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == LABEL_ISSUE_COLUMNS
    assert len(rows) == N_TRAIN
    assert [int(r["index"]) for r in rows] == list(range(N_TRAIN))
    assert [int(r["given_label"]) for r in rows] == [int(v) for v in dm.train_labels]
    assert [int(r["true_label"]) for r in rows] == [int(v) for v in dm.train_clean]
    # The method's columns: the last purification (verdict I_c, q at the given label, argmax Y~).
    assert [r["verdict"] == "clean" for r in rows] == m.purified.clean_mask.tolist()
    assert {r["verdict"] for r in rows} <= {"clean", "noisy"}
    soft = m.purified.soft_labels
    assert [int(r["method_label"]) for r in rows] == soft.argmax(1).tolist()
    # Clean samples were selected because q's argmax is their given label, so q there is at least 1/C.
    clean_q = [float(r["method_score"]) for r in rows if r["verdict"] == "clean"]
    assert clean_q and min(clean_q) >= 1.0 / m.num_classes
    # The report's columns: the final classifier (TAC) over the un-augmented training images.
    m.eval()
    with torch.no_grad():
        x = torch.stack([dm.train_eval_set[i]["x"] for i in range(N_TRAIN)])
        probs = m.log_probs(x).exp()
    given = torch.as_tensor(dm.train_labels)
    assert [int(r["suggested_label"]) for r in rows] == probs.argmax(1).tolist()
    assert [float(r["score"]) for r in rows] == pytest.approx(probs.gather(1, given[:, None]).squeeze(1).tolist(), rel=1e-4)
    r = rows[7]
    assert r["given_class"] == CLASSNAMES[int(r["given_label"])]
    assert r["suggested_class"] == CLASSNAMES[int(r["suggested_label"])]
    assert float(r["suggested_prob"]) == pytest.approx(float(probs[7].max()), rel=1e-4)
    assert sorted(int(r["rank"]) for r in rows) == list(range(1, N_TRAIN + 1))
    assert m.extra_results()["label_issues"]["verdict"] is True
    assert m.extra_metrics()["label_issues/num_train"] == N_TRAIN


def test_checkpoint_holds_only_trainable_state(fitted, backbone):
    m = fitted["module"]
    ckpt = torch.load(fitted["ckpt"], map_location="cpu", weights_only=False)
    keys = set(ckpt["state_dict"])
    assert keys == m.trainable_state_names()
    assert all(k.startswith("clip.visual.") for k in keys)
    assert [h["epoch"] for h in ckpt["tango"]["purification_history"]] == [0, 1]

    fresh = _module(backbone, k=10)
    fresh.load_state_dict(ckpt["state_dict"], strict=False)
    fresh.on_load_checkpoint(ckpt)
    assert torch.equal(fresh.clip.visual.proj, m.clip.visual.proj)
    assert fresh.purification_history == m.purification_history


def test_unknown_clean_labels_give_no_detector_stats(backbone, tmp_path):
    dm = _datamodule(backbone, NoiseSpec(name="real", protocol="real"))
    assert not dm.facts().clean_labels_known
    # Whether the served clean labels are truth is a fact the module was built with, not read from dm.
    told_known = _module(backbone, k=10, facts=DataFacts(clean_labels_known=True))
    assert "precision" in told_known.purify_training_set(dm)
    m = _module(backbone, k=10, facts=dm.facts())
    stats = m.purify_training_set(dm)
    assert "precision" not in stats and "clean_fraction" in stats
    assert m.purified.true is None
    # The report runs the final classifier over the training set, so it needs the data (dm) as well.
    with (m.write_label_issues(tmp_path / "issues.csv", dm=dm)).open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == N_TRAIN and {r["true_label"] for r in rows} == {""} and {r["true_class"] for r in rows} == {""}
    assert not any(k.startswith("label_issues/num_noisy") for k in m.extra_metrics())


def test_label_issues_purify_on_demand(backbone, tmp_path):
    m = _module(backbone, k=10)
    with pytest.raises(RuntimeError, match="fit the model first"):
        m.write_label_issues(tmp_path / "a.csv")
    dm = _datamodule(backbone)
    with m.write_label_issues(tmp_path / "b.csv", dm=dm).open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == N_TRAIN and rows[0]["true_label"] == str(int(dm.train_clean[0]))


# ----------------------------------------------------------------------------------------- configs

# data=synthetic_full selects the world's own descriptions (data.anchor_source); simple_prompts forces templates
PRESETS = {
    "tango": {"classifier": "tac", "beta": 0.5, "trainable_anchors": False, "source": "dataset"},
    "tango_linear_visual": {"classifier": "linear", "beta": 0.0, "trainable_anchors": False, "source": "dataset"},
    "tango_visual_only": {"classifier": "tac", "beta": 0.0, "trainable_anchors": False, "source": "dataset"},
    "tango_semantic_only": {"classifier": "tac", "beta": 1.0, "trainable_anchors": False, "source": "dataset"},
    "tango_trainable_anchors": {"classifier": "tac", "beta": 0.5, "trainable_anchors": True, "source": "dataset"},
    "tango_simple_prompts": {"classifier": "tac", "beta": 0.5, "trainable_anchors": False, "source": "templates"},
    # readings (docs/methods.md, TANGO): each switches one value of tango
    "tango_literal": {"classifier": "tac", "beta": 0.5, "trainable_anchors": False, "source": "dataset",
                      "tac_form": "literal"},
    "tango_ssr_mixup": {"classifier": "tac", "beta": 0.5, "trainable_anchors": False, "source": "dataset",
                        "mixup_form": "ssr"},
    "tango_weighted_knn": {"classifier": "tac", "beta": 0.5, "trainable_anchors": False, "source": "dataset",
                           "knn_vote": "weighted"},
}
READING_DEFAULTS = {"tac_form": "logsumexp", "mixup_form": "beta11", "knn_vote": "uniform", "lreg_weight": 1.0}


def test_recipe_defaults_follow_the_spec():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="run", overrides=["model=tango", "data=cifar100", "backbone=vit_b16"])
    m = OmegaConf.to_container(cfg.model, resolve=True)
    assert (m["max_epochs"], m["batch_size"], m["val_every"], m["input"]) == (20, 64, 1, "images")
    assert m["optim"] == {"name": "sgd", "lr": 5e-4, "momentum": 0.9, "weight_decay": 5e-4,
                          "warmup_epochs": 0, "warmup_lr": 0.0}
    assert (m["beta"], m["k"], m["anchors"]["k"], m["anchors"]["source"], m["tau"]) == (0.5, 200, 40, "cupl", None)
    assert m["dataset"] == "cifar100"
    # the readings of section 4b default to the documented ones
    assert (m["tac_form"], m["mixup"], m["mixup_alpha"], m["knn_vote"], m["lreg_weight"]) == (
        "logsumexp", "beta11", None, "uniform", 1.0)


def test_paper_cifar100n_cell_composes_with_vit_b16():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="run", overrides=["model=tango", "data=cifar100n", "backbone=vit_b16"])
    assert (cfg.backbone.model, cfg.backbone.pretrained) == ("ViT-B-16-quickgelu", "openai")
    model = OmegaConf.to_container(cfg.model, resolve=True)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert model["_target_"] == "noisy_prompt.methods.tango.module.Tango"
    assert (model["dataset"], model["input"], model["anchors"]["source"]) == ("cifar100n", "images", "cupl")
    assert (model["max_epochs"], model["batch_size"], model["beta"], model["k"]) == (20, 64, 0.5, 200)
    assert data["_target_"] == "noisy_prompt.data.datamodule.CLIPDataModule"
    assert (data["name"], data["input"], data["shots"], data["val_from"]) == ("cifar100n", "images", None, "test")
    assert data["batch_size"] == 64 and cfg.trainer.max_epochs == 20
    assert cfg.cell.startswith("tango/cifar100n/") and cfg.cell.endswith("/vit_b16")

    # Every key reaches a constructor that accepts it, without building anything (no ViT-B/16 weights here).
    kwargs = ctor_kwargs(cfg, "model")
    own = set(inspect.signature(Tango.__init__).parameters) - {"self", "kwargs"}
    base = {k: v for k, v in kwargs.items() if k not in own and k != "_target_"}
    inspect.signature(ClassifierModule.__init__).bind(None, backbone={}, classnames=["a"], seed=1, **base)
    data_kwargs = ctor_kwargs(cfg, "data")
    data_kwargs.pop("_target_")
    dm = CLIPDataModule(**data_kwargs, noise=None, backbone={}, seed=1)  # __init__ reads no file
    assert (dm.reader, dm.input, dm.val_from) == ("cifar100n", "images", "test")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_composes_and_instantiates(preset, backbone):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="run", overrides=[f"model={preset}", "data=synthetic_full", "noise=sym50",
                                                   "model.anchors.k=2"])
    assert cfg.model.name == preset
    kwargs = ctor_kwargs(cfg, "model")
    target = kwargs.pop("_target_")
    own = {c: [f"a picture of the {c}.", f"the {c}, drawn."] for c in CLASSNAMES}
    m = get_class(target)(**kwargs, backbone=backbone, classnames=list(CLASSNAMES), templates=["a photo of a {}."],
                          test_sets=["test"], seed=1, class_descriptions=own)
    want = PRESETS[preset]
    source = ANCHOR_SOURCE_ALIASES.get(m.anchor_cfg["source"], m.anchor_cfg["source"])
    assert (m.classifier, m.beta, m.trainable_anchors, source) == (
        want["classifier"], want["beta"], want["trainable_anchors"], want["source"])
    assert {key: getattr(m, key) for key in READING_DEFAULTS} == {
        key: want.get(key, value) for key, value in READING_DEFAULTS.items()}
    extra = {n for n, p in m.named_parameters() if p.requires_grad} - _names(m, "clip.visual.")
    assert extra == ({"head.weight", "head.bias"} if want["classifier"] == "linear" else set()) | (
        {"anchors"} if want["trainable_anchors"] else set())
    assert m.max_epochs == cfg.data.recipe.tango.max_epochs  # the dataset's recipe scales the run


@pytest.mark.parametrize("variant", [{"classifier": "linear", "beta": 0.0}, {"trainable_anchors": True}])
def test_variant_parameters_receive_gradients(backbone, variant):
    from noisy_prompt.methods.tango.module import PurifiedLabels

    m = _module(backbone, **variant)
    m.log_dict = m.log = lambda *a, **kw: None
    n = 4
    given = torch.tensor([0, 1, 2, 3])
    m.purified = PurifiedLabels(0, given, None, torch.ones(n, dtype=torch.bool),
                                F.one_hot(given, m.num_classes).float(), torch.zeros(n))
    m.training_step({"x": torch.randn(n, 3, 32, 32), "label": given, "index": torch.arange(n)}, 0).backward()
    params = dict(m.named_parameters())
    grads = [params["head.weight"]] if m.head is not None else [params["anchors"]]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in grads)
    assert params["clip.visual.proj"].grad.abs().sum() > 0


def test_purification_summary_reports_first_and_last_epoch_only():
    from noisy_prompt.methods.tango.module import purification_summary

    history = [{"clean_fraction": 0.5, "precision": 0.9, "recall": 0.8, "soft_label_acc": 0.7, "num_clean": 5},
               {"clean_fraction": 0.6, "precision": 0.95},
               {"clean_fraction": 0.4, "recall": 0.85}]
    assert purification_summary(history) == {
        "purify/clean_fraction_first": 0.5, "purify/precision_first": 0.9, "purify/recall_first": 0.8,
        "purify/soft_label_acc_first": 0.7, "purify/clean_fraction_last": 0.4, "purify/recall_last": 0.85}
    assert purification_summary([]) == {}
