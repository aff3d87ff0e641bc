"""The data seam's speed-ups change no number: decoded-image cache (memory + disk, keyed by every item's
identity), memoised evaluation tensors, and `data.num_workers: auto`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from noisy_prompt.data.base import ImageSplit
from noisy_prompt.data.image_cache import (CachedImages, MAX_AUTO_WORKERS, cache_split, resolve_cache_mode,
                                           resolve_num_workers, split_digest)
from noisy_prompt.data.transforms import train_transform


@pytest.mark.parametrize("cores, cpu, gpu", [(1, 0, 1), (2, 1, 2), (16, 15, 16), (64, MAX_AUTO_WORKERS, MAX_AUTO_WORKERS)])
def test_num_workers_auto_from_the_cores(cores, cpu, gpu):
    assert resolve_num_workers("auto", 1, cores, accelerator="cpu") == cpu
    assert resolve_num_workers("auto", 1, cores, accelerator="gpu") == gpu


def test_num_workers_auto_shares_the_cores_between_devices_and_reads_the_affinity(monkeypatch):
    assert resolve_num_workers("auto", devices=4, cores=16, accelerator="gpu") == 4
    assert resolve_num_workers("auto", devices=8, cores=4, accelerator="gpu") == 1  # never 0 on a GPU
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(2)), raising=False)
    assert resolve_num_workers("auto") == 1  # 2 cores, CPU training: one left to the training process
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert resolve_num_workers("AUTO", accelerator="gpu") == 16


def test_num_workers_bad_values_name_the_key():
    assert resolve_num_workers(3) == 3 and resolve_num_workers("3") == 3
    for bad in (-1, "many", 1.5, None):
        with pytest.raises(ValueError, match="data.num_workers"):
            resolve_num_workers(bad)
    with pytest.raises(ValueError, match="data.cache_images"):
        resolve_cache_mode("sometimes")


def _file_split(folder, n=6, size=(20, 14)):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return ImageSplit(items=paths, labels=[i % 2 for i in range(n)], classnames=["a", "b"])


def test_cached_images_are_bit_identical_and_so_are_the_augmentations(tmp_path):
    (tmp_path / "imgs").mkdir()
    split = _file_split(tmp_path / "imgs")
    cached = cache_split(split, "true", cache_dir=tmp_path / "cache")
    assert isinstance(cached.loader, CachedImages) and cached.keys == split.keys
    assert [cached.identity(i) for i in range(len(split))] == [split.identity(i) for i in range(len(split))]
    tf = train_transform(8, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), (0.5, 1.0))
    for _ in range(2):  # second pass: served from memory
        for i in range(len(split)):
            assert np.array_equal(np.asarray(cached.load(i)), np.asarray(split.load(i)))
            torch.manual_seed(i)
            a = tf(cached.load(i))
            torch.manual_seed(i)
            assert torch.equal(a, tf(split.load(i)))
    assert len(list((tmp_path / "cache" / "images").glob("*.npz"))) == 1  # written once complete


def test_disk_cache_is_reused_and_never_serves_a_changed_file(tmp_path, monkeypatch):
    (tmp_path / "imgs").mkdir()
    split = _file_split(tmp_path / "imgs")
    first = cache_split(split, "true", cache_dir=tmp_path / "cache")
    first.loader.fill()
    before = np.asarray(split.load(2)).copy()
    # a new process's cache: every image comes from the file on disk, none is decoded
    calls = []
    original = split.loader
    split.loader = lambda item: calls.append(item) or original(item)
    again = cache_split(split, "true", cache_dir=tmp_path / "cache")
    assert np.array_equal(np.asarray(again.load(2)), before) and calls == []
    # the same path rewritten with other pixels: other identity (size/mtime) -> other key -> decoded afresh
    digest = split_digest(split)
    Image.fromarray(np.zeros((14, 20, 3), dtype=np.uint8)).save(split.items[2], compress_level=0)
    assert split_digest(split) != digest
    fresh = cache_split(split, "true", cache_dir=tmp_path / "cache")
    assert np.asarray(fresh.load(2)).max() == 0 and not np.array_equal(np.asarray(fresh.load(2)), before)


def test_auto_mode_leaves_large_splits_uncached(tmp_path):
    (tmp_path / "imgs").mkdir()
    split = _file_split(tmp_path / "imgs", size=(200, 200))  # 6 x 117 KB
    assert cache_split(split, "auto", max_mb=0.1) is split
    assert isinstance(cache_split(split, "auto", max_mb=10).loader, CachedImages)
    assert cache_split(split, "false") is split


def test_world_datamodule_serves_identical_batches_with_and_without_the_cache(synthetic_dm_factory):
    """input=images: the training batches (augmented, global-RNG draws) and the evaluation batches are
    the same tensors whether the images are cached / the eval tensors memoised or not."""
    def batches(dm):
        torch.manual_seed(0)
        dm.set_epoch(0)
        train = [b["x"] for b in dm.train_dataloader()]
        evals = [b["x"] for b in dm.train_eval_dataloader()] + [b["x"] for b in dm.test_dataloader()[0]]
        evals += [b["x"] for b in dm.train_eval_dataloader()]  # second pass: from the memo
        return train, evals

    plain = synthetic_dm_factory(input="images", cache_images="false")
    cached = synthetic_dm_factory(input="images", cache_images="true")
    assert isinstance(cached.train_split.loader, CachedImages) and cached.train_eval_set.memo is not None
    assert plain.train_eval_set.memo is None
    for a, b in zip(batches(plain), batches(cached)):
        assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
