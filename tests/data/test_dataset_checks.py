"""A class with no images is an error, not a smaller benchmark; in-memory arrays are keyed by their source file."""
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


def _dtd_test(root: Path):
    return coop.read_dtd(root).named("dtd").test


def test_an_emptied_class_folder_is_an_error(tmp_path, tiny_backbone):
    from noisy_prompt.data.datamodule import CLIPDataModule

    root = ft.write_imagenet(tmp_path / "data")
    wnid = sorted((root / "imagenet" / "images" / "train").iterdir())[1]
    for part in ("train", "val"):
        for f in (root / "imagenet" / "images" / part / wnid.name).iterdir():
            f.unlink()
    dm = CLIPDataModule(name="imagenet", data_dir=str(root), shots=2, backbone=tiny_backbone,
                        cache_dir=str(tmp_path / "cache"))
    with pytest.raises(EmptyClassError) as err:
        dm.setup("fit")
    assert "dataset 'imagenet', split 'train': 1 of 3 classes have no images: 1 (" in str(err.value)
    assert "noisy_prompt.data verify" in str(err.value)


def test_in_memory_arrays_are_keyed_by_their_source_file(tmp_path):
    import os

    from noisy_prompt.data.readers import fulldata

    root = ft.write_cifar100(tmp_path / "data")
    split = fulldata.read_cifar100(root).train
    before = split.identity(0)
    pickle_file = root / "cifar-100-python" / "train"
    st = pickle_file.stat()
    os.utime(pickle_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the pickle replaced in place
    after = fulldata.read_cifar100(root).train.identity(0)
    assert before != after and before.split("|")[0] == after.split("|")[0]
