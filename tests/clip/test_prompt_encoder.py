"""The prompt text path must equal open_clip's encode_text for plain prompts (parity) and the EOT cut
must be exact."""
import pytest
import torch

from noisy_prompt.clip import PromptTextEncoder

NAMES = ["dog", "golden retriever", "sea_lion", "x"]


@pytest.fixture
def synthetic(synthetic_clip):
    return synthetic_clip


@pytest.mark.parametrize("arch", ["ViT-B-16", "RN50"])
@pytest.mark.parametrize("cut", [True, False])
def test_parity_random_architectures(arch, cut, random_clip):
    model, tok = random_clip(arch)
    enc = PromptTextEncoder(model, tok, NAMES, n_ctx=4, path="cut" if cut else "full")
    ctx = enc.init_context("a photo of a", tok)
    with torch.no_grad():
        out = enc(ctx)
        ref = model.encode_text(tok([f"a photo of a {c.replace('_', ' ')}." for c in NAMES]))
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


def test_parity_synthetic_clip(synthetic):
    model, tok = synthetic
    names = ["red circle", "blue triangle"]
    enc = PromptTextEncoder(model, tok, names, n_ctx=4)
    ctx = enc.init_context("a photo of a", tok)
    with torch.no_grad():
        ref = model.encode_text(tok([f"a photo of a {c}." for c in names]))
        assert torch.allclose(enc(ctx), ref, atol=1e-5)


def test_cut_equals_full_length_for_random_context_and_class_order(random_clip):
    torch.manual_seed(1)
    model, tok = random_clip("ViT-B-32")
    cut = PromptTextEncoder(model, tok, NAMES, n_ctx=16, path="cut")
    full = PromptTextEncoder(model, tok, NAMES, n_ctx=16, path="full")
    ctx = torch.randn(16, cut.width) * 0.02
    order = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        assert torch.allclose(cut(ctx, order), full(ctx, order), atol=1e-5)
        # a different class order must give the rows of that order
        assert torch.allclose(cut(ctx, order), cut(ctx)[order], atol=1e-5)


def test_gradient_reaches_context_only(random_clip):
    torch.manual_seed(2)
    model, tok = random_clip("ViT-B-32")  # shared and frozen: only the context can receive a gradient
    enc = PromptTextEncoder(model, tok, NAMES, n_ctx=8)
    assert not any(p.requires_grad for p in model.parameters())
    ctx = torch.nn.Parameter(torch.randn(8, enc.width) * 0.02)
    enc(ctx).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0


def test_phrase_length_must_match_n_ctx(random_clip):
    model, tok = random_clip("ViT-B-32")
    enc = PromptTextEncoder(model, tok, NAMES, n_ctx=5)
    with pytest.raises(ValueError, match="n_ctx=5"):
        enc.init_context("a photo of a", tok)


def test_prompt_too_long_for_context_is_an_error(synthetic):
    model, tok = synthetic
    with pytest.raises(ValueError, match="context length"):
        PromptTextEncoder(model, tok, ["a very long class name " * 6], n_ctx=16)
