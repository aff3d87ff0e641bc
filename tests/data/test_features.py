"""The feature cache (noisy_prompt.data.features) never serves a changed, missing or moved file."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torchvision import transforms

import fake_trees as ft
from paths import CONF
import noisy_prompt.config  # noqa: F401  (resolvers)
from noisy_prompt.cell import (CellId, CellLockedError, StaleCellError, cell_lock, finished_result, parse_settings,
                               read_record, settings_tag, write_json)
from noisy_prompt.config import config_hash, result_config
from noisy_prompt.data.base import EmptyClassError, ImageReadError
from noisy_prompt.data.facts import DataFacts
from noisy_prompt.data.features import FeatureCache
from noisy_prompt.data.readers import coop



def _compose(overrides, hydra_node=True):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="run", overrides=list(overrides), return_hydra_config=hydra_node)


def _encode(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)[:, :6].clone()


def _features(cache: FeatureCache, split):
    tf = transforms.Compose([transforms.Resize((4, 4)), transforms.ToTensor()])
    return cache.features(split, dataset="dtd", split_name="test", transform=tf, transform_id="t4", encode=_encode)


def _dtd_test(root: Path):
    return coop.read_dtd(root).named("dtd").test


def test_feature_cache_recomputes_a_file_changed_in_place(tmp_path):
    root = ft.write_dtd(tmp_path / "data")
    cache = FeatureCache(tmp_path / "cache", "clip-x")
    split = _dtd_test(root)
    before = _features(cache, split)
    ft.write_image(Path(split.items[0]), (255, 255, 255))  # same path and key, new content
    after = _features(cache, _dtd_test(root))
    assert not torch.allclose(before[0], after[0]) and torch.allclose(before[1:], after[1:])
    assert torch.allclose(after[0], torch.ones(6), atol=1e-2)


def test_feature_cache_never_serves_a_moved_tree_with_a_missing_or_truncated_file(tmp_path):
    root = ft.write_dtd(tmp_path / "data")
    cache = FeatureCache(tmp_path / "cache", "clip-x")
    _features(cache, _dtd_test(root))  # an intact tree fills the cache
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)
    split = _dtd_test(moved)
    Path(split.items[1]).unlink()
    with pytest.raises(ImageReadError) as err:
        _features(cache, _dtd_test(moved))
    text = str(err.value)
    assert "dataset 'dtd', split 'test': image file is missing" in text and split.items[1] in text
    assert "python -m noisy_prompt.data verify data=dtd" in text
    # a JPEG truncated to 35% of its bytes: decoded in the new tree, not served from the cache
    shutil.rmtree(moved)
    shutil.copytree(root, moved)
    big = moved / "dtd" / "images" / "big.jpg"
    from PIL import Image

    Image.effect_noise((64, 64), 60).convert("RGB").save(big, quality=95)
    data = big.read_bytes()
    path = Path(_dtd_test(moved).items[2])
    path.write_bytes(data[: int(len(data) * 0.35)])
    with pytest.raises(ImageReadError, match="unreadable or truncated"):
        _features(cache, _dtd_test(moved))
