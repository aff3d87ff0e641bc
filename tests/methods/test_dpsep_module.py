"""DP-SEP / CoOp / PTNL modules: only the contexts train, checkpoints hold only them, presets are configs,
each reading of the garbled parts is a switch, and best/last test accuracy where validation is the test split."""
import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class

import noisy_prompt.config  # noqa: F401
from noisy_prompt.config import ctor_kwargs
from noisy_prompt.methods.dpsep import DPSEP
from noisy_prompt.noise import NoiseSpec
from paths import CONF


def _module(dm, backbone, **kw):
    kw.setdefault("max_epochs", 2)
    return DPSEP(backbone=backbone, classnames=dm.classnames, templates=dm.templates, test_sets=dm.test_set_names,
                 n_ctx=4, optim={"lr": 0.01, "warmup_epochs": 0}, **kw)


def _preset(name, dm, backbone):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="run", overrides=[f"model={name}", "model.n_ctx=4"])
    kwargs = ctor_kwargs(cfg, "model")
    return get_class(kwargs.pop("_target_"))(**kwargs, backbone=backbone, classnames=dm.classnames,
                                              templates=dm.templates, test_sets=dm.test_set_names)


def test_only_contexts_are_trainable(synthetic_dm_factory, tiny_backbone):
    dm = synthetic_dm_factory()
    m = _module(dm, tiny_backbone)
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {"ctx", "ctx_neg"}
    assert not m.clip.logit_scale.requires_grad
    assert not m.clip.token_embedding.weight.requires_grad
    assert not any(p.requires_grad for p in m.clip.visual.parameters())
    assert not torch.equal(m.ctx, m.ctx_neg)


@pytest.mark.parametrize("preset,negative,lam,sigma,loss", [
    ("dpsep", True, 0.1, 0.1, "ce"), ("dp", True, 0.0, 0.0, "ce"), ("sep", False, 0.1, 0.1, "ce"),
    ("sep_no_perturbation", False, 0.1, 0.0, "ce"), ("ptnl", None, None, None, "gce"), ("coop", None, None, None, "ce"),
])
def test_presets_are_configs_of_the_same_modules(synthetic_dm_factory, tiny_backbone, preset, negative, lam, sigma, loss):
    dm = synthetic_dm_factory()
    m = _preset(preset, dm, tiny_backbone)
    assert m.loss_name == loss
    if negative is None:
        assert type(m).__name__ == "CoOp"
        return
    assert isinstance(m, DPSEP)
    assert (m.negative, m.lam, m.sigma) == (negative, lam, sigma)
    assert hasattr(m, "ctx_neg") == negative


def test_training_checkpoint_holds_only_contexts_and_round_trips(synthetic_dm_factory, tiny_backbone, tmp_path):
    dm = synthetic_dm_factory(noise=NoiseSpec(name="sym50", protocol="sym", rate=0.5))
    m = _module(dm, tiny_backbone)
    before_pos, before_neg = m.ctx.detach().clone(), m.ctx_neg.detach().clone()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(m, datamodule=dm)
    assert not torch.equal(m.ctx, before_pos) and not torch.equal(m.ctx_neg, before_neg)
    # the negative branch is a different prompt set, not a copy of the positive one
    x = dm.test_sets["test"].views[0][:8]
    with torch.no_grad():
        out = m.branch_logits(x)
    assert not torch.allclose(out["logits_pos"], out["logits_neg"])
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert set(ckpt["state_dict"]) == {"ctx", "ctx_neg"}
    assert "derangement" in ckpt
    fresh = DPSEP.load_from_checkpoint(path, map_location="cpu")
    with torch.no_grad():
        assert torch.allclose(fresh.logits(x), m.logits(x), atol=1e-6)


def test_derangement_changes_every_step_and_never_fixes_a_class(synthetic_dm_factory, tiny_backbone):
    dm = synthetic_dm_factory()
    m = _module(dm, tiny_backbone)
    seen = []
    for _ in range(5):
        pi = m.derangement.current.clone()
        assert not (pi == torch.arange(len(pi))).any()
        seen.append(tuple(pi.tolist()))
        m.on_train_batch_end(None, None, 0)
    assert len(set(seen)) > 1


# ---------------------------------------------------------------- readings (docs/methods.md, DP-SEP readings) and PTNL-CE
def test_reading_presets_switch_one_thing(synthetic_dm_factory, tiny_backbone):
    dm = synthetic_dm_factory()
    defaults = {"sep_sign": "intent", "par_mode": "additive", "a_pos_reduction": "mean"}
    for preset, attr, value in (("dpsep", None, None), ("dpsep_printed", "sep_sign", "printed"),
                                ("dpsep_gate", "par_mode", "gate"), ("dpsep_asum", "a_pos_reduction", "sum")):
        m = _preset(preset, dm, tiny_backbone)
        assert isinstance(m, DPSEP)
        expected = {**defaults, **({attr: value} if attr else {})}
        # the preset's switch, and everything else the default reading
        assert {k: getattr(m, k) for k in defaults} == expected, preset
        assert (m.negative, m.lam, m.sigma, m.loss_name) == (True, 0.1, 0.1, "ce")


def test_phrase_preset_starts_both_contexts_at_the_phrase_embeddings(synthetic_dm_factory, tiny_backbone):
    dm = synthetic_dm_factory()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="run", overrides=["model=dpsep_phrase"])
    assert (cfg.model.ctx_init, cfg.model.n_ctx, cfg.model.name) == ("a photo of a", 4, "dpsep_phrase")
    m = _preset("dpsep_phrase", dm, tiny_backbone)
    tokens = m.tokenizer(["a photo of a"])[0, 1:5]
    phrase = m.clip.token_embedding.weight[tokens]
    assert torch.allclose(m.ctx, phrase) and torch.allclose(m.ctx_neg, phrase)


