"""The prefix-shared text path ([SOS]+ctx once, class suffixes batched) is the same function as the cut
path and as open_clip's `encode_text`: outputs and gradients w.r.t. the context, in fp32."""
import copy

import pytest
import torch

from noisy_prompt.clip import PromptTextEncoder
from noisy_prompt.clip.prefix_forward import is_causal_mask, prefix_shared_transformer

# Different token lengths (1 to 7 tokens); '_' is turned into a space by the encoder.
NAMES = ["dog", "golden retriever", "sea_lion", "x", "black-footed albatross", "a very long bird name here"]
ORDER = torch.tensor([4, 2, 0, 5, 1, 3])  # a derangement, as DP-SEP's pi
PHRASES = {4: "a photo of a", 16: "a good photo of the one small thing that is in a big and bright red"}
ARCHS = ["synthetic", "ViT-B-16", "ViT-B-32", "RN50"]
TOL = 1e-5


def _model(arch, random_clip, synthetic_clip):
    return synthetic_clip if arch == "synthetic" else random_clip(arch)


def _close(a, b, tol=TOL):
    """|a - b| <= tol, relative to the magnitude of b when that exceeds 1 (gradients of random towers
    reach ~50, where an absolute 1e-5 is below fp32 resolution of the accumulated sums)."""
    err = (a - b).abs().max().item()
    return err <= tol * max(1.0, b.abs().max().item()), err


def _weighted_sum(feats):
    # A fixed, non-symmetric reduction so that every output coordinate gets its own gradient weight.
    w = torch.linspace(-1.0, 1.0, feats.numel(), dtype=feats.dtype).view_as(feats)
    return (feats * w).sum()


def _out_and_grad(enc, ctx, order=None):
    c = ctx.clone().requires_grad_(True)
    out = enc(c, order)
    _weighted_sum(out).backward()
    return out.detach(), c.grad


def _encode_text_and_ctx_grad(model, tok, phrase, names, n_ctx):
    """open_clip's own encode_text on `phrase name.` and the gradient w.r.t. the (shared) context token
    embeddings, taken from the token-embedding output with a hook and summed over classes."""
    tokens = tok([f"{phrase} {n.replace('_', ' ')}." for n in names])
    held = {}

    def hook(_module, _inp, out):
        held["emb"] = out.detach().requires_grad_(True)
        return held["emb"]

    h = model.token_embedding.register_forward_hook(hook)
    try:
        out = model.encode_text(tokens)
        _weighted_sum(out).backward()
    finally:
        h.remove()
    return out.detach(), held["emb"].grad[:, 1:1 + n_ctx].sum(0)


@pytest.mark.parametrize("n_ctx", [4, 16])
@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_equals_encode_text_and_cut(arch, n_ctx, random_clip, synthetic_clip):
    model, tok = _model(arch, random_clip, synthetic_clip)
    prefix = PromptTextEncoder(model, tok, NAMES, n_ctx=n_ctx)  # default path: auto
    cut = PromptTextEncoder(model, tok, NAMES, n_ctx=n_ctx, path="cut")
    assert prefix.path == "prefix" and cut.path == "cut"

    # Phrase context: equals open_clip's encode_text on the plain prompt, outputs and context gradient.
    ctx = prefix.init_context(PHRASES[n_ctx], tok)
    out, grad = _out_and_grad(prefix, ctx)
    ref, ref_grad = _encode_text_and_ctx_grad(model, tok, PHRASES[n_ctx], NAMES, n_ctx)
    for a, b in ((out, ref), (grad, ref_grad)):
        ok, err = _close(a, b)
        assert ok, f"{arch} n_ctx={n_ctx}: max error {err}"

    # Random context and a permuted class order: equals the cut path, rows in the requested order.
    ctx = torch.randn(n_ctx, prefix.width, generator=torch.Generator().manual_seed(n_ctx)) * 0.02
    out_p, grad_p = _out_and_grad(prefix, ctx, ORDER)
    out_c, grad_c = _out_and_grad(cut, ctx, ORDER)
    for a, b in ((out_p, out_c), (grad_p, grad_c)):
        ok, err = _close(a, b)
        assert ok, f"{arch} n_ctx={n_ctx} permuted: max error {err}"
    with torch.no_grad():
        assert _close(prefix(ctx)[ORDER], out_p)[0]


