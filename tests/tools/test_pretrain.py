"""The pretraining tool of the built-in tiny CLIP (noisy_prompt.tools.pretrain), on tiny configurations."""
from __future__ import annotations

import json

import pytest
import torch

from noisy_prompt.synthetic import world
from noisy_prompt.tools import pretrain

TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def _tiny_config(tmp_path, steps: int, **over) -> pretrain.PretrainConfig:
    return pretrain.PretrainConfig(**{
        "out": str(tmp_path / "clip"), "steps": steps, "batch_size": 8, "warmup_steps": 1, "threads": 1,
        "checkpoint_every": 1, "eval_per_class": 1, "model_cfg": TINY, "init_from": "", "merge_start": 0,
        "merge_every": 1, "merge_rows": 0.5, "merge_classes": 8, "scale_ramp_steps": 2, **over})


def _tiny_v3(tmp_path, steps: int, **over) -> pretrain.PretrainConfig:
    # World 3's preset shape (no merging prefix, a small random-prefix pool) at toy size.
    return _tiny_config(tmp_path, steps, world=3, merge_rows=0.0, random_prefix_ids=(1000, 1100),
                        p_random_prefix=0.5, **over)


def _dies_after_checkpoint(step: int, real_save):
    """A stand-in for the checkpoint writer that writes, then interrupts the run at `step` (a kill mid-run)."""
    def save(obj, path):
        real_save(obj, path)
        if obj["step"] == step:
            raise KeyboardInterrupt

    return save


def test_merging_prefix_ascent_raises_the_class_cosine_at_token_norm():
    torch.manual_seed(0)
    import open_clip

    cfg = pretrain.PretrainConfig(merge_ascent_steps=5, merge_ascent_lr=0.3)
    model = pretrain.build_model(TINY)

    tok = open_clip.tokenizer.SimpleTokenizer(context_length=32)
    classes = tok([n + "." for n in world.CLASSNAMES[:16]])
    prefix = torch.randn(16, 32)
    before = pretrain.mean_offdiag_cosine(pretrain.encode_text_with_prefix(model, classes, prefix))
    new, after = pretrain.update_merging_prefix(model, prefix, classes, cfg)
    assert after > float(before.detach())
    torch.testing.assert_close(new.norm(dim=-1), torch.full((16,), pretrain.token_norm(model)), rtol=1e-4, atol=1e-4)
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "logit_scale")
    assert not model.logit_scale.requires_grad


@pytest.mark.slow
def test_pretrain_resumes_after_an_interruption_with_the_scale_fixed_at_100(tmp_path, monkeypatch):
    real_save = pretrain._atomic_torch_save
    dies_after_checkpoint_2 = _dies_after_checkpoint(2, real_save)
    monkeypatch.setattr(pretrain, "_atomic_torch_save", dies_after_checkpoint_2)
    with pytest.raises(KeyboardInterrupt):
        pretrain.train(_tiny_config(tmp_path, 3), progress=False)
    out = tmp_path / "clip"
    assert torch.load(out / pretrain.CHECKPOINT_NAME, weights_only=False)["step"] == 2

    with pytest.raises(SystemExit, match="other settings"):
        pretrain.train(pretrain.PretrainConfig(**{**vars(_tiny_config(tmp_path, 3)), "lr": 0.5}), progress=False)

    monkeypatch.setattr(pretrain, "_atomic_torch_save", real_save)
    metrics = pretrain.train(_tiny_config(tmp_path, 3), progress=False)
    assert metrics["loss"]["steps"] == 3
    assert abs(metrics["logit_scale"] - 100.0) < 0.1
    assert not (out / pretrain.CHECKPOINT_NAME).exists()
    assert {p.name for p in out.iterdir()} == {
        "open_clip_config.json", "open_clip_model.safetensors", "train_config.json", "metrics.json"}
    settings = json.loads((out / "train_config.json").read_text())
    assert settings["steps"] == 3 and settings["logit_scale"] == 100.0


@pytest.mark.slow
def test_world3_pretraining_interrupted_and_resumed_ends_with_the_same_bytes(tmp_path, monkeypatch):
    """What `make pretrain` promises across sessions: a run stopped at a checkpoint (kept in its own folder)
    and resumed writes the very weights of an uninterrupted run (one thread)."""
    straight = pretrain.train(_tiny_v3(tmp_path / "a", 4, checkpoint_every=100), progress=False)
    real_save = pretrain._atomic_torch_save
    dies_after_checkpoint_2 = _dies_after_checkpoint(2, real_save)
    cfg = _tiny_v3(tmp_path / "b", 4, checkpoint_dir=str(tmp_path / "ckpt"))
    monkeypatch.setattr(pretrain, "_atomic_torch_save", dies_after_checkpoint_2)
    with pytest.raises(KeyboardInterrupt):
        pretrain.train(cfg, progress=False)
    ckpt = torch.load(tmp_path / "ckpt" / pretrain.CHECKPOINT_NAME, weights_only=True)
    # only the touched embedding rows are kept: caption words and the random-prefix pool, not 49,408 rows
    assert 0 < len(ckpt["sparse_rows"]) < 1000 and ckpt["model"]["token_embedding.weight"].shape[0] == len(ckpt["sparse_rows"])
    monkeypatch.setattr(pretrain, "_atomic_torch_save", real_save)
    resumed = pretrain.train(cfg, progress=False)
    a = (tmp_path / "a" / "clip" / "open_clip_model.safetensors").read_bytes()
    b = (tmp_path / "b" / "clip" / "open_clip_model.safetensors").read_bytes()
    assert a == b
    assert straight["loss"]["curve"] == resumed["loss"]["curve"]
    assert not (tmp_path / "ckpt" / pretrain.CHECKPOINT_NAME).exists()