def test_ptnl_ce_is_coop_with_ce_and_random_init_and_ptnl_stays_gce(synthetic_dm_factory, tiny_backbone):
    dm = synthetic_dm_factory()
    ptnl_ce, coop, ptnl = (_preset(p, dm, tiny_backbone) for p in ("ptnl_ce", "coop", "ptnl"))
    assert type(ptnl_ce).__name__ == "CoOp" and ptnl_ce.loss_name == "ce" and ptnl.loss_name == "gce"
    # random N(0, 0.02²) init from the run seed: the same start as CoOp, far from any phrase embedding
    assert torch.equal(ptnl_ce.ctx, coop.ctx)
    assert 0.01 < float(ptnl_ce.ctx.detach().std()) < 0.03


def _batch(dm, n=12):
    ds = dm.train_set
    return torch.stack([ds[i]["x"] for i in range(n)]), torch.stack([torch.as_tensor(ds[i]["label"]) for i in range(n)])


def _losses(m, x, y):
    torch.manual_seed(0)  # σ > 0 draws from the default generator: same draw for every reading
    with torch.no_grad():
        return m.losses(x, y)


def test_gate_drops_ce_of_every_sample_whose_hinges_fail(synthetic_dm_factory, tiny_backbone):
    dm = synthetic_dm_factory()
    x, y = _batch(dm)
    m = _module(dm, tiny_backbone, par_mode="gate", lam=0.0, sigma=0.0)
    m.trainer = None
    with torch.no_grad():
        out = m.branch_logits(x)
    # A random context gives p ≈ 1/C at the label, far below μ_pos = 0.5: every gate is closed, CE is exactly 0.
    s_pos = out["logits_pos"].softmax(1).gather(1, y[:, None]).squeeze(1)
    assert (s_pos < 0.5).all()
    parts = _losses(m, x, y)
    assert parts["train/ce"].item() == 0.0 and parts["train/gate_open"].item() == 0.0
    alpha = parts["train/alpha"].item()
    assert parts["train/loss"].item() == pytest.approx(
        (parts["train/a_pos"] + alpha * parts["train/a_neg"] + m.beta * parts["train/mc"]).item(), rel=1e-6)
    # open the gate for all samples (μ_pos, μ_neg low enough): CE is the plain batch CE again
    m.mu_pos, m.mu_neg = 0.0, -1.0
    parts = _losses(m, x, y)
    assert parts["train/gate_open"].item() == 1.0
    assert parts["train/ce"].item() == pytest.approx(
        torch.nn.functional.cross_entropy(out["logits_pos"], y).item(), rel=1e-5)


def test_printed_sign_and_sum_reduction_in_the_module(synthetic_dm_factory, tiny_backbone):
    dm = synthetic_dm_factory()
    x, y = _batch(dm)
    base = _losses(_module(dm, tiny_backbone, sigma=0.0), x, y)
    printed = _losses(_module(dm, tiny_backbone, sigma=0.0, sep_sign="printed"), x, y)
    summed = _losses(_module(dm, tiny_backbone, sigma=0.0, a_pos_reduction="sum"), x, y)
    # same seed, same contexts: only the sign of the entropy term flips (σ = 0: ±λ·mean H, H > 0)
    assert base["train/entropy_term"].item() < 0
    assert printed["train/entropy_term"].item() == pytest.approx(-base["train/entropy_term"].item(), rel=1e-6)
    assert printed["train/ce"].item() == pytest.approx(base["train/ce"].item(), rel=1e-6)
    # A_pos without 1/N: N times the mean
    assert summed["train/a_pos"].item() == pytest.approx(len(y) * base["train/a_pos"].item(), rel=1e-6)
    assert summed["train/a_neg"].item() == pytest.approx(base["train/a_neg"].item(), rel=1e-6)


def test_bad_reading_values_are_refused_by_key(tiny_backbone):
    common = dict(backbone=tiny_backbone, classnames=["a", "b", "c"], n_ctx=4)
    for key, value in (("sep_sign", "flipped"), ("par_mode", "multiply"), ("a_pos_reduction", "max")):
        with pytest.raises(ValueError, match=f"model.{key} must be one of"):
            DPSEP(**common, **{key: value})
    with pytest.raises(ValueError, match="model.par_mode=gate needs model.negative=true"):
        DPSEP(**common, par_mode="gate", negative=False)


def test_best_and_last_test_accuracy_when_validation_is_the_test_split(synthetic_dm_factory, tiny_backbone):
    dm = synthetic_dm_factory(noise=NoiseSpec(name="sym50", protocol="sym", rate=0.5), views=3, val_from="test")
    m = _module(dm, tiny_backbone, max_epochs=3)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(m, datamodule=dm)
    trainer.test(m, datamodule=dm, verbose=False)
    assert [p[0] for p in m.test_curve] == [1, 2, 3]
    metrics = m.extra_metrics()
    accs = {e: a for e, a in m.test_curve}
    # the final test evaluation is the last epoch's model: it equals the epoch-3 validation on the test split
    assert metrics["test/acc_last"] == pytest.approx(m.test_report["test"]["acc"]) == pytest.approx(accs[3])
    assert metrics["test/acc_best"] == max(accs.values()) and metrics["test/acc_last_epoch"] == 3
    assert accs[int(metrics["test/acc_best_epoch"])] == metrics["test/acc_best"]
    # the few-shot val split is not the test split: no test curve, no best-epoch numbers
    dm_val = synthetic_dm_factory()
    m2 = _module(dm_val, tiny_backbone, max_epochs=1)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(m2, datamodule=dm_val)
    assert m2.test_curve == [] and "test/acc_best" not in m2.extra_metrics()
