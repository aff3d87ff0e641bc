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
from noisy_prompt.synthetic import captions, world
from noisy_prompt.tools import pretrain
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
# The committed small CLIP (the pretraining tool is tested in tests/tools/test_pretrain.py)


@pytest.fixture(scope="module")
def committed_clip():
    if not (SYNTHETIC_CLIP_DIR / "open_clip_model.safetensors").exists():
        pytest.fail(f"committed weights missing under {SYNTHETIC_CLIP_DIR}; run make pretrain")
    return pretrain.load_local_dir(SYNTHETIC_CLIP_DIR)


def test_committed_weights_load_with_logit_scale_at_least_80(committed_clip):
    """T1: real CLIP's temperature, which every recipe's learning rate assumes."""
    model, _ = committed_clip
    assert float(model.logit_scale.exp()) >= 80.0


def _assert_small_fp16_weights(folder, max_mb: int) -> None:
    from safetensors import safe_open

    path = folder / "open_clip_model.safetensors"
    assert path.stat().st_size <= max_mb * 2**20
    with safe_open(str(path), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}


def test_committed_weights_are_a_small_fp16_local_dir():
    _assert_small_fp16_weights(SYNTHETIC_CLIP_DIR, max_mb=20)
    # Every committed world's weights together (v1: the start of v2; v2: world 2; v3: world 3).
    total = sum(p.stat().st_size for p in SYNTHETIC_CLIP_DIR.parent.rglob("*") if p.is_file())
    assert total <= 70 * 2**20
    cfg = json.loads((SYNTHETIC_CLIP_DIR / "open_clip_config.json").read_text())
    assert cfg["preprocess_cfg"]["size"] == 32 and cfg["model_cfg"] == pretrain.MODEL_CFG
    metrics = json.loads((SYNTHETIC_CLIP_DIR / "metrics.json").read_text())
    assert metrics["logit_scale"] >= 80 and "zero_shot_field_test_plain_template" in metrics


def test_world3_weights_are_a_small_fp16_local_dir_that_loads_at_scale_100():
    """World 3's tiny CLIP: the 256-wide text tower of its preset, fp16, CLIP's temperature (T1)."""
    folder = SYNTHETIC_CLIP_DIR.parent / "synthetic-clip-v3"
    _assert_small_fp16_weights(folder, max_mb=40)
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    assert cfg["model_cfg"] == pretrain.MODEL_CFG_V3
    settings = json.loads((folder / "train_config.json").read_text())
    assert settings["world"] == 3 and settings["steps"] == pretrain.PRESETS["synthetic-clip-v3"]["steps"]
    model, _ = pretrain.load_local_dir(folder)
    assert float(model.logit_scale.exp()) >= 80.0


def test_open_clip_preprocess_matches_the_pretraining_input(committed_clip):
    import open_clip
    from PIL import Image

    _, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(SYNTHETIC_CLIP_DIR))
    cfg = json.loads((SYNTHETIC_CLIP_DIR / "open_clip_config.json").read_text())["preprocess_cfg"]
    img = world.render(0, "test", 3, "field", 5)
    ours = pretrain.to_tensor([img], cfg["mean"], cfg["std"])[0]
    torch.testing.assert_close(preprocess(Image.fromarray(img)), ours, atol=1e-5, rtol=0)
# ---------------------------------------------------------------------------------------------
# World 3 (instance attributes) beside world 2


def _digest(arrays) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        h.update(a.tobytes())
    return h.hexdigest()


def test_world2_images_are_the_ones_its_weights_and_records_were_made_with():
    """World 2 stays loadable (backbone=synthetic_v2): adding world 3 changed none of its pixels. The
    digest was taken before world 3 was written."""
    images = []
    for i in range(40):
        images += [world.render(0, "train", i, "field", i % 256), world.render(0, "train", i, "plain", i % 256),
                   world.render(0, "pretrain", i, "pretrain", i % 256)]
    assert _digest(images) == "593f1900812b77170b4a0209f3f47e153d0152f53021d2db4d5b99332a397204"


