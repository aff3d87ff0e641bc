"""The run command's guards (noisy_prompt.task / preflight): the synthetic CLIP refused on real data, the
mission command offline names its weights, trainer.max_epochs drives the LR schedule."""
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


def test_synthetic_backbone_on_real_data_is_refused_unless_allowed(tmp_path):
    from noisy_prompt.task import check_backbone, run_cell

    cfg = _compose(["model=dpsep", "data=ucf101", "noise=inst60", "backbone=synthetic", "logger=none",
                    f"paths.log_dir={tmp_path}"], hydra_node=False)
    from noisy_prompt.errors import UserError

    # reported with the other problems the preflight finds (here also the dataset, absent from ./data)
    with pytest.raises(UserError, match="backbone=synthetic is the synthetic world's 32-pixel CLIP"):
        run_cell(cfg, Path(cfg.run_dir))
    assert "32-pixel" in json.loads((Path(cfg.run_dir) / "failed.json").read_text())["error"]
    check_backbone(_compose(["data=ucf101", "backbone=synthetic", "allow_synthetic_backbone=true"], hydra_node=False))


def test_mission_command_offline_stops_naming_the_weights(tmp_path, monkeypatch):
    from noisy_prompt.clip.factory import WeightsNotFoundError
    from noisy_prompt.task import run_cell

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = _compose(["model=dpsep", "data=ucf101", "noise=inst60", "logger=none", f"paths.log_dir={tmp_path}",
                    f"paths.data_dir={tmp_path / 'nodata'}"], hydra_node=False)
    from noisy_prompt.errors import PreflightError

    # the missing weights and the missing dataset in one message, before anything is built
    with pytest.raises(PreflightError) as err:
        run_cell(cfg, Path(cfg.run_dir))
    assert "ViT-B-32-quickgelu" in str(err.value) and "openai" in str(err.value)
    assert [kind for kind, _ in err.value.problems] == ["dataset", "weights"]
    assert "split_zhou_UCF101.json" in str(err.value)
    with pytest.raises(WeightsNotFoundError):  # the weights alone are still their own error
        run_cell(_compose(["model=dpsep", "data=ucf101", "noise=inst60", "logger=none", f"paths.log_dir={tmp_path}",
                           f"paths.data_dir={ft.write_ucf101(tmp_path / 'data')}"], hydra_node=False),
                 Path(cfg.run_dir))


class _DM:
    classnames, templates, test_set_names, class_descriptions = ["a", "b", "c"], ["a photo of a {}."], ["test"], None
    facts = staticmethod(DataFacts)  # what the data publishes (data/facts.py): here, nothing


def test_trainer_max_epochs_drives_the_lr_schedule(tiny_backbone):
    from noisy_prompt.task import build_module, max_epochs_of

    cfg = _compose(["model=coop", "model.n_ctx=2", "data.recipe.prompt.max_epochs=3", "trainer.max_epochs=10",
                    f"backbone.model={tiny_backbone['model']}"])
    assert cfg.model.max_epochs == 3 and max_epochs_of(cfg) == 10 and cfg.data.views == 10
    module = build_module(cfg, _DM())
    assert module.max_epochs == 10
    sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    factors = [sched.lr_lambdas[0](e) for e in range(10)]
    assert all(f > 0 for f in factors), factors  # no epoch after the 3rd trains at LR 0
    with pytest.raises(ValueError, match="set only model.max_epochs"):
        max_epochs_of(_compose(["model.max_epochs=4", "trainer.max_epochs=6"]))
    with pytest.raises(ValueError, match="model.max_epochs=<n>"):
        max_epochs_of(_compose(["trainer.max_epochs=null"], hydra_node=False))
