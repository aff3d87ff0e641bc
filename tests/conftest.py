"""Session-wide isolation: offline, no W&B, logs and caches in temp dirs, few threads."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["WANDB_MODE"] = os.environ.get("WANDB_MODE", "disabled")

import pytest  # noqa: E402
import torch  # noqa: E402

# `make test` runs the suite in parallel processes (pytest-xdist, one per core): each worker, and every
# subprocess a test starts, then gets an equal share of the cores instead of all of them, because
# oversubscribed cores run torch many times slower. A serial run (`-n 0`) keeps up to 2 threads.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_threads = max(1, min(2, (os.cpu_count() or 1) // _workers))
if _workers > 1:
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    os.environ["MKL_NUM_THREADS"] = str(_threads)
torch.set_num_threads(min(_threads, torch.get_num_threads()))


@pytest.fixture(autouse=True, scope="session")
def _isolated_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("np_env")
    old = {k: os.environ.get(k) for k in ("NOISY_PROMPT_LOGS", "NOISY_PROMPT_CACHE", "WANDB_DIR")}
    os.environ["NOISY_PROMPT_LOGS"] = str(root / "runs")
    os.environ["NOISY_PROMPT_CACHE"] = str(root / "cache")
    os.environ["WANDB_DIR"] = str(root / "wandb")
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> dict:
    """A randomly initialised tiny CLIP saved in open_clip's local-dir format: real weights-loading path,
    no download, fast. Quality is irrelevant for the invariants tested with it."""
    import json

    from open_clip.model import CLIP
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(0)
    model = CLIP(**TINY_CLIP)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {"size": 32}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return {"model": f"local-dir:{folder}", "pretrained": None, "allow_random": False, "name": "tiny"}


@pytest.fixture
def synthetic_dm_factory(tiny_backbone, tmp_path):
    """Build a CLIPDataModule on a small synthetic split with the tiny CLIP."""
    from noisy_prompt.data.datamodule import CLIPDataModule

    def make(noise=None, shots=4, views=2, input="features", seed=1, **kw):
        dm = CLIPDataModule(name="synthetic", reader_kwargs={"num_train_per_class": 8, "num_val_per_class": 2,
                                                             "num_test_per_class": 2},
                            shots=shots, noise=noise, seed=seed, backbone=tiny_backbone, input=input, views=views,
                            crop_scale=(0.5, 1.0), batch_size=16, cache_dir=str(tmp_path / "cache"), **kw)
        dm.setup("fit")
        return dm

    return make


@pytest.fixture(scope="session")
def random_clip():
    """`random_clip(arch) -> (model, tokenizer)`: a randomly initialised open_clip model (no download),
    built once per session and shared, frozen, by every test that asks for it (ViT-B-16 alone takes
    seconds to initialise). Tests must not change its weights."""
    from noisy_prompt.clip import create_clip

    built: dict[str, tuple] = {}

    def get(arch: str):
        if arch not in built:
            torch.manual_seed(0)
            bundle = create_clip(arch, None, allow_random=True)
            bundle.model.eval()
            for p in bundle.model.parameters():
                p.requires_grad_(False)
            built[arch] = (bundle.model, bundle.tokenizer)
        return built[arch]

    return get


@pytest.fixture(scope="session")
def synthetic_bundle():
    """The package's built-in synthetic CLIP as a `ClipBundle`, loaded once per session and frozen; pass
    it as `clip_bundle=` to datamodules and modules that only read it (prompt methods, feature caching)."""
    from noisy_prompt.clip import create_clip

    bundle = create_clip("builtin:synthetic-clip")
    bundle.model.eval()
    for p in bundle.model.parameters():
        p.requires_grad_(False)
    return bundle


@pytest.fixture(scope="session")
def synthetic_clip(synthetic_bundle):
    """The built-in synthetic CLIP `(model, tokenizer)`, shared and frozen."""
    return synthetic_bundle.model, synthetic_bundle.tokenizer
