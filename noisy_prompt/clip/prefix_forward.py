"""Prefix-shared forward of open_clip's causal text transformer.

A CoOp prompt is `[SOS] ctx_1..ctx_L <class tokens> . [EOT]`. Under the causal mask, the hidden
states of positions 0..L depend only on those positions, so at every layer they are the same for all
classes. This module computes them once per context and runs only the class-name suffixes, batched
over classes, each suffix token attending to the cached prefix keys/values plus the causal part of its
own suffix. The result is the same function as the full forward (up to float rounding), using the
tower's own modules: each block's `ln_1`, `attn.in_proj_*`, `attn.out_proj`, `ls_1`, `ln_2`, `mlp`,
`ls_2`. Nothing is copied, so the weights stay the tower's (frozen or not).

Only the plain `ResidualAttentionBlock` of open_clip (an `nn.MultiheadAttention` with packed q/k/v, no
extra key/value bias, no attention dropout) is supported; `prefix_unsupported_reason` says why a tower
is not, and the prompt encoder then falls back to the cut path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def is_causal_mask(mask: torch.Tensor | None) -> bool:
    """True if `mask` is a causal attention mask in either of PyTorch's conventions: additive float
    (0 on and below the diagonal, -inf above) or boolean (True = not allowed, above the diagonal)."""
    if mask is None or mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
        return False
    upper = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    if mask.dtype == torch.bool:
        return bool(torch.equal(mask, upper))
    blocked = torch.isneginf(mask)
    return bool(torch.equal(blocked, upper) and (mask[~upper] == 0).all())


def prefix_unsupported_reason(tower) -> str | None:
    """None when the prefix-shared forward is exact for this tower, else why it is not."""
    if tower.attn_mask is None:
        return "the text tower has no causal mask (e.g. SigLIP), so every position sees the class name"
    if tower.pool_type not in ("argmax", "eos"):
        return f"the text tower pools with {tower.pool_type!r}, not at the EOT token"
    if not is_causal_mask(tower.attn_mask):
        return "the text tower's attention mask is not a plain causal mask"
    if getattr(tower.owner, "use_pad_mask", False):
        # A pad mask only hides positions after EOT, which cannot reach the pooled token under the
        # causal mask; still, keep the reference path for a tower configured this way.
        return "the text tower uses a padding mask"
    for i, blk in enumerate(tower.transformer.resblocks):
        attn = getattr(blk, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention):
            return f"text block {i} has a custom attention module ({type(attn).__name__})"
        if not attn._qkv_same_embed_dim or attn.in_proj_weight is None:
            return f"text block {i} has separate q/k/v projections"
        if attn.bias_k is not None or attn.add_zero_attn:
            return f"text block {i} adds key/value biases or a zero attention slot"
        if attn.dropout:
            return f"text block {i} has attention dropout {attn.dropout}"
        if hasattr(blk, "ln_1_kv"):
            return f"text block {i} is a cross-attention block"
        if not all(hasattr(blk, n) for n in ("ln_1", "ln_2", "mlp")):
            return f"text block {i} ({type(blk).__name__}) lacks ln_1/ln_2/mlp"
    return None


def _split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, L, 3D) packed projections -> q, k, v each (heads, N, L, head_dim)."""
    n, length, three_d = qkv.shape
    d = three_d // 3
    qkv = qkv.view(n, length, 3, heads, d // heads).permute(2, 3, 0, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(heads, N, L, head_dim) -> (N, L, D)."""
    h, n, length, hd = x.shape
    return x.permute(1, 2, 0, 3).reshape(n, length, h * hd)


def prefix_shared_transformer(blocks, prefix: torch.Tensor, suffix: torch.Tensor,
                              lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Runs the causal transformer `blocks` over the sequences `cat(prefix, suffix[c, :lengths[c]])` for
    every c and returns the hidden state of each sequence's last token, (C, D).

    prefix: (1, Lp, D), shared by all sequences (embeddings + positions 0..Lp-1).
    suffix: (C, Ls, D), per-sequence continuation (embeddings + positions Lp..Lp+Ls-1), right-padded.
    lengths: (C,) valid suffix tokens per sequence (default: all Ls). The token-wise parts of each block
      (layer norms, q/k/v and output projections, MLP: nearly all the FLOPs) run on the valid tokens
      only, packed; attention runs in the padded layout, where a padding slot comes after every valid
      token of its row and so is never attended to under the causal mask.
    """
    if prefix.shape[0] != 1:
        raise ValueError(f"prefix must be a single shared sequence (1, Lp, D), got {tuple(prefix.shape)}")
    n_cls, ls, width = suffix.shape
    lp = prefix.shape[1]
    if lengths is None:
        lengths = torch.full((n_cls,), ls, dtype=torch.long, device=suffix.device)
    lengths = lengths.to(suffix.device)
    if int(lengths.min()) < 1 or int(lengths.max()) > ls:
        raise ValueError(f"suffix lengths must be in 1..{ls}, got {lengths.tolist()}")
    valid = torch.arange(ls, device=suffix.device)[None, :] < lengths[:, None]
    rows = valid.flatten().nonzero().squeeze(1)  # packed token -> padded slot, in (class, position) order
    last = lengths.cumsum(0) - 1  # packed index of each sequence's last token
    masked = torch.ones(ls, ls, dtype=torch.bool, device=suffix.device).triu(1)  # suffix-internal causal part

    def padded(t: torch.Tensor) -> torch.Tensor:  # packed (T, F) -> (C, Ls, F), zeros in padding slots
        return t.new_zeros(n_cls * ls, t.shape[-1]).index_copy(0, rows, t).view(n_cls, ls, t.shape[-1])

    p, s = prefix, suffix.reshape(n_cls * ls, width)[rows]
    blocks = list(blocks)
    for i, blk in enumerate(blocks):
        attn = blk.attn
        heads = attn.num_heads
        qp, kp, vp = _split_heads(F.linear(blk.ln_1(p), attn.in_proj_weight, attn.in_proj_bias), heads)
        qs, ks, vs = _split_heads(padded(F.linear(blk.ln_1(s), attn.in_proj_weight, attn.in_proj_bias)), heads)
        hd = qp.shape[-1]
        scale = hd ** -0.5
        # Prefix: ordinary causal self-attention among its own Lp positions (once, not C times).
        ap = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True) if i + 1 < len(blocks) else None
        # Suffix queries see every prefix position and the causal part of their own suffix. The
        # prefix scores are one (H, C*Ls, dh) x (H, dh, Lp) product: no C-fold copy of the prefix k/v.
        q_flat = qs.reshape(heads, n_cls * ls, hd)
        s_pre = torch.matmul(q_flat, kp[:, 0].transpose(-2, -1)).view(heads, n_cls, ls, lp) * scale
        s_suf = torch.matmul(qs, ks.transpose(-2, -1)) * scale
        s_suf = s_suf.masked_fill(masked, float("-inf"))
        w = torch.softmax(torch.cat([s_pre, s_suf], dim=-1), dim=-1)
        a_pre = torch.matmul(w[..., :lp].reshape(heads, n_cls * ls, lp), vp[:, 0]).view(heads, n_cls, ls, hd)
        a_s = (a_pre + torch.matmul(w[..., lp:], vs)).permute(1, 2, 0, 3).reshape(n_cls * ls, width)[rows]
        s = s + blk.ls_1(attn.out_proj(a_s))
        s = s + blk.ls_2(blk.mlp(blk.ln_2(s)))
        if i + 1 < len(blocks):  # the last block's prefix output is never read
            p = p + blk.ls_1(attn.out_proj(_merge_heads(ap)))
            p = p + blk.ls_2(blk.mlp(blk.ln_2(p)))
    return s[last]