def test_full_path_equals_prefix_on_synthetic(synthetic_clip):
    model, tok = synthetic_clip
    full = PromptTextEncoder(model, tok, NAMES, n_ctx=16, path="full")
    prefix = PromptTextEncoder(model, tok, NAMES, n_ctx=16, path="prefix")
    ctx = torch.randn(16, full.width, generator=torch.Generator().manual_seed(3)) * 0.02
    for a, b in zip(_out_and_grad(prefix, ctx, ORDER), _out_and_grad(full, ctx, ORDER)):
        assert _close(a, b)[0]


def test_batch_first_false_transformer(synthetic_clip):
    """A tower run sequence-first (open_clip's older layout): the cut path transposes inside the
    transformer, the prefix path never calls it; both must still agree."""
    model, tok = copy.deepcopy(synthetic_clip[0]), synthetic_clip[1]
    model.transformer.batch_first = False
    for blk in model.transformer.resblocks:
        blk.attn.batch_first = False
    prefix = PromptTextEncoder(model, tok, NAMES, n_ctx=4, path="prefix")
    cut = PromptTextEncoder(model, tok, NAMES, n_ctx=4, path="cut")
    ctx = prefix.init_context(PHRASES[4], tok)
    with torch.no_grad():
        ref = model.encode_text(tok([f"a photo of a {n.replace('_', ' ')}." for n in NAMES]))
        assert _close(prefix(ctx), ref)[0] and _close(cut(ctx), ref)[0]


def test_non_causal_tower_keeps_full_path(synthetic_clip):
    """A bidirectional tower (SigLIP-style, no causal mask): auto falls back to the full sequence;
    asking for prefix or cut explicitly is an error that names the key."""
    model, tok = copy.deepcopy(synthetic_clip[0]), synthetic_clip[1]
    model.attn_mask = None
    assert PromptTextEncoder(model, tok, NAMES, n_ctx=4).path == "full"
    for path in ("prefix", "cut"):
        with pytest.raises(ValueError, match=f"model.text_path={path}"):
            PromptTextEncoder(model, tok, NAMES, n_ctx=4, path=path)


def test_cut_to_eot_false_and_bad_path(synthetic_clip):
    model, tok = synthetic_clip
    assert PromptTextEncoder(model, tok, NAMES, n_ctx=4, cut_to_eot=False).path == "full"
    with pytest.raises(ValueError, match="model.text_path must be one of"):
        PromptTextEncoder(model, tok, NAMES, n_ctx=4, path="fast")


def test_causal_mask_conventions():
    n = 5
    additive = torch.full((n, n), float("-inf")).triu(1)
    boolean = torch.ones(n, n, dtype=torch.bool).triu(1)
    assert is_causal_mask(additive) and is_causal_mask(boolean)
    assert not is_causal_mask(None)
    assert not is_causal_mask(torch.zeros(n, n))  # bidirectional
    assert not is_causal_mask(boolean.t())  # anti-causal
    shifted = additive.clone()
    shifted[3, 1] = -1.0  # a bias inside the allowed region is not a plain causal mask
    assert not is_causal_mask(shifted)


def test_prefix_transformer_rejects_batched_prefix(synthetic_clip):
    blocks = synthetic_clip[0].transformer.resblocks
    width = synthetic_clip[0].token_embedding.weight.shape[1]
    with pytest.raises(ValueError, match="single shared sequence"):
        prefix_shared_transformer(blocks, torch.zeros(2, 3, width), torch.zeros(2, 2, width))


def test_packed_suffixes_equal_separate_runs(synthetic_clip):
    """Classes of different suffix lengths in one packed call give what each gives alone, unpadded."""
    model, _ = synthetic_clip
    blocks, width = model.transformer.resblocks, model.token_embedding.weight.shape[1]
    gen = torch.Generator().manual_seed(5)
    prefix, suffix = torch.randn(1, 3, width, generator=gen), torch.randn(3, 4, width, generator=gen)
    lengths = torch.tensor([4, 1, 2])
    with torch.no_grad():
        packed = prefix_shared_transformer(blocks, prefix, suffix, lengths)
        for c, n in enumerate(lengths.tolist()):
            alone = prefix_shared_transformer(blocks, prefix, suffix[c:c + 1, :n])
            assert _close(packed[c], alone[0])[0]
    with pytest.raises(ValueError, match="suffix lengths must be in 1..4"):
        prefix_shared_transformer(blocks, prefix, suffix, torch.tensor([0, 1, 2]))
