"""model=ft_ce: plain CE fine-tuning of the vision tower (linear or TAC head) on a tiny random CLIP."""
from __future__ import annotations


import pytest
import torch

from fake_trees import save_tiny_clip
from noisy_prompt.methods.ft_ce import FineTuneCE

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CLASSES = ["red circle", "blue striped square", "green star"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> dict:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), TINY)


def _module(backbone, **kw) -> FineTuneCE:
    return FineTuneCE(backbone=backbone, classnames=CLASSES, templates=["a photo of a {}."], input="images",
                      optim={"name": "sgd", "lr": 0.05}, max_epochs=1, seed=1, **kw)


def test_linear_head_starts_as_zero_shot_and_only_vision_and_head_train(backbone):
    m = _module(backbone)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("clip.visual.", "head.")) for n in trainable)
    assert any(n.startswith("head.") for n in trainable)
    x = torch.randn(5, 3, 32, 32)
    zs = m.logit_scale * m.image_features(x) @ m.template_text_features().T
    torch.testing.assert_close(m.logits(x), zs, rtol=1e-4, atol=1e-4)
    assert m.trainable_state_names() >= {"head.weight", "head.bias"}
    assert not any(n.startswith("clip.transformer.") for n in m.trainable_state_names())


def test_tac_head_uses_the_dataset_descriptions_and_gives_log_probs(backbone):
    own = {c: [f"a thing called {c}.", f"{c}, drawn."] for c in CLASSES}
    m = _module(backbone, head="tac", class_descriptions=own)
    assert m.anchors.shape[0] == 6 and torch.equal(m.anchor_labels, torch.tensor([0, 0, 1, 1, 2, 2]))
    out = m.logits(torch.randn(4, 3, 32, 32))
    torch.testing.assert_close(out.exp().sum(1), torch.ones(4), rtol=1e-5, atol=1e-5)
    # without descriptions the templates are the anchors (one per class here)
    assert _module(backbone, head="tac").anchors.shape[0] == 3


def test_ce_steps_move_the_vision_tower_towards_the_given_labels(backbone):
    m = _module(backbone)
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.05)
    torch.manual_seed(1)
    x, y = torch.randn(12, 3, 32, 32), torch.tensor([0, 1, 2] * 4)
    before = torch.nn.functional.cross_entropy(m.logits(x), y).item()
    w0 = m.clip.visual.conv1.weight.detach().clone()
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(m.logits(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.nn.functional.cross_entropy(m.logits(x), y).item() < before
    assert not torch.equal(w0, m.clip.visual.conv1.weight)


def test_bad_settings_are_refused_with_the_key(backbone):
    with pytest.raises(ValueError, match="model.head"):
        _module(backbone, head="mlp")
    with pytest.raises(ValueError, match="model.input=images"):
        FineTuneCE(backbone=backbone, classnames=CLASSES, input="features")
