"""The built-in synthetic world: renderer, captions, dataset reader and the committed small CLIP."""
from __future__ import annotations

import json
import pickle
import time

import numpy as np
import pytest
import torch

from noisy_prompt.data.base import DatasetSplits
from noisy_prompt.synthetic import SYNTHETIC_CLIP_DIR, class_descriptions, read_synthetic
from noisy_prompt.synthetic import captions, pretrain, world
from noisy_prompt.synthetic.dataset import SyntheticImageLoader


# ---------------------------------------------------------------------------------------------
# World


def test_classes_are_256_distinct_colour_pattern_shape_names():
    assert len(world.CLASSNAMES) == 256 == len(set(world.CLASSNAMES))
    # solid shapes keep the short name, patterned ones name the pattern
    assert "red circle" in world.CLASSNAMES and "blue striped triangle" in world.CLASSNAMES
    assert "red solid circle" not in world.CLASSNAMES
    for i, name in enumerate(world.CLASSNAMES):
        colour, pattern, shape = world.split_classname(name)
        assert world.class_index(colour, shape, pattern) == i and world.CLASS_ATTRS[i] == (colour, pattern, shape)


def test_render_is_deterministic_per_world_seed_and_leaves_global_rng_alone():
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    a = world.render(0, "train", 5, "field", 17)
    b = world.render(0, "train", 5, "field", 17)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    assert not np.array_equal(a, world.render(0, "train", 6, "field", 17))
    assert not np.array_equal(a, world.render(1, "train", 5, "field", 17))
    # the whole reader too: same seed -> same classes, labels, keys and pixels; another seed differs
    r1, r2, r3 = (read_synthetic(num_train_per_class=1, num_val_per_class=0, num_test_per_class=1, world_seed=s)
                  for s in (4, 4, 5))
    assert r1.classnames == r2.classnames and r1.train.keys == r2.train.keys
    np.testing.assert_array_equal(np.asarray(r1.train.load(3)), np.asarray(r2.train.load(3)))
    assert r1.classnames != r3.classnames
    assert world.downstream_classes(4) == world.downstream_classes(4) != world.downstream_classes(5)


def test_field_conditions_are_all_present_and_mild():
    scenes = [world.sample_scene(0, "test", i, "field", i % 256) for i in range(200)]
    for sc in scenes:
        assert set(sc.conditions) == set(world.CONDITIONS)
        for c, v in sc.conditions.items():
            lo, hi = world.FIELD_RANGES[c]
            assert lo <= v <= hi
    assert all(world.sample_scene(0, "test", i, "plain", 3).conditions == {} for i in range(20))
    # pretraining photos get any subset of the conditions
    pre = [frozenset(world.sample_scene(0, "pretrain", i, "pretrain", 0).conditions) for i in range(300)]
    assert frozenset() in pre and frozenset(world.CONDITIONS) in pre and len(set(pre)) > 8


def test_conditions_keep_the_scene_and_change_the_pixels():
    plain = world.sample_scene(0, "test", 7, "plain", 9)
    field = world.sample_scene(0, "test", 7, "field", 9)
    assert (plain.label, plain.radius, plain.center, plain.angle) == (field.label, field.radius, field.center, field.angle)
    a, b = world.render_scene(plain).astype(int), world.render_scene(field).astype(int)
    assert np.abs(a - b).mean() > 3
    assert b.mean() < a.mean()  # dim light


def test_shape_is_drawn_in_its_colour_and_pattern():
    sc = world.sample_scene(0, "train", 0, "plain", world.class_index("green", "square"))
    img = world.render_scene(sc).astype(float)
    inside = world.shape_alpha(sc) > 0.99
    assert inside.sum() > 40
    r, g, b = img[inside].mean(0)
    assert g > r + 40 and g > b + 40
    striped = world.sample_scene(0, "train", 0, "plain", world.class_index("green", "square", "striped"))
    marks = world.pattern_marks(striped, np.random.default_rng(0))
    assert 0.2 < marks[world.shape_alpha(striped) > 0.99].mean() < 0.7
    assert world.pattern_marks(sc, np.random.default_rng(0)).max() == 0


def test_the_tint_moves_no_colour_wholesale():
    """Mild shift: some shapes near a hue boundary look like the neighbouring colour, no colour flips
    as a whole (on the first world 360 of 360 purple images looked red)."""
    scenes = [world.sample_scene(0, "train", i, "field", i % 256) for i in range(2048)]
    for colour in world.COLOURS:
        of = [sc for sc in scenes if sc.colour == colour]
        flipped = np.mean([sc.apparent_colour != sc.colour for sc in of])
        assert flipped < 0.5, (colour, flipped)  # under half of any colour; pink, the palest, is at ~39%
    assert np.mean([sc.apparent_colour != sc.colour for sc in scenes]) > 0.03