def test_a_checkpoint_of_other_data_is_refused(tmp_path, monkeypatch):
    """The settings a resume must match include a fingerprint of the pretraining pairs themselves."""
    a = _tiny_v3(tmp_path, 2).rebuild_settings()
    assert a == _tiny_v3(tmp_path, 2).rebuild_settings()
    assert a["data_fingerprint"] != _tiny_config(tmp_path, 2).rebuild_settings()["data_fingerprint"]  # world 2 vs 3
    monkeypatch.setattr(world, "P_SHADOW", 0.9)  # an edit of world 3's renderer
    assert _tiny_v3(tmp_path, 2).rebuild_settings()["data_fingerprint"] != a["data_fingerprint"]


def test_compact_state_round_trips_exactly():
    torch.manual_seed(0)
    cfg = pretrain.PretrainConfig(model_cfg=TINY)
    model = pretrain.build_model(TINY)
    init = model.token_embedding.weight.detach().clone()
    opt = pretrain.make_optimizer(model, cfg)
    tokens = torch.tensor([[49406, 320, 1125, 539, 49407] + [0] * 27])
    for _ in range(2):
        opt.zero_grad()
        model.encode_text(tokens).sum().backward()
        opt.step()
    packed = pretrain.compact_state(model, opt, init)
    assert set(packed["sparse_rows"].tolist()) == {49406, 320, 1125, 539, 49407}

    torch.manual_seed(0)
    fresh = pretrain.build_model(TINY)
    fresh_opt = pretrain.make_optimizer(fresh, cfg)
    pretrain.restore_state(fresh, fresh_opt, packed, fresh.token_embedding.weight.detach().clone(), "ckpt")
    for (k, v), (_, w) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(v, w), k
    s1, s2 = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert all(torch.equal(s1[i][k], s2[i][k]) for i in s1 for k in s1[i])
    with pytest.raises(SystemExit, match="initialisation differs"):
        pretrain.restore_state(fresh, fresh_opt, packed, torch.zeros_like(init), "ckpt")


def test_scale_ramp_ends_at_100():
    cfg = pretrain.PretrainConfig(scale_init=24.4, scale_ramp_steps=10)
    assert pretrain.scale_at(cfg, 0) == pytest.approx(24.4)
    assert 24.4 < pretrain.scale_at(cfg, 5) < 100
    assert pretrain.scale_at(cfg, 10) == pretrain.scale_at(cfg, 10_000) == 100.0


def test_presets_and_flags():
    cfg, fresh, _ = pretrain.parse_args([])
    assert cfg.world == 3 and cfg.model_cfg == pretrain.MODEL_CFG_V3 and cfg.merge_rows == 0 and not cfg.init_from
    assert cfg.out.endswith("synthetic-clip-v3") and not fresh
    cfg, _, _ = pretrain.parse_args(["--preset", "synthetic-clip-v2", "--steps", "7", "--random-prefix-ids", "5", "9"])
    assert cfg.world == 2 and cfg.steps == 7 and cfg.init_from == "synthetic-clip-v1" and cfg.random_prefix_ids == (5, 9)
    with pytest.raises(SystemExit):
        pretrain.parse_args(["--preset", "nope"])


@pytest.mark.slow
def test_evaluate_checkpoint_reads_a_run_in_progress(tmp_path, monkeypatch, capsys):
    cfg = _tiny_v3(tmp_path, 3, checkpoint_dir=str(tmp_path / "ckpt"))
    real_save = pretrain._atomic_torch_save
    dies_after_checkpoint_2 = _dies_after_checkpoint(2, real_save)
    monkeypatch.setattr(pretrain, "_atomic_torch_save", dies_after_checkpoint_2)
    with pytest.raises(KeyboardInterrupt):
        pretrain.train(cfg, progress=False)
    out = pretrain.evaluate_checkpoint(cfg)
    assert out["step"] == 2 and 0.0 <= out["zero_shot_field_test_plain_template"] <= 1.0
    with pytest.raises(SystemExit, match="no resume checkpoint"):
        pretrain.evaluate_checkpoint(_tiny_v3(tmp_path, 3, checkpoint_dir=str(tmp_path / "none")))
