"""DDP on CPU (gloo): exact test metrics without DistributedSampler padding, and ddp_spawn in a multirun."""
import json
import os
import subprocess
import sys

import lightning as L
import pytest
import torch

from noisy_prompt.data.datamodule import UnpaddedDistributedSampler
from noisy_prompt.methods.coop import CoOp

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def test_unpadded_sampler_covers_every_item_once():
    ds = list(range(11))
    parts = [list(UnpaddedDistributedSampler(ds, 3, r)) for r in range(3)]
    assert sorted(sum(parts, [])) == ds
    assert [len(p) for p in parts] == [4, 4, 3]


@pytest.mark.slow
def test_two_process_test_accuracy_equals_one_process(synthetic_dm_factory, tiny_backbone, tmp_path):
    # 42 classes x 2 test images = 84 items, eval batch 256: with 2 ranks Lightning's default sampler
    # would pad nothing here, so use an odd-sized test set (drop one item) to make padding matter.
    torch.multiprocessing.set_sharing_strategy("file_system")  # pytest's process: fd sharing fails here
    dm = synthetic_dm_factory()
    ds = dm.test_sets["test"]
    ds.views, ds.labels, ds.clean = ds.views[:, :83], ds.labels[:83], ds.clean[:83]
    module = CoOp(backbone=tiny_backbone, classnames=dm.classnames, test_sets=["test"], n_ctx=4, seed=3)
    module.report_path = str(tmp_path / "one" / "module_report.json")
    single = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                       default_root_dir=str(tmp_path / "one"))
    single.test(module, datamodule=dm, verbose=False)
    acc_one = json.loads((tmp_path / "one" / "module_report.json").read_text())["test_report"]["test"]
    module.report_path = str(tmp_path / "two" / "module_report.json")
    double = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, enable_progress_bar=False,
                       default_root_dir=str(tmp_path / "two"))
    double.test(module, datamodule=dm, verbose=False)
    acc_two = json.loads((tmp_path / "two" / "module_report.json").read_text())["test_report"]["test"]
    assert acc_two["acc"] == pytest.approx(acc_one["acc"], abs=1e-6)
    assert sum(map(sum, acc_one["confusion"])) == 83
    assert sum(map(sum, acc_two["confusion"])) == 83  # every test item counted exactly once


@pytest.mark.slow
def test_ddp_spawn_inside_two_job_multirun(tiny_backbone, tmp_path):
    logs = tmp_path / "logs"
    env = {**os.environ, "NOISY_PROMPT_LOGS": str(logs), "NOISY_PROMPT_CACHE": str(tmp_path / "cache"),
           "PYTHONWARNINGS": "ignore"}
    args = ["-m", "model=coop", "seed=1,2", "noise=sym50", f"backbone.model={tiny_backbone['model']}", "sweep=ddp",
            "trainer=ddp_spawn", "trainer.accelerator=cpu", "trainer.devices=2", "logger=none", "callbacks=none",
            "figures=false", "data.reader_kwargs.num_train_per_class=6", "data.reader_kwargs.num_val_per_class=2",
            "data.reader_kwargs.num_test_per_class=2", "data.shots=4", "data.recipe.prompt.max_epochs=1"]
    proc = subprocess.run([sys.executable, "-m", "noisy_prompt.run", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep_dirs = [p for p in logs.iterdir()]
    assert [p.name for p in sweep_dirs] == ["ddp"]
    results = sorted(logs.rglob("results.json"))
    assert len(results) == 2
    for path in results:
        res = json.loads(path.read_text())
        assert res["world_size"] == 2 and res["status"] == "ok"


def test_plain_ddp_in_multirun_is_refused():
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from noisy_prompt import ddp_guard

    cfg = OmegaConf.create({"trainer": {"strategy": "ddp", "devices": 2}})
    orig = HydraConfig.initialized
    try:
        HydraConfig.initialized = staticmethod(lambda: True)
        import hydra.types

        class _Mode:
            mode = hydra.types.RunMode.MULTIRUN

        orig_get = HydraConfig.get
        HydraConfig.get = staticmethod(lambda: _Mode)
        with pytest.raises(RuntimeError, match="ddp_spawn"):
            ddp_guard.check_strategy(cfg)
        cfg.trainer.devices = 1
        ddp_guard.check_strategy(cfg)  # one device: fine
    finally:
        HydraConfig.initialized = orig
        HydraConfig.get = orig_get
