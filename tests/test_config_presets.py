"""Dataset presets select their paper's backbone and noise (conf/data)."""
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


def test_datasets_select_their_papers_backbone_and_noise():
    mission = _compose(["model=dpsep", "data=ucf101", "noise=inst60"], hydra_node=False)
    assert mission.backbone.name == "vit_b32" and mission.backbone.pretrained == "openai"
    assert _compose(["model=tango", "data=cifar100"], hydra_node=False).backbone.name == "vit_b16"
    real = _compose(["model=tango", "data=cifar100n"], hydra_node=False)
    assert real.noise.name == "real" and real.backbone.name == "vit_b16"
    assert _compose(["data=cifar100n", "noise=sym50", "backbone=rn50"], hydra_node=False).backbone.name == "rn50"
    assert _compose([], hydra_node=False).backbone.name == "synthetic"  # the synthetic world keeps its CLIP
