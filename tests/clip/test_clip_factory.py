"""The factory refuses random weights for real runs and explains missing weights."""
import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from noisy_prompt.clip.factory import WeightsNotFoundError, create_clip

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def test_random_weights_refused_without_allow_random():
    with pytest.raises(WeightsNotFoundError, match="allow_random"):
        create_clip("ViT-B-32", None)


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "weights.bin"
    with pytest.raises(WeightsNotFoundError, match=str(missing)):
        create_clip("ViT-B-32", str(missing))


def test_offline_tag_error_says_how_to_provide(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="backbone.pretrained"):
        create_clip("RN50-quickgelu", "openai")


def _write_local_dir(folder, seed=0):
    torch.manual_seed(seed)
    from open_clip.model import CLIP

    model = CLIP(**TINY)
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY, "preprocess_cfg": {"size": 32}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return model


def test_local_dir_weights_roundtrip(tmp_path):
    ref = _write_local_dir(tmp_path / "m")
    bundle = create_clip(f"local-dir:{tmp_path / 'm'}")
    assert bundle.image_size == 32
    for (k, a), b in zip(ref.state_dict().items(), bundle.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert "open_clip_model.safetensors" in bundle.identity


def test_local_checkpoint_file_with_builtin_architecture(tmp_path):
    ref = open_clip.create_model("RN50", pretrained=None)
    path = tmp_path / "rn50.pt"
    torch.save(ref.state_dict(), path)
    bundle = create_clip("RN50", str(path))
    assert torch.equal(bundle.model.visual.conv1.weight, ref.visual.conv1.weight)
    assert bundle.image_size == 224


def test_builtin_synthetic_clip_loads_frozen_ready():
    b = create_clip("builtin:synthetic-clip")
    assert b.image_size == 32
    assert b.logit_scale > 1
