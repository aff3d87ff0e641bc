"""Issue 24: errors a person can act on, checkpoints that cannot run code, label files pinned.

Each test fails on the code before the issue (see the issue's report): the preflight did not exist
(one problem per run, found after CLIP was built), empty classes did not name their folder, a
checkpoint was loaded with torch's default (overridable to full unpickling), CIFAR pickles with
pickle.load, and real datasets had no data_digest.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import fake_trees as ft
import noisy_prompt.config  # noqa: F401  (resolvers)
from noisy_prompt.cell import StaleCellError

CONF = Path(__file__).resolve().parent.parent / "conf"
TESTS = Path(__file__).resolve().parent


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="run", overrides=list(overrides))


class _Plant:
    """A pickle whose loading writes a file: what a hostile checkpoint or data file would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ------------------------------------------------------------------------------ preflight


def test_preflight_reports_every_problem_at_once_naming_keys_files_and_weights(tmp_path, monkeypatch):
    from noisy_prompt.errors import PreflightError
    from noisy_prompt.preflight import preflight

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = _compose(["model=deft", "data=ucf101", "noise=inst60", "model.optim.lr=-1", "model.max_epochs=5",
                    "model.phase1.epochs=10", f"paths.data_dir={tmp_path / 'nodata'}", f"paths.log_dir={tmp_path}"])
    with pytest.raises(PreflightError) as err:
        preflight(cfg)
    text = str(err.value)
    kinds = [k for k, _ in err.value.problems]
    assert kinds == ["config", "config", "dataset", "weights"], text
    assert "model.optim.lr=-1" in text and "a learning rate > 0" in text
    assert "model.max_epochs (5) must exceed model.phase1.epochs (10)" in text
    assert str(tmp_path / "nodata" / "ucf101" / "split_zhou_UCF101.json") in text
    assert "ViT-B-32-quickgelu" in text and "HF_HUB_OFFLINE=1" in text
    assert text.splitlines()[0].startswith("4 problems stop this run before it starts")


def test_one_problem_is_its_own_error_and_a_good_config_passes(tmp_path, tiny_backbone):
    from noisy_prompt.errors import ConfigError
    from noisy_prompt.preflight import preflight

    base = ["model=coop", f"backbone.model={tiny_backbone['model']}", f"paths.log_dir={tmp_path}"]
    preflight(_compose(base))  # the synthetic world with a local tiny CLIP: nothing to report
    with pytest.raises(ConfigError, match=r"model.optim.lr=-1: expected a learning rate > 0"):
        preflight(_compose(base + ["model.optim.lr=-1"]))
    with pytest.raises(ConfigError, match=r"model.gmm.n_iter=0"):
        preflight(_compose(["model=dividemix", f"backbone.model={tiny_backbone['model']}", "model.gmm.n_iter=0"]))


def test_an_empty_class_names_its_folder(tmp_path):
    from noisy_prompt.data.base import EmptyClassError
    from noisy_prompt.data.readers import read_dataset

    root = ft.write_imagenet(tmp_path / "data")
    wnid = sorted((root / "imagenet" / "images" / "train").iterdir())[1]
    for f in wnid.iterdir():
        f.unlink()
    with pytest.raises(EmptyClassError) as err:
        read_dataset("imagenet", root).named("imagenet").train.check_classes()
    assert "1 (" in str(err.value) and f"in folder {wnid}" in str(err.value)
    from noisy_prompt.preflight import dataset_problems

    problems = dataset_problems(_compose(["data=imagenet", f"paths.data_dir={root}"]))
    assert len(problems) == 1 and f"in folder {wnid}" in str(problems[0][1])


