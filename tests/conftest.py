"""Session-wide isolation: offline, no W&B, logs and caches in temp dirs, few threads."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["WANDB_MODE"] = os.environ.get("WANDB_MODE", "disabled")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


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