def test_rendering_thousands_of_images_takes_seconds():
    # CPU time of this process, not wall time: the test machine is shared.
    t0 = time.process_time()
    for i in range(1000):
        world.render(0, "train", i, "field", i % 256)
    assert time.process_time() - t0 < 8.0


def test_unknown_names_are_rejected_with_the_allowed_values():
    with pytest.raises(ValueError, match="plain"):
        world.check_style("sepia")
    with pytest.raises(ValueError, match="circle"):
        world.split_classname("red hexagonal circle")
    with pytest.raises(ValueError, match="circle"):
        world.split_classname("red solid circle")  # solid shapes are named without the pattern


# ---------------------------------------------------------------------------------------------
# Dataset reader


def test_read_synthetic_sizes_labels_templates_and_descriptions():
    ds = read_synthetic(num_train_per_class=3, num_val_per_class=2, num_test_per_class=4, num_classes=40)
    assert isinstance(ds, DatasetSplits) and ds.name == "synthetic"
    assert (len(ds.train), len(ds.val), len(ds.test)) == (120, 80, 160)
    ids = world.downstream_classes(0, 40)
    assert ds.classnames == [world.CLASSNAMES[c] for c in ids]
    assert np.bincount(ds.train.labels, minlength=40).tolist() == [3] * 40
    assert ds.templates == ["a photo of a {}."]
    img = ds.train.load(0)
    assert img.size == (32, 32) and img.mode == "RGB"
    assert ds.train.keys[0] == f"synthetic-v3/c40/train/{world.DOWNSTREAM_STYLE}/0"
    assert read_synthetic(num_val_per_class=0, num_train_per_class=1, num_test_per_class=1).val is None
    # the dataset publishes its class descriptions (TANGO's anchors through the data seam)
    assert set(ds.class_descriptions) == set(ds.classnames)
    assert ds.class_descriptions[ds.classnames[0]] == class_descriptions(ds.classnames[0], 40)


def test_image_i_shows_its_label():
    ds = read_synthetic(num_train_per_class=1, num_val_per_class=0, num_test_per_class=1, style="plain", num_classes=8)
    for i in range(8):
        colour, pattern, shape = world.split_classname(ds.classnames[ds.train.labels[i]])
        sc = world.sample_scene(0, "train", i, "plain", world.class_index(colour, shape, pattern))
        np.testing.assert_array_equal(np.asarray(ds.train.load(i)), world.render_scene(sc))


def test_splits_are_disjoint():
    ds = read_synthetic(num_train_per_class=2, num_val_per_class=2, num_test_per_class=2)
    keys = [set(s.keys) for s in (ds.train, ds.val, ds.test)]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    tr = {np.asarray(ds.train.load(i)).tobytes() for i in range(len(ds.train))}
    te = {np.asarray(ds.test.load(i)).tobytes() for i in range(len(ds.test))}
    assert not tr & te


def test_keys_name_style_classes_and_nondefault_seed():
    a = read_synthetic(num_train_per_class=1, num_val_per_class=0, num_test_per_class=1, style="plain")
    b = read_synthetic(num_train_per_class=1, num_val_per_class=0, num_test_per_class=1, style="plain", world_seed=3)
    assert a.train.keys[5] == "synthetic-v3/c64/train/plain/5"
    assert b.train.keys[5] != a.train.keys[5] and "seed3" in b.train.keys[5]


def test_loader_survives_pickling_like_dataloader_workers_do():
    loader = SyntheticImageLoader(0, "train", "field", (3, 50, 200))
    clone = pickle.loads(pickle.dumps(loader))
    np.testing.assert_array_equal(np.asarray(loader(11)), np.asarray(clone(11)))


# ---------------------------------------------------------------------------------------------
# Captions and descriptions


def test_pretraining_captions_follow_the_caption_convention():
    rng = np.random.default_rng(0)
    always = captions.CaptionMix(p_mention={c: 1.0 for c in world.CONDITIONS}, p_drop_colour=0, p_drop_pattern=0)
    never = captions.CaptionMix(p_mention={c: 0.0 for c in world.CONDITIONS}, p_drop_colour=0, p_drop_pattern=0)
    flipped = next(sc for i in range(4000) if (sc := world.sample_scene(0, "train", i, "field", i % 256)).apparent_colour != sc.colour)
    mentioned = captions.pretraining_caption(flipped, rng, always)
    assert "tint" in mentioned or "warm" in mentioned
    assert f"{flipped.colour} " in mentioned
    unmentioned = captions.pretraining_caption(flipped, rng, never)
    assert "tint" not in unmentioned and f"{flipped.apparent_colour} " in unmentioned
    red_circle = world.class_index("red", "circle")
    wording = {captions.pretraining_caption(world.sample_scene(0, "train", i, "plain", red_circle), rng, never)
               for i in range(80)}
    assert len(wording) > 30 and all("circle" in w for w in wording)
    # distractor words appear both before and after the object phrase
    assert any(w.split()[0].rstrip(":,") in {l.rstrip(":,").split()[0] for l in captions.LEADS} for w in wording)
    assert any(any(t in w for t in captions.TAILS) for w in wording)


