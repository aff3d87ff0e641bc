"""DP-SEP / CoOp / PTNL modules: only the contexts train, checkpoints hold only them, presets are configs."""
import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class

import noisy_prompt.config  # noqa: F401
from noisy_prompt.config import ctor_kwargs
from noisy_prompt.methods.dpsep import DPSEP
from noisy_prompt.noise import NoiseSpec
from test_compose import CONF


def _module(dm, backbone, **kw):
    return DPSEP(backbone=backbone, classnames=dm.classnames, templates=dm.templates, test_sets=dm.test_set_names,
                 n_ctx=4, max_epochs=2, optim={"lr": 0.01, "warmup_epochs": 0}, **kw)


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
