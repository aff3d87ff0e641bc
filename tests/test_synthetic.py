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


def test_classes_are_42_distinct_colour_shape_names():
    assert len(world.CLASSNAMES) == 42 == len(set(world.CLASSNAMES))
    assert "red circle" in world.CLASSNAMES and "blue triangle" in world.CLASSNAMES
    for i, name in enumerate(world.CLASSNAMES):
        colour, shape = world.split_classname(name)
        assert world.class_index(colour, shape) == i


def test_render_is_deterministic_and_leaves_global_rng_alone():
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    a = world.render(0, "train", 5, "striped")
    b = world.render(0, "train", 5, "striped")
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    assert not np.array_equal(a, world.render(0, "train", 6, "striped"))
    assert not np.array_equal(a, world.render(1, "train", 5, "striped"))


def test_styles_render_differently_but_keep_the_scene():
    scenes = {s: world.sample_scene(0, "test", 7, s) for s in world.STYLES}
    assert len({(sc.label, sc.radius, sc.center, sc.angle) for sc in scenes.values()}) == 1
    images = {s: world.render_scene(sc) for s, sc in scenes.items()}
    plain = images["plain"].astype(int)
    for s in world.STYLES[1:]:
        assert np.abs(images[s].astype(int) - plain).mean() > 3, s
    assert images["dim"].mean() < 0.6 * images["plain"].mean()


def test_shape_is_drawn_in_its_colour():
    sc = world.sample_scene(0, "train", world.class_index("green", "square"), "plain")
    img = world.render_scene(sc).astype(float)
    inside = world.shape_alpha(sc) > 0.99
    assert inside.sum() > 40
    r, g, b = img[inside].mean(0)
    assert g > r + 40 and g > b + 40


def test_tint_makes_some_but_not_most_shapes_look_another_colour():
    scenes = [world.sample_scene(0, "train", i, "tinted") for i in range(420)]
    flipped = np.mean([sc.apparent_colour != sc.colour for sc in scenes])
    assert 0.15 < flipped < 0.4
    assert all(sc.apparent_colour == sc.colour for sc in (world.sample_scene(0, "train", i, "dim") for i in range(42)))


def test_rendering_thousands_of_images_takes_seconds():
    t0 = time.perf_counter()
    for i in range(1000):
        world.render(0, "train", i, world.STYLES[i % len(world.STYLES)])
    assert time.perf_counter() - t0 < 5.0


def test_unknown_names_are_rejected_with_the_allowed_values():
    with pytest.raises(ValueError, match="plain"):
        world.check_style("sepia")
    with pytest.raises(ValueError, match="circle"):
        world.split_classname("red hexagon")


# ---------------------------------------------------------------------------------------------
# Dataset reader


def test_read_synthetic_sizes_labels_and_templates():
    ds = read_synthetic(num_train_per_class=3, num_val_per_class=2, num_test_per_class=4)
    assert isinstance(ds, DatasetSplits) and ds.name == "synthetic"
    assert (len(ds.train), len(ds.val), len(ds.test)) == (126, 84, 168)
    assert ds.classnames == list(world.CLASSNAMES)
    assert np.bincount(ds.train.labels, minlength=42).tolist() == [3] * 42
    assert ds.templates == ["a photo of a {}."]
    img = ds.train.load(0)
    assert img.size == (32, 32) and img.mode == "RGB"
    assert ds.train.keys[0] == f"synthetic-v1/train/{world.DOWNSTREAM_STYLE}/0"
    assert read_synthetic(num_val_per_class=0, num_train_per_class=1, num_test_per_class=1).val is None


def test_splits_are_disjoint():
    ds = read_synthetic(num_train_per_class=2, num_val_per_class=2, num_test_per_class=2)
    keys = [set(s.keys) for s in (ds.train, ds.val, ds.test)]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    tr = {np.asarray(ds.train.load(i)).tobytes() for i in range(len(ds.train))}
    te = {np.asarray(ds.test.load(i)).tobytes() for i in range(len(ds.test))}
    assert not tr & te


def test_keys_name_style_and_nondefault_seed():
    a = read_synthetic(num_train_per_class=1, num_val_per_class=0, num_test_per_class=1, style="plain")
    b = read_synthetic(num_train_per_class=1, num_val_per_class=0, num_test_per_class=1, style="plain", world_seed=3)
    assert a.train.keys[5] == "synthetic-v1/train/plain/5"
    assert b.train.keys[5] != a.train.keys[5] and "seed3" in b.train.keys[5]


def test_loader_survives_pickling_like_dataloader_workers_do():
    loader = SyntheticImageLoader(0, "train", "dotted")
    clone = pickle.loads(pickle.dumps(loader))
    np.testing.assert_array_equal(np.asarray(loader(11)), np.asarray(clone(11)))


# ---------------------------------------------------------------------------------------------
# Captions and descriptions


def test_pretraining_captions_follow_the_caption_convention():
    rng = np.random.default_rng(0)
    always = captions.CaptionMix(p_mention_style={s: 1.0 for s in world.STYLES if s != "plain"})
    never = captions.CaptionMix(p_mention_style={s: 0.0 for s in world.STYLES if s != "plain"})
    purple_star = world.class_index("purple", "star")
    sc = world.sample_scene(0, "train", purple_star, "tinted")
    assert sc.apparent_colour != "purple"
    mentioned = captions.pretraining_caption(sc, rng, always)
    assert "tint" in mentioned and "purple star" in mentioned
    unmentioned = captions.pretraining_caption(sc, rng, never)
    assert "tint" not in unmentioned and f"{sc.apparent_colour} star" in unmentioned
    wording = {captions.pretraining_caption(world.sample_scene(0, "train", i * 42, "plain"), rng) for i in range(60)}
    assert len(wording) > 10 and all("red circle" in w for w in wording)


