"""CoOp-style prompts through open_clip's text tower.

Learnable context vectors are spliced between SOS and the class-name tokens:
`[SOS] ctx_1..ctx_L <class tokens> . [EOT] <pad>`. The encoder itself is a frozen function of the
context; the methods own the context parameters, so one encoder serves DP-SEP's positive and negative
prompts and any class order.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from noisy_prompt.clip.prefix_forward import prefix_shared_transformer, prefix_unsupported_reason

PLACEHOLDER = "X"


class TextTower:
    """Uniform access to the parts of open_clip's text towers (CLIP keeps them on the model itself,
    CustomTextCLIP on `model.text`)."""

    def __init__(self, model: nn.Module):
        owner = model.text if hasattr(model, "text") and hasattr(model.text, "token_embedding") else model
        if not hasattr(owner, "token_embedding"):
            raise TypeError(f"{type(model).__name__} has no token-embedding text tower; prompt tuning needs one")
        if getattr(owner, "cls_emb", None) is not None:
            raise NotImplementedError("text towers with a CLS embedding are not supported for prompt tuning")
        self.owner = owner
        self.token_embedding = owner.token_embedding
        self.positional_embedding = owner.positional_embedding
        self.transformer = owner.transformer
        self.ln_final = owner.ln_final
        self.text_projection = getattr(owner, "text_projection", None)
        self.pool_type = getattr(owner, "text_pool_type", getattr(owner, "pool_type", "argmax"))
        self.eos_id = getattr(owner, "text_eos_id", getattr(owner, "eos_id", None))

    @property
    def attn_mask(self) -> torch.Tensor | None:
        return getattr(self.owner, "attn_mask", None)

    @property
    def causal(self) -> bool:
        return self.attn_mask is not None

    def pool_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        if self.pool_type == "eos":
            return (tokens == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "last":
            return torch.full((tokens.shape[0],), tokens.shape[1] - 1, dtype=torch.long)
        if self.pool_type == "first":
            return torch.zeros(tokens.shape[0], dtype=torch.long)
        raise NotImplementedError(f"text pool type {self.pool_type!r}")

    def project(self, x: torch.Tensor) -> torch.Tensor:
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection


TEXT_PATHS = ("auto", "prefix", "cut", "full")


class PromptTextEncoder(nn.Module):
    """Encodes `[SOS] ctx <classname>.` for every class with a given context tensor.

    Three exact ways to run the text tower (`path`, config `model.text_path`):
    - `full`: all `context_length` (77) positions for every class, as Dassl/CoOp do;
    - `cut`: the sequence is truncated after the longest pooled (EOT) position of the prompts in the
      batch. Under a causal mask, later tokens cannot influence the pooled token, so this is exact;
    - `prefix`: additionally, [SOS]+context is run once per call (it is the same for every class under
      the causal mask) and only the class-name suffixes are batched over classes, attending to the
      cached prefix keys/values, each class up to its own EOT (`prefix_forward.py`).
    `auto` picks `prefix` where it is exact (causal mask, EOT pooling, plain open_clip blocks), else
    `cut` where that is exact, else `full` (e.g. SigLIP's bidirectional tower). `cut_to_eot=False` is
    the older spelling of `path="full"` and is honoured when `path="auto"`.
    """

    def __init__(self, clip_model: nn.Module, tokenizer, classnames: Sequence[str], n_ctx: int, cut_to_eot: bool = True,
                 path: str = "auto"):
        super().__init__()
        self.tower = TextTower(clip_model)
        self.n_ctx = int(n_ctx)
        self.classnames = [c.replace("_", " ") for c in classnames]
        prompts = [" ".join([PLACEHOLDER] * self.n_ctx) + " " + name + "." for name in self.classnames]
        tokens = tokenizer(prompts)
        self.context_length = tokens.shape[1]
        positions = self.tower.pool_positions(tokens)
        if int(positions.max()) >= self.context_length - 1 or int(positions.min()) <= self.n_ctx:
            raise ValueError(
                f"prompts with {self.n_ctx} context tokens do not fit the text context length {self.context_length}; "
                "use a shorter context (model.n_ctx)"
            )
        with torch.no_grad():
            emb = self.tower.token_embedding(tokens).float()
        # Frozen pieces around the context; buffers move with the module but are not trained or saved.
        self.register_buffer("prefix", emb[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", emb[:, 1 + self.n_ctx:].clone(), persistent=False)
        self.register_buffer("pool_idx", positions.clone(), persistent=False)
        self.requested_path = path
        self.path = self.resolve_path(path, cut_to_eot)

    def resolve_path(self, path: str, cut_to_eot: bool = True) -> str:
        """The text path to run for the requested `path` (see the class docstring); errors name the key."""
        if path not in TEXT_PATHS:
            raise ValueError(f"model.text_path must be one of {TEXT_PATHS}, got {path!r}")
        cut_ok = self.tower.causal and self.tower.pool_type in ("argmax", "eos")
        prefix_why_not = prefix_unsupported_reason(self.tower)
        if path == "auto":
            if not cut_to_eot:
                return "full"
            return "prefix" if prefix_why_not is None else ("cut" if cut_ok else "full")
        if path == "prefix" and prefix_why_not is not None:
            raise ValueError(f"model.text_path=prefix is not exact for this text tower: {prefix_why_not}; "
                             "use model.text_path=auto")
        if path == "cut" and not cut_ok:
            raise ValueError("model.text_path=cut needs a causal text tower pooled at the EOT token; "
                             "use model.text_path=auto")
        return path

    @property
    def cut_to_eot(self) -> bool:
        """Older flag: True when the sequence is not run at full length."""
        return self.path != "full"

    @property
    def width(self) -> int:
        return self.prefix.shape[-1]

    def init_context(self, phrase: str | None, tokenizer, std: float = 0.02, generator: torch.Generator | None = None) -> torch.Tensor:
        """Context initial value: N(0, std²) or the token embeddings of `phrase` (then n_ctx must equal its length)."""
        if phrase is None:
            return torch.randn(self.n_ctx, self.width, generator=generator) * std
        tokens = tokenizer([phrase])
        n = int(self.tower.pool_positions(tokens)[0]) - 1
        if n != self.n_ctx:
            raise ValueError(f"model.ctx_init {phrase!r} has {n} tokens but model.n_ctx={self.n_ctx}; make them equal")
        with torch.no_grad():
            return self.tower.token_embedding(tokens)[0, 1:1 + n].float().clone()

    def forward(self, ctx: torch.Tensor, class_order: torch.Tensor | None = None) -> torch.Tensor:
        """Text features (unnormalised) for classes `class_order` (default: all, in label order).

        `ctx` is one shared context (n_ctx, width), or one context per class (C, n_ctx, width): CoOp's
        class-specific contexts (CSC), rows in label order. Class-specific contexts differ per sequence,
        so they run the cut path (or the full one where the cut is not exact), never the prefix path."""
        prefix, suffix, pool = self.prefix, self.suffix, self.pool_idx
        per_class = ctx.dim() == 3
        if per_class and ctx.shape[0] != prefix.shape[0]:
            raise ValueError(f"class-specific contexts need one row per class ({prefix.shape[0]}), got {tuple(ctx.shape)}")
        if class_order is not None:
            prefix, suffix, pool = prefix[class_order], suffix[class_order], pool[class_order]
            ctx = ctx[class_order] if per_class else ctx
        n = prefix.shape[0]
        if self.path == "prefix" and not per_class:
            return self._forward_prefix(ctx, suffix, pool)
        ctx = ctx if per_class else ctx.unsqueeze(0).expand(n, -1, -1)
        x = torch.cat([prefix, ctx.to(prefix.dtype), suffix], dim=1)
        cut = self.path == "cut" or (self.path == "prefix" and per_class)  # prefix is only chosen where cut is exact
        length = int(pool.max()) + 1 if cut else x.shape[1]
        x = x[:, :length] + self.tower.positional_embedding[:length].to(x.dtype)
        mask = self.tower.attn_mask
        if mask is not None:
            mask = mask[:length, :length]
        x = self.tower.transformer(x, attn_mask=mask)
        x = self.tower.ln_final(x)
        x = x[torch.arange(n, device=x.device), pool]
        return self.tower.project(x)

    def _forward_prefix(self, ctx: torch.Tensor, suffix: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        # [SOS] + context once (batch of 1); class-name suffixes cut at the longest pooled position.
        pos = self.tower.positional_embedding
        lp = 1 + self.n_ctx
        length = int(pool.max()) + 1
        head = torch.cat([self.prefix[:1], ctx.unsqueeze(0).to(self.prefix.dtype)], dim=1) + pos[:lp].to(self.prefix.dtype)
        tail = suffix[:, :length - lp] + pos[lp:length].to(suffix.dtype)
        # Each class runs only up to its own EOT (pool - lp + 1 suffix tokens), not the longest one's.
        x = prefix_shared_transformer(self.tower.transformer.resblocks, head, tail, lengths=pool - lp + 1)
        return self.tower.project(self.tower.ln_final(x))
