"""Issue 12: no silent wrong result. One test (or more) per case; each fails on the code before the fix.

1. other hyperparameters never reuse (or collide with) the preset's run dir / result;
2. the feature cache never serves a changed, missing or moved file;
3. a class with no images is an error, not a silently smaller benchmark;
4. the mission command runs its paper's backbone, the synthetic CLIP is refused on real data,
   real-noise datasets default to noise=real;
5. trainer.max_epochs drives the LR schedule (no LR of 0 after model.max_epochs);
6. (resume after SIGKILL: tests/test_resume.py)
plus the cell lock, the records and `aggregate --by`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torchvision import transforms

import fake_trees as ft
import noisy_prompt.config  # noqa: F401  (resolvers)
from noisy_prompt.cell import (CellId, CellLockedError, StaleCellError, cell_lock, finished_result, parse_settings,
                               read_record, settings_tag, write_json)
from noisy_prompt.config import config_hash, result_config
from noisy_prompt.data.base import EmptyClassError, ImageReadError
from noisy_prompt.data.facts import DataFacts
from noisy_prompt.data.features import FeatureCache
from noisy_prompt.data.readers import coop

CONF = Path(__file__).resolve().parent.parent / "conf"


def _compose(overrides, hydra_node=True):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="run", overrides=list(overrides), return_hydra_config=hydra_node)


# ---------------------------------------------------------------------------------------------- 1


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


def test_a_finished_cell_made_with_other_weights_is_not_reused(tmp_path, caplog):
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
    # a record from before digests were kept is reused, with a warning that it could not be checked
    del record["weights_digest"]
    write_json(tmp_path / "results.json", record)
    with caplog.at_level("WARNING", logger="noisy_prompt.cell"):
        assert finished_result(tmp_path, config_hash(a), result_config(a), weights_digest="fedcba9876543210")
    assert "predates weights_digest" in caplog.text


def test_a_finished_cell_of_other_dataset_content_is_not_reused(tmp_path, caplog):
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
    # a dataset that publishes no digest (real data on disk) is not checked; an old record is, with a warning
    assert finished_result(tmp_path, config_hash(a), result_config(a), data_digest=None)
    del record["data_digest"]
    write_json(tmp_path / "results.json", record)
    with caplog.at_level("WARNING", logger="noisy_prompt.cell"):
        assert finished_result(tmp_path, config_hash(a), result_config(a), data_digest="bbbbbbbbbbbbbbbb")
    assert "predates data_digest" in caplog.text


def test_the_worlds_digest_follows_its_code_and_keys_the_feature_cache(tmp_path):
    from noisy_prompt.data.readers import data_digest
    from noisy_prompt.synthetic import dataset as syn

    here = Path(syn.__file__).parent
    for name in syn._WORLD_SOURCES:
        (tmp_path / name).write_bytes((here / name).read_bytes())
    assert syn.sources_digest(tmp_path) == syn.world_digest() == data_digest("synthetic")
    # an edit nobody bumped RENDER_VERSION for (a field-condition range) changes the digest ...
    world = tmp_path / "world.py"
    world.write_text(world.read_text() + '\nFIELD_RANGES["tint"] = (0.6, 1.3)\n')
    assert syn.sources_digest(tmp_path) != syn.world_digest()
    # ... and every image's cache identity carries the digest, so old features are not served; its key
    # (which also seeds its augmentations) does not, so augmented views stay what they were
    split = syn.synthetic_split("train", 1, "field")
    assert split.identity(0) == f"{split.keys[0]}|{syn.world_digest()}"
    assert syn.world_digest() not in split.keys[0]
    assert data_digest("cifar100") is None  # real data on disk publishes none
    with pytest.raises(KeyError, match="unknown dataset"):
        data_digest("no_such_dataset")


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


# ---------------------------------------------------------------------------------------------- 2


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


# ---------------------------------------------------------------------------------------------- 3


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


# ---------------------------------------------------------------------------------------------- 4


def test_datasets_select_their_papers_backbone_and_noise():
    mission = _compose(["model=dpsep", "data=ucf101", "noise=inst60"], hydra_node=False)
    assert mission.backbone.name == "vit_b32" and mission.backbone.pretrained == "openai"
    assert _compose(["model=tango", "data=cifar100"], hydra_node=False).backbone.name == "vit_b16"
    real = _compose(["model=tango", "data=cifar100n"], hydra_node=False)
    assert real.noise.name == "real" and real.backbone.name == "vit_b16"
    assert _compose(["data=cifar100n", "noise=sym50", "backbone=rn50"], hydra_node=False).backbone.name == "rn50"
    assert _compose([], hydra_node=False).backbone.name == "synthetic"  # the synthetic world keeps its CLIP


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


# ---------------------------------------------------------------------------------------------- 5


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