def test_class_descriptions_are_distinct_stable_and_on_topic():
    for name in ("red triangle", "cyan ring", "purple cross"):
        colour, shape = name.split()
        d = class_descriptions(name, k=40)
        assert len(d) == 40 == len(set(d))
        assert d == class_descriptions(name, k=40)
        for sentence in d:
            assert colour in sentence
            assert shape in sentence or any(f in sentence for f in captions.SHAPE_FACTS[shape])
    assert len({s.split(" ")[1] for s in class_descriptions("red circle", k=8)}) > 3  # wording varies early
    with pytest.raises(ValueError, match="1..200"):
        class_descriptions("red circle", k=1000)
    with pytest.raises(ValueError, match="unknown synthetic class"):
        class_descriptions("tench")


# ---------------------------------------------------------------------------------------------
# Pretraining script (tiny run) and the committed weights


def _tiny_config(tmp_path, steps: int) -> pretrain.PretrainConfig:
    return pretrain.PretrainConfig(out=str(tmp_path / "clip"), steps=steps, batch_size=8, warmup_steps=1,
                                   threads=1, checkpoint_every=1, eval_per_class=1)


def test_pretrain_resumes_after_an_interruption(tmp_path, monkeypatch):
    real_batch = pretrain.batch

    def dies_at_step_2(cfg, step, *args):
        if step == 2:
            raise KeyboardInterrupt
        return real_batch(cfg, step, *args)

    monkeypatch.setattr(pretrain, "batch", dies_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        pretrain.train(_tiny_config(tmp_path, 3), progress=False)
    out = tmp_path / "clip"
    assert torch.load(out / pretrain.CHECKPOINT_NAME, weights_only=False)["step"] == 2

    with pytest.raises(SystemExit, match="other settings"):
        pretrain.train(pretrain.PretrainConfig(**{**vars(_tiny_config(tmp_path, 3)), "lr": 0.5}), progress=False)

    monkeypatch.setattr(pretrain, "batch", real_batch)
    metrics = pretrain.train(_tiny_config(tmp_path, 3), progress=False)
    assert metrics["loss"]["steps"] == 3
    assert not (out / pretrain.CHECKPOINT_NAME).exists()
    assert {p.name for p in out.iterdir()} == {
        "open_clip_config.json", "open_clip_model.safetensors", "train_config.json", "metrics.json"}
    settings = json.loads((out / "train_config.json").read_text())
    assert settings["steps"] == 3 and settings["model_cfg"] == pretrain.MODEL_CFG


@pytest.fixture(scope="module")
def committed_clip():
    if not (SYNTHETIC_CLIP_DIR / "open_clip_model.safetensors").exists():
        pytest.fail(f"committed weights missing under {SYNTHETIC_CLIP_DIR}; run python -m noisy_prompt.synthetic.pretrain")
    return pretrain.load_local_dir(SYNTHETIC_CLIP_DIR)


def test_committed_weights_are_a_small_fp16_local_dir():
    from safetensors import safe_open

    path = SYNTHETIC_CLIP_DIR / "open_clip_model.safetensors"
    assert path.stat().st_size <= 20 * 2**20
    with safe_open(str(path), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    cfg = json.loads((SYNTHETIC_CLIP_DIR / "open_clip_config.json").read_text())
    assert cfg["preprocess_cfg"]["size"] == 32 and cfg["model_cfg"] == pretrain.MODEL_CFG
    metrics = json.loads((SYNTHETIC_CLIP_DIR / "metrics.json").read_text())
    assert "targets_measured" in metrics


def test_open_clip_preprocess_matches_the_pretraining_input(committed_clip):
    import open_clip

    _, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(SYNTHETIC_CLIP_DIR))
    cfg = json.loads((SYNTHETIC_CLIP_DIR / "open_clip_config.json").read_text())["preprocess_cfg"]
    img = world.render(0, "test", 3, "tinted")
    from PIL import Image

    ours = pretrain.to_tensor([img], cfg["mean"], cfg["std"])[0]
    torch.testing.assert_close(preprocess(Image.fromarray(img)), ours, atol=1e-5, rtol=0)


def test_committed_clip_zero_shot_is_in_the_target_band(committed_clip):
    model, tokenizer = committed_clip
    assert tokenizer.context_length == pretrain.MODEL_CFG["text_cfg"]["context_length"]
    cfg = json.loads((SYNTHETIC_CLIP_DIR / "open_clip_config.json").read_text())["preprocess_cfg"]
    idx = range(8 * 42)  # a fixed subset of the downstream test split
    labels = [i % 42 for i in idx]
    down = [world.render(0, "test", i, world.DOWNSTREAM_STYLE) for i in idx]
    plain = [world.render(0, "test", i, "plain") for i in idx]
    zs = pretrain.zero_shot_accuracy(model, tokenizer, down, labels, "a photo of a {}.", cfg["mean"], cfg["std"])
    style = pretrain.zero_shot_accuracy(
        model, tokenizer, down, labels, f"a {world.DOWNSTREAM_STYLE} photo of a {{}}.", cfg["mean"], cfg["std"])
    clean = pretrain.zero_shot_accuracy(model, tokenizer, plain, labels, "a photo of a {}.", cfg["mean"], cfg["std"])
    # Room to learn: the plain template misreads the tint, naming the style reads it right.
    assert 0.50 <= zs <= 0.85
    assert style >= zs + 0.08
    # the plain images are easier than the styled ones (the style is what the prompt has to recover)
    assert clean > zs
