"""`aggregate --by KEY` (noisy_prompt.reporting.sensitivity): one table per hyperparameter and a plot."""
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


def test_aggregate_by_a_hyperparameter_gives_a_table_and_a_plot(tmp_path, capsys):
    from noisy_prompt.reporting.aggregate import main

    def put(lam, seed, acc, explicit=True):
        cell = {"model": "dpsep", "data": "dtd", "noise": "sym50", "backbone": "vit_b32", "seed": seed,
                "train_data": "dtd", "sweep": "s", "settings": {"model.lam": str(lam)} if explicit else {}}
        write_json(tmp_path / f"{lam}-{seed}-{explicit}" / "results.json",
                   {"status": "ok", "cell": cell, "metrics": {"test/acc": acc}, "config": {"model": {"lam": lam}}})

    put(0.05, 1, 60.0), put(0.05, 2, 62.0), put(0.2, 1, 50.0)
    put(0.1, 1, 70.0, explicit=False)  # the preset run joins at its default value, read from its config
    assert main([str(tmp_path), "--by", "model.lam", "--plot-dir", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "| cell | model.lam=0.05 | model.lam=0.1 | model.lam=0.2 |" in out
    assert "| dpsep/dtd/sym50/vit_b32 | 61.00 ± 1.41 (n=2) | 70.00 (n=1) | 50.00 (n=1) |" in out
    assert (tmp_path / "plots" / "sensitivity_model.lam.png").stat().st_size > 0
    # a paper table does not average different settings: it flags them as ambiguous
    from noisy_prompt.reporting.aggregate import AMBIGUOUS, aggregate

    assert aggregate(tmp_path, "dpsep_table1").cell(("dtd", "dpsep"), "sym50").status == AMBIGUOUS