def test_world3_instance_attributes_vary_independently_and_deterministically():
    scenes = [world.sample_scene(0, "train", i, "field", 7, world=3) for i in range(400)]
    assert all(s.world == 3 and set(s.instance) == {"background", "companion", "outline", "light", "shadow", "occluder"}
               for s in scenes)
    assert {s.instance["background"] for s in scenes} == set(world.BACKGROUNDS)
    assert 0.4 < sum(s.instance["companion"] is not None for s in scenes) / 400 < 0.6
    assert {s.instance["outline"] for s in scenes} == set(world.OUTLINES)
    # same (seed, split, index) -> same scene and pixels, in any order; world 2 draws no instance attributes
    again = world.sample_scene(0, "train", 5, "field", 7, world=3)
    assert again.instance == scenes[5].instance
    np.testing.assert_array_equal(world.render(0, "train", 5, "field", 7, 3), world.render(0, "train", 5, "field", 7, 3))
    assert world.sample_scene(0, "train", 5, "field", 7).instance == {}
    # the class's own draws are world 2's (same colour jitter and conditions), only the size range differs
    w2 = world.sample_scene(0, "train", 5, "field", 7)
    assert w2.conditions == scenes[5].conditions and w2.rgb == scenes[5].rgb
    with pytest.raises(ValueError, match="unknown synthetic world version 9"):
        world.sample_scene(0, "train", 5, "field", 7, world=9)


def test_world3_images_of_one_class_differ_more_than_world2s():
    """The point of world 3 (docs/world-probes.md): per-image variation the class does not explain."""
    def within_class_spread(version):
        x = np.stack([world.render(0, "train", i, "plain", 11, version) for i in range(60)]).reshape(60, -1) / 255.0
        return float(np.mean(np.var(x, axis=0)))

    assert within_class_spread(3) > 1.5 * within_class_spread(2)


def test_world3_captions_name_instance_attributes_and_world2_captions_do_not():
    named = {"background": 0, "companion": 0}
    for i in range(300):
        sc = world.sample_scene(0, "pretrain", i, "pretrain", i % 256, world=3)
        text = captions.pretraining_caption(sc, world.scene_rng(0, "pretrain", i, 3))
        bg = sc.instance["background"]
        if bg != "grey" and any(p in text for p in captions.BACKGROUND_PHRASES[bg]):
            named["background"] += 1
        if sc.instance["companion"] and f"{sc.instance['companion'][1]} {sc.instance['companion'][0]}" in text:
            named["companion"] += 1
        # never a background the photo does not have
        for other, phrases in captions.BACKGROUND_PHRASES.items():
            if other != bg:
                assert not any(f" {p}" in text and p not in " ".join(captions.BACKGROUND_PHRASES[bg]) for p in phrases
                               if p in ("on grass", "at night", "on a brick wall", "on sand")), (text, bg)
    assert 40 < named["background"] < 150 and 25 < named["companion"] < 100
    for i in range(100):
        sc = world.sample_scene(0, "pretrain", i, "pretrain", i % 256)
        text = captions.pretraining_caption(sc, world.scene_rng(0, "pretrain", i, 3))
        assert not any(p in text for ps in captions.BACKGROUND_PHRASES.values() for p in ps)


def test_backbone_names_the_world_its_data_renders():
    from hydra import compose, initialize_config_dir

    import noisy_prompt.config  # noqa: F401  (resolvers)
    from paths import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        v2 = compose("run", overrides=["backbone=synthetic_v2", "data=synthetic"], return_hydra_config=True)
        default = compose("run", overrides=["data=synthetic_full"], return_hydra_config=True)
    assert v2.data.reader_kwargs.world == 2 == v2.backbone.world
    assert default.data.reader_kwargs.world == default.backbone.world
    ds = read_synthetic(num_train_per_class=1, num_val_per_class=0, num_test_per_class=1, world=3)
    assert ds.train.keys[0].startswith("world3/") and ds.train.loader.world == 3
    with pytest.raises(ValueError, match="world version"):
        read_synthetic(num_train_per_class=1, world=1)
