"""The weights digest (noisy_prompt.clip.factory) follows the file contents, not their name."""
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


def test_weights_digest_follows_the_file_contents_not_their_name(tmp_path):
    from noisy_prompt.clip.factory import weights_digest

    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text("{}")
    (folder / "open_clip_model.safetensors").write_bytes(b"weights v1")
    first = weights_digest(f"local-dir:{folder}", None)
    assert first == weights_digest(f"local-dir:{folder}", None)  # stable
    (folder / "open_clip_model.safetensors").write_bytes(b"weights v2")  # rebuilt in place, same name
    assert weights_digest(f"local-dir:{folder}", None) != first
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"checkpoint")
    assert len(weights_digest("ViT-B-32", str(ckpt))) == 16
    assert weights_digest("ViT-B-32", "openai") is None  # a tag is its own identity
    assert weights_digest("builtin:synthetic-clip", None) is not None  # the built-in world is digested