def test_class_descriptions_are_distinct_stable_and_on_topic():
    for name in ("red triangle", "cyan spotted ring", "purple checkered cross"):
        colour, pattern, shape = world.split_classname(name)
        d = class_descriptions(name, k=40)
        assert len(d) == 40 == len(set(d))
        assert d == class_descriptions(name, k=40)
        for sentence in d:
            assert colour in sentence
            assert shape in sentence or any(f in sentence for f in captions.SHAPE_FACTS[shape])
            assert any(f in sentence for f in captions.PATTERN_FACTS[pattern])
            # true of every photo: no word about the photo's conditions
            assert not any(w in sentence for words in captions.CONDITION_WORDS.values() for w in words)
    assert len({s.split(" ")[1] for s in class_descriptions("red circle", k=8)}) > 3  # wording varies early
    with pytest.raises(ValueError, match=f"1..{captions.max_descriptions()}"):
        class_descriptions("red circle", k=10_000)
    with pytest.raises(ValueError, match="unknown synthetic class"):
        class_descriptions("tench")


# ---------------------------------------------------------------------------------------------
# Pretraining script (tiny run) and the committed weights


TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def _tiny_config(tmp_path, steps: int) -> pretrain.PretrainConfig:
    return pretrain.PretrainConfig(out=str(tmp_path / "clip"), steps=steps, batch_size=8, warmup_steps=1,
                                   threads=1, checkpoint_every=1, eval_per_class=1, model_cfg=TINY, init_from="",
                                   merge_start=0, merge_every=1, merge_rows=0.5, merge_classes=8, scale_ramp_steps=2)


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

    def dies_after_checkpoint_2(obj, path):
        real_save(obj, path)
        if obj["step"] == 2:
            raise KeyboardInterrupt

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


def test_scale_ramp_ends_at_100():
    cfg = pretrain.PretrainConfig(scale_init=24.4, scale_ramp_steps=10)
    assert pretrain.scale_at(cfg, 0) == pytest.approx(24.4)
    assert 24.4 < pretrain.scale_at(cfg, 5) < 100
    assert pretrain.scale_at(cfg, 10) == pretrain.scale_at(cfg, 10_000) == 100.0


@pytest.fixture(scope="module")
def committed_clip():
    if not (SYNTHETIC_CLIP_DIR / "open_clip_model.safetensors").exists():
        pytest.fail(f"committed weights missing under {SYNTHETIC_CLIP_DIR}; run python -m noisy_prompt.synthetic.pretrain")
    return pretrain.load_local_dir(SYNTHETIC_CLIP_DIR)


def test_committed_weights_load_with_logit_scale_at_least_80(committed_clip):
    """T1: real CLIP's temperature, which every recipe's learning rate assumes."""
    model, _ = committed_clip
    assert float(model.logit_scale.exp()) >= 80.0


def test_committed_weights_are_a_small_fp16_local_dir():
    from safetensors import safe_open

    path = SYNTHETIC_CLIP_DIR / "open_clip_model.safetensors"
    assert path.stat().st_size <= 20 * 2**20
    total = sum(p.stat().st_size for p in SYNTHETIC_CLIP_DIR.parent.rglob("*") if p.is_file())
    assert total <= 40 * 2**20
    with safe_open(str(path), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    cfg = json.loads((SYNTHETIC_CLIP_DIR / "open_clip_config.json").read_text())
    assert cfg["preprocess_cfg"]["size"] == 32 and cfg["model_cfg"] == pretrain.MODEL_CFG
    metrics = json.loads((SYNTHETIC_CLIP_DIR / "metrics.json").read_text())
    assert metrics["logit_scale"] >= 80 and "zero_shot_field_test_plain_template" in metrics


def test_open_clip_preprocess_matches_the_pretraining_input(committed_clip):
    import open_clip
    from PIL import Image

    _, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(SYNTHETIC_CLIP_DIR))
    cfg = json.loads((SYNTHETIC_CLIP_DIR / "open_clip_config.json").read_text())["preprocess_cfg"]
    img = world.render(0, "test", 3, "field", 5)
    ours = pretrain.to_tensor([img], cfg["mean"], cfg["std"])[0]
    torch.testing.assert_close(preprocess(Image.fromarray(img)), ours, atol=1e-5, rtol=0)
