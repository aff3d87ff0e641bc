"""Run identity and records (noisy_prompt.cell): other settings get their own run dir, a finished cell is
reused only by its own config, weights and data content, one process per cell dir, records round-trip."""
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


def test_other_hyperparameters_get_their_own_run_dir(tmp_path):
    log = f"paths.log_dir={tmp_path}"
    a = _compose(["model=coop", "noise=sym50", "trainer.max_epochs=1", log])
    b = _compose(["model=coop", "noise=sym50", "model.optim.lr=0.5", "trainer.max_epochs=2", log])
    assert a.run_dir != b.run_dir
    assert Path(b.run_dir).name == "seed1" + settings_tag({"model.optim.lr": "0.5", "trainer.max_epochs": "2"})
    assert Path(b.run_dir).name.startswith("seed1__lr=0.5,max_epochs=2__")  # readable in the path
    # the jobs of `-m model.lam=0.05,0.1,0.2` land in three dirs
    dirs = {_compose(["model=dpsep", f"model.lam={v}", log]).run_dir for v in (0.05, 0.1, 0.2)}
    assert len(dirs) == 3
    # paths, loggers, hardware and the cell keys are not settings; the preset has no tag
    assert parse_settings(["paths.log_dir=/x", "logger=none", "trainer=cpu", "trainer.devices=2", "model=coop",
                           "data=dtd", "seed=3", "sweep=s", "force=true", "data.num_workers=8"]) == {}
    assert Path(_compose(["model=coop", log, "logger=none"]).run_dir).name == "seed1"
    cell = CellId.from_config(b)
    assert dict(cell.key.settings) == {"model.optim.lr": "0.5", "trainer.max_epochs": "2"}
    assert cell.run_dir(tmp_path) == Path(b.run_dir)  # one layout: the config's and the contract's agree


def test_a_finished_cell_is_reused_only_by_its_own_config(tmp_path):
    a = _compose(["model=coop", "noise=sym50"], hydra_node=False)
    b = _compose(["model=coop", "noise=sym50", "model.optim.lr=0.5"], hydra_node=False)
    write_json(tmp_path / "results.json", {"status": "ok", "cell": CellId.from_config(a).to_record(),
                                           "metrics": {"test/acc": 58.18}, "config_hash": config_hash(a),
                                           "config": result_config(a)})
    assert finished_result(tmp_path, config_hash(a), result_config(a))["metrics"]["test/acc"] == 58.18
    with pytest.raises(StaleCellError) as err:
        finished_result(tmp_path, config_hash(b), result_config(b))
    assert "model.optim.lr: 0.002 -> 0.5" in str(err.value) and "force=true" in str(err.value)
    assert finished_result(tmp_path / "none", config_hash(a)) is None


def test_a_finished_cell_made_with_other_weights_is_not_reused(tmp_path):
    a = _compose(["model=coop", "noise=sym50"], hydra_node=False)
    record = {"status": "ok", "cell": CellId.from_config(a).to_record(), "metrics": {"test/acc": 58.18},
              "config_hash": config_hash(a), "config": result_config(a), "weights_digest": "0123456789abcdef"}
    write_json(tmp_path / "results.json", record)
    assert finished_result(tmp_path, config_hash(a), result_config(a), weights_digest="0123456789abcdef")
    # same name and config, rebuilt weights: refused, naming both digests
    with pytest.raises(StaleCellError) as err:
        finished_result(tmp_path, config_hash(a), result_config(a), weights_digest="fedcba9876543210")
    assert "other backbone weights" in str(err.value) and "0123456789abcdef" in str(err.value)
    assert "fedcba9876543210" in str(err.value) and "force=true" in str(err.value)
    # a record from before digests were kept cannot be checked: refused too, not reused with a warning
    del record["weights_digest"]
    write_json(tmp_path / "results.json", record)
    with pytest.raises(StaleCellError) as err:
        finished_result(tmp_path, config_hash(a), result_config(a), weights_digest="fedcba9876543210")
    assert "predates weights_digest" in str(err.value) and "force=true" in str(err.value)
    # ... unless this run has no digest to check it against (an open_clip tag)
    assert finished_result(tmp_path, config_hash(a), result_config(a), weights_digest=None)


def test_a_finished_cell_of_other_dataset_content_is_not_reused(tmp_path):
    a = _compose(["model=coop", "noise=sym50"], hydra_node=False)
    record = {"status": "ok", "cell": CellId.from_config(a).to_record(), "metrics": {"test/acc": 58.18},
              "config_hash": config_hash(a), "config": result_config(a), "weights_digest": "0123456789abcdef",
              "data_digest": "aaaaaaaaaaaaaaaa"}
    write_json(tmp_path / "results.json", record)
    assert finished_result(tmp_path, config_hash(a), result_config(a), weights_digest="0123456789abcdef",
                           data_digest="aaaaaaaaaaaaaaaa")
    # same dataset name, reader arguments and weights, but the world's code was edited: refused
    with pytest.raises(StaleCellError) as err:
        finished_result(tmp_path, config_hash(a), result_config(a), weights_digest="0123456789abcdef",
                        data_digest="bbbbbbbbbbbbbbbb")
    assert "other dataset content" in str(err.value) and "aaaaaaaaaaaaaaaa" in str(err.value)
    assert "bbbbbbbbbbbbbbbb" in str(err.value) and "force=true" in str(err.value)
    # a dataset that publishes no digest (real data on disk) is not checked; an old record is, and refused
    assert finished_result(tmp_path, config_hash(a), result_config(a), data_digest=None)
    del record["data_digest"]
    write_json(tmp_path / "results.json", record)
    with pytest.raises(StaleCellError) as err:
        finished_result(tmp_path, config_hash(a), result_config(a), data_digest="bbbbbbbbbbbbbbbb")
    assert "predates data_digest" in str(err.value) and "bbbbbbbbbbbbbbbb" in str(err.value)


def test_one_process_per_cell_dir(tmp_path):
    with cell_lock(tmp_path / "cell"):
        with pytest.raises(CellLockedError) as err:
            with cell_lock(tmp_path / "cell", wait_s=0.2, poll_s=0.05):
                pass
        assert "another process is running this cell (pid" in str(err.value)
    with cell_lock(tmp_path / "cell"):  # released
        pass


def test_records_round_trip_and_reject_junk(tmp_path):
    cfg = _compose(["model=dpsep", "model.lam=0.2"])
    cell = CellId.from_config(cfg)
    write_json(tmp_path / "results.json", {"status": "ok", "cell": cell.to_record(), "metrics": {"test/acc": 1.0}})
    rec = read_record(tmp_path / "results.json")
    assert rec.cell == cell and rec.ok and rec.key.setting("model.lam") == "0.2"
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic writer leaves no temp file behind
    (tmp_path / "failed.json").write_text('{"status": "ok", "cell": {"model": "x"')  # half-written
    with pytest.raises(ValueError, match="cannot read JSON"):
        read_record(tmp_path / "failed.json")
