"""The shared datamodule: deterministic noisy labels, clean labels kept, cached views shared and exact."""
import numpy as np
import pytest
import torch

from noisy_prompt.data.features import FeatureCache
from noisy_prompt.data.transforms import describe, train_transform
from noisy_prompt.noise import NoiseSpec
from noisy_prompt.synthetic.dataset import read_synthetic

SYM50 = NoiseSpec(name="sym50", protocol="sym", rate=0.5)
INST40 = NoiseSpec(name="inst40", protocol="inst", rate=0.4)


def test_noisy_labels_depend_only_on_config_and_seed(synthetic_dm_factory):
    a = synthetic_dm_factory(noise=SYM50, seed=1)
    torch.manual_seed(123)
    np.random.seed(7)
    b = synthetic_dm_factory(noise=SYM50, seed=1, num_workers=2)
    c = synthetic_dm_factory(noise=SYM50, seed=2)
    assert np.array_equal(a.train_labels, b.train_labels)
    assert a.train_split.keys == b.train_split.keys
    assert not np.array_equal(a.train_labels, c.train_labels) or a.train_split.keys != c.train_split.keys
    assert a.noise_summary()["realised_rate"] == pytest.approx(0.5)
    # clean labels are kept beside the noisy ones and equal the dataset's labels
    assert np.array_equal(a.train_clean, np.asarray(a.train_split.labels))
    assert (a.train_labels != a.train_clean).mean() == pytest.approx(0.5)


def test_batches_carry_noisy_and_clean_labels_and_index(synthetic_dm_factory):
    dm = synthetic_dm_factory(noise=SYM50)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x", "label", "clean_label", "index"}
    idx = batch["index"].numpy()
    assert np.array_equal(batch["label"].numpy(), dm.train_labels[idx])
    assert np.array_equal(batch["clean_label"].numpy(), dm.train_clean[idx])
    # val/test labels are never noised
    test = dm.test_sets["test"]
    assert torch.equal(test.labels, test.clean)


def test_instance_noise_through_the_datamodule(synthetic_dm_factory):
    dm = synthetic_dm_factory(noise=INST40, shots=8)
    rate = dm.noise_summary()["realised_rate"]
    assert 0.2 < rate < 0.6
    again = synthetic_dm_factory(noise=INST40, shots=8)
    assert np.array_equal(dm.train_labels, again.train_labels)


def test_one_view_per_epoch_and_views_differ(synthetic_dm_factory):
    dm = synthetic_dm_factory(views=3)
    ds = dm.train_set
    assert ds.views.shape[0] == 3
    assert not torch.allclose(ds.views[0], ds.views[1])
    dm.set_epoch(1)
    assert torch.equal(ds[0]["x"], ds.views[1, 0])
    dm.set_epoch(4)  # epochs past the number of views cycle
    assert torch.equal(ds[0]["x"], ds.views[1, 0])


def test_feature_cache_is_shared_across_seeds_and_keyed_per_image(tmp_path, tiny_backbone):
    from noisy_prompt.clip.factory import create_clip

    bundle = create_clip(**tiny_backbone)
    splits = read_synthetic(num_train_per_class=3, num_val_per_class=0, num_test_per_class=1)
    tf = train_transform(32, bundle.mean, bundle.std, (0.5, 1.0))
    calls = []

    def encode(x):
        calls.append(len(x))
        with torch.no_grad():
            return bundle.model.visual(x)

    cache = FeatureCache(tmp_path / "cache", bundle.identity)
    kw = dict(dataset="synthetic", split_name="train", transform=tf, transform_id=describe(tf), encode=encode,
              view=0, aug_seed=0)
    first = splits.train.subset(range(0, 60))
    f1 = cache.features(first, **kw)
    assert sum(calls) == 60
    # another few-shot draw overlapping the first: only the new images are encoded, shared ones are identical
    second = splits.train.subset(range(30, 90))
    f2 = cache.features(second, **kw)
    assert sum(calls) == 90
    assert torch.equal(f1[30:], f2[:30])
    # the augmentation draw is a function of (aug_seed, view, image key), not of batch composition
    fresh = FeatureCache(None, bundle.identity).features(splits.train.subset(range(45, 50)), **kw)
    assert torch.allclose(fresh, f2[15:20], atol=2e-3)  # cached copies are fp16
    other_view = FeatureCache(None, bundle.identity).features(splits.train.subset(range(45, 50)), **{**kw, "view": 1})
    assert not torch.allclose(other_view, fresh, atol=1e-3)
    # a different backbone identity never reads these entries
    assert FeatureCache(tmp_path / "cache", "other")._path("synthetic", "train", kw["transform_id"], 0, 0) != \
        cache._path("synthetic", "train", kw["transform_id"], 0, 0)


def test_features_do_not_touch_global_rng(tiny_backbone, tmp_path):
    from noisy_prompt.clip.factory import create_clip

    bundle = create_clip(**tiny_backbone)
    split = read_synthetic(num_train_per_class=1, num_val_per_class=0, num_test_per_class=1).train
    tf = train_transform(32, bundle.mean, bundle.std)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    FeatureCache(None, "x").features(split, dataset="s", split_name="train", transform=tf, transform_id="t",
                                     encode=lambda x: bundle.model.visual(x).detach(), aug_seed=0)
    assert torch.equal(torch.rand(3), expected)
