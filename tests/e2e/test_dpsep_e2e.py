"""Reduced DP-SEP table on the synthetic world with its pretrained CLIP: invariants that must hold
whatever the method quality (training runs, the negative branch is its own prompt, heavy noise hurts)."""
import lightning as L
import pytest
import torch

from noisy_prompt.data.datamodule import CLIPDataModule
from noisy_prompt.methods.coop import CoOp
from noisy_prompt.methods.dpsep import DPSEP
from noisy_prompt.noise import NoiseSpec

SYNTHETIC = {"model": "builtin:synthetic-clip", "pretrained": None, "allow_random": False, "name": "synthetic"}
EPOCHS = 6


def _dm(noise, tmp_path, bundle):
    dm = CLIPDataModule(name="synthetic", reader_kwargs={"num_train_per_class": 32, "num_val_per_class": 0,
                                                         "num_test_per_class": 16},
                        shots=16, noise=noise, seed=1, backbone=SYNTHETIC, views=EPOCHS, crop_scale=(0.5, 1.0),
                        batch_size=32, cache_dir=str(tmp_path / "cache"), clip_bundle=bundle)
    dm.setup("fit")
    return dm


def _fit_test(module, dm):
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    return module.test_report["test"]["acc"]


@pytest.mark.slow
def test_reduced_synthetic_table_invariants(tmp_path, synthetic_bundle):
    # One loaded CLIP for the two datamodules and the three modules (none of them changes its weights).
    common = dict(backbone=SYNTHETIC, test_sets=["test"], n_ctx=16, max_epochs=EPOCHS,
                  optim={"lr": 0.002, "warmup_epochs": 1, "warmup_lr": 1e-5}, clip_bundle=synthetic_bundle)
    clean_dm = _dm(NoiseSpec(name="clean", protocol="clean"), tmp_path, synthetic_bundle)
    noisy_dm = _dm(NoiseSpec(name="sym80", protocol="sym", rate=0.8), tmp_path, synthetic_bundle)
    coop_clean = _fit_test(CoOp(classnames=clean_dm.classnames, **common), clean_dm)
    coop_noisy = _fit_test(CoOp(classnames=noisy_dm.classnames, **common), noisy_dm)
    dpsep = DPSEP(classnames=noisy_dm.classnames, **common)
    dpsep_noisy = _fit_test(dpsep, noisy_dm)
    assert coop_noisy < coop_clean - 5, (coop_clean, coop_noisy)
    assert 0 < dpsep_noisy <= 100
    x = noisy_dm.test_sets["test"].views[0][:64]
    with torch.no_grad():
        out = dpsep.branch_logits(x)
    assert not torch.allclose(dpsep.ctx, dpsep.ctx_neg)
    assert not torch.allclose(out["logits_pos"], out["logits_neg"], atol=1e-3)
    assert dpsep.history["train/a_neg"] and dpsep.history["train/mc"]