@pytest.mark.slow
def test_run_prints_a_user_error_alone_and_keeps_the_traceback_in_the_run_log(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HYDRA_FULL_ERROR", None)
    args = [sys.executable, "-m", "noisy_prompt.run", "model=dpsep", "data=ucf101", "noise=inst60", "model.optim.lr=-1",
            f"paths.log_dir={tmp_path / 'logs'}", f"paths.data_dir={tmp_path / 'nodata'}", "logger=none"]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: 3 problems stop this run before it starts (config, dataset, weights)")
    assert "Traceback" not in proc.stderr and "model.optim.lr=-1" in proc.stderr
    (run_log,) = (tmp_path / "logs").rglob("run.log")
    assert "Traceback" in run_log.read_text() and "PreflightError" in run_log.read_text()
    failed = json.loads((run_log.parent / "failed.json").read_text())
    assert failed["error"].startswith("PreflightError: 3 problems") and "preflight" in failed["traceback"]
    full = subprocess.run(args, cwd=tmp_path, env={**env, "HYDRA_FULL_ERROR": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert full.returncode == 1 and "Traceback" in full.stderr


# ------------------------------------------------------------------------------ no code from files


def _resume_cfg(tiny_backbone, tmp_path):
    return _compose(["model=coop", "model.n_ctx=2", "noise=sym50", f"backbone.model={tiny_backbone['model']}",
                     "logger=none", "figures=false", f"paths.log_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}",
                     "data.reader_kwargs.num_train_per_class=2", "data.reader_kwargs.num_val_per_class=1",
                     "data.reader_kwargs.num_test_per_class=1", "data.shots=2", "data.recipe.prompt.max_epochs=1",
                     "callbacks.progress.refresh_rate=0"])


def test_a_planted_checkpoint_is_refused_without_running_it(tiny_backbone, tmp_path, monkeypatch):
    from noisy_prompt.task import run_cell

    cfg = _resume_cfg(tiny_backbone, tmp_path)
    run_dir = Path(cfg.run_dir)
    run_cell(cfg, run_dir)
    (run_dir / "results.json").unlink()  # as after a crash: the next run resumes from last.ckpt
    marker = tmp_path / "code_ran"
    torch.save({"epoch": 0, "state_dict": {}, "payload": _Plant(marker)}, run_dir / "checkpoints" / "last.ckpt")
    # torch's own default would be overridden by this variable; the project passes weights_only=True explicitly
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(Exception) as err:
        run_cell(cfg, run_dir)
    assert not marker.exists()
    assert type(err.value).__name__ == "UnsafeFileError", err.value
    text = str(err.value)
    assert str(run_dir / "checkpoints" / "last.ckpt") in text and "could run code" in text and "force=true" in text
    assert "UnsafeFileError" in json.loads((run_dir / "failed.json").read_text())["error"]
    # a plain pickle file (not torch's zip format) is refused the same way
    with open(run_dir / "checkpoints" / "last.ckpt", "wb") as fh:
        pickle.dump({"payload": _Plant(marker)}, fh)
    with pytest.raises(Exception) as err:
        run_cell(cfg, run_dir)
    assert not marker.exists() and type(err.value).__name__ == "UnsafeFileError"


def test_a_planted_cifar_pickle_is_refused_without_running_it(tmp_path):
    from noisy_prompt.data.readers import fulldata

    root = ft.write_cifar100(tmp_path / "data")
    marker = tmp_path / "code_ran"
    with open(root / "cifar-100-python" / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": _Plant(marker)}, fh)
    with pytest.raises(Exception) as err:
        fulldata.read_cifar100(root)
    assert not marker.exists()
    from noisy_prompt.errors import UnsafeFileError, UserError

    assert isinstance(err.value, UnsafeFileError) and isinstance(err.value, UserError)
    assert "meta: refused to unpickle io.open" in str(err.value)


def test_pretraining_resume_refuses_a_planted_checkpoint(tmp_path):
    from noisy_prompt.errors import UnsafeFileError, safe_torch_load

    marker = tmp_path / "code_ran"
    torch.save({"step": 1, "payload": _Plant(marker)}, tmp_path / "ckpt.pt")
    with pytest.raises(UnsafeFileError, match="pretraining checkpoint"):
        safe_torch_load(tmp_path / "ckpt.pt", what="pretraining checkpoint", remedy="pass --fresh")
    assert not marker.exists()


# ------------------------------------------------------------------------------ label files pinned


def test_label_files_are_digested_and_a_changed_one_is_named(tmp_path):
    from noisy_prompt.cell import finished_result, write_json
    from noisy_prompt.data.readers import data_digest

    root = ft.write_ucf101(tmp_path / "data")
    assert data_digest("ucf101", root) is not None  # a real dataset's labels are pinned
    from noisy_prompt.data.label_files import label_file_hashes, sha256_file
    from noisy_prompt.task import data_digest_of, label_files_of

    cfg = _compose(["data=ucf101", f"paths.data_dir={root}"])
    split = root / "ucf101" / "split_zhou_UCF101.json"
    files = label_files_of(cfg)
    assert files == {"ucf101/split_zhou_UCF101.json": sha256_file(split)}
    digest = data_digest_of(cfg, files)
    assert digest == data_digest("ucf101", root) and digest is not None
    write_json(tmp_path / "run" / "results.json", {"status": "ok", "config_hash": "h", "data_digest": digest,
                                                   "label_files": files})
    assert finished_result(tmp_path / "run", "h", data_digest=digest, label_files=files)
    # the split file edited in place, same name: the finished cell is refused, naming the file and both hashes
    text = split.read_text()
    split.write_text(text.replace('"train": [[', '"train": [ [', 1))
    new = label_file_hashes("ucf101", root)
    with pytest.raises(StaleCellError) as err:
        finished_result(tmp_path / "run", "h", data_digest=data_digest("ucf101", root), label_files=new)
    assert "label file ucf101/split_zhou_UCF101.json: sha256 " + files["ucf101/split_zhou_UCF101.json"] in str(err.value)
    assert new["ucf101/split_zhou_UCF101.json"] in str(err.value) and "force=true" in str(err.value)


def test_cifar100n_labels_are_pinned_and_a_known_hash_mismatch_warns(tmp_path, monkeypatch, caplog):
    from noisy_prompt.data.readers import data_digest

    root = ft.write_cifar100n(tmp_path / "data")
    assert data_digest("cifar100n", root) is not None
    from noisy_prompt.data import label_files

    hashes = label_files.label_file_hashes("cifar100n", root)
    assert set(hashes) == {"cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta",
                           "CIFAR-100_human.pt"}
    assert label_files.KNOWN_SHA256 == {}  # no published digest could be established (docs/troubleshooting.md)
    monkeypatch.setitem(label_files.KNOWN_SHA256, "CIFAR-100_human.pt", "0" * 64)
    with caplog.at_level("WARNING", logger="noisy_prompt.data.label_files"):
        label_files.label_file_hashes("cifar100n", root)
    assert "CIFAR-100_human.pt differs from the published file" in caplog.text
    assert "0" * 64 in caplog.text and hashes["CIFAR-100_human.pt"] in caplog.text
    assert label_files.label_file_hashes("cifar100n", tmp_path / "elsewhere") is None  # nothing to pin
