"""Pretrain a built-in tiny CLIP on generated image-caption pairs of the synthetic world.

    python -m noisy_prompt.tools.pretrain [--preset synthetic-clip-v3] [--out DIR] [--checkpoint-dir DIR] ...

A preset (PRESETS) holds every setting of one committed set of weights; flags override single
settings. The result is an open_clip `local-dir:` folder (open_clip_config.json +
open_clip_model.safetensors in fp16), loadable with `open_clip.create_model("local-dir:" + DIR)` and
`open_clip.get_tokenizer("local-dir:" + DIR)`, plus train_config.json (every setting) and
metrics.json (loss curve, zero-shot accuracies, geometry, wall time). A run writes a resume
checkpoint every `--checkpoint-every` steps (into `--checkpoint-dir`, default the output folder) and
picks it up when restarted with the same settings; on one thread (`--threads 1`) a resumed run ends
with the same bytes as an uninterrupted one. The checkpoint keeps only the rows of the token
embedding that training has touched (the rest are the seeded initialisation, rebuilt on resume), so
that a checkpoint of the 256-wide text tower can be committed and continued in another session.

- `synthetic-clip-v2` (world 2): continued from the first world's weights with a "merging prefix": a
  shared context of `merge_prefix_len` token vectors kept adversarial by gradient ascent on the mean
  off-diagonal cosine of class-prompt features, with a fraction `merge_rows` of each batch captioned
  `[SOT] prefix <object phrase>.`. The probes found that this taught the tower to ignore a context
  (docs/world-probes.md), so
- `synthetic-clip-v3` (world 3): from scratch, no merging prefix, a 256-wide text tower and
  embedding, captions that name world 3's instance attributes, and the logit scale at real CLIP's
  100 after a short ramp (see PretrainConfig.scale_ramp_steps).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from noisy_prompt.synthetic.captions import SHIFT_TEMPLATE, CaptionMix, pretraining_caption
from noisy_prompt.synthetic.world import (
    CLASSNAMES, DOWNSTREAM_STYLE, NUM_CLASSES, downstream_classes, render_scene, sample_scene, scene_rng,
)

from noisy_prompt.clip.factory import BUILTIN_WEIGHTS_DIR as WEIGHTS_DIR  # where builtin: names point

DEFAULT_OUT = WEIGHTS_DIR / "synthetic-clip"
CHECKPOINT_NAME = "resume_checkpoint.pt"
LOGIT_SCALE = 100.0

# open_clip keeps architectures as data: these dicts are the `model_cfg` of open_clip_config.json.
MODEL_CFG: dict = {  # worlds 1 and 2
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}
# World 3: a text tower and embedding twice as wide, so that one shared context can move class features
# along many independent directions (the probes measured at most ~7 in the 128-wide tower).
MODEL_CFG_V3: dict = {
    "embed_dim": 256,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4},
}

# Stream ids of the per-image generators (0 and 1 are the renderer's).
_CAPTION_STREAM, _MERGE_STREAM = 3, 4
_SOT, _EOT = 49406, 49407


@dataclass
class PretrainConfig:
    """Every setting of one pretraining run (defaults: the world-2 weights, `synthetic-clip-v2`)."""

    out: str = str(DEFAULT_OUT)
    steps: int = 1800
    batch_size: int = 128
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.1
    # The logit scale rises from scale_init to LOGIT_SCALE (log-linearly) over scale_ramp_steps, then
    # stays fixed: starting at 100 made a from-scratch tower collapse to one embedding (loss = log B).
    scale_init: float = 24.4
    scale_ramp_steps: int = 150
    world_seed: int = 0
    torch_seed: int = 0
    threads: int = 2
    checkpoint_every: int = 50
    p_mention: float = 0.5
    p_random_prefix: float = 0.05
    max_random_prefix: int = 16
    merge_rows: float = 0.25  # fraction of each batch captioned "[SOT] prefix <object>." (0: off)
    merge_prefix_len: int = 16  # CoOp's context length
    merge_every: int = 5
    merge_ascent_steps: int = 3
    merge_ascent_lr: float = 0.1
    merge_classes: int = 64
    merge_start: int = 200  # the prefix is useless before the tower reads class names
    eval_per_class: int = 16
    model_cfg: dict | None = None  # None: MODEL_CFG
    init_from: str = "synthetic-clip-v1"  # a folder under weights/ (or a path) to start from; "" = random init
    world: int = 2  # the world version whose images and captions it learns (synthetic.world.WORLDS)
    # Token ids the random prefix draws from ([low, high)). World 2 drew from the whole vocabulary; a
    # smaller pool keeps the set of trained embedding rows (and so the checkpoint) small.
    random_prefix_ids: tuple = (1, 49406)
    checkpoint_dir: str = ""  # "" = out

    def architecture(self) -> dict:
        return self.model_cfg or MODEL_CFG

    def caption_mix(self) -> CaptionMix:
        from noisy_prompt.synthetic.world import CONDITIONS

        return CaptionMix(p_mention={c: self.p_mention for c in CONDITIONS})

    def rebuild_settings(self) -> dict:
        """The settings that determine the weights (resume requires them to match)."""
        d = dict(vars(self))
        for k in ("out", "threads", "checkpoint_every", "eval_per_class", "checkpoint_dir"):
            d.pop(k)
        d["random_prefix_ids"] = list(self.random_prefix_ids)
        d["caption_mix"] = self.caption_mix().to_dict()
        d["model_cfg"] = self.architecture()
        d["logit_scale"] = LOGIT_SCALE
        d["data_fingerprint"] = data_fingerprint(self)
        return d

    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint_dir or self.out) / CHECKPOINT_NAME


# The settings of each committed set of weights (flags of the command line override single ones).
PRESETS: dict[str, dict] = {
    "synthetic-clip-v2": {"out": str(WEIGHTS_DIR / "synthetic-clip")},
    "synthetic-clip-v3": {
        "out": str(WEIGHTS_DIR / "synthetic-clip-v3"), "world": 3, "model_cfg": MODEL_CFG_V3, "init_from": "",
        "steps": 6000, "warmup_steps": 200, "lr": 1e-3, "merge_rows": 0.0,
        # From scratch at 100 the first world's tower collapsed to one embedding; a short ramp from
        # real CLIP's initial 1/0.07 reaches 100 long before the geometry settles.
        "scale_init": 14.3, "scale_ramp_steps": 500,
        "random_prefix_ids": (1000, 3000), "threads": 1, "checkpoint_every": 100,
    },
}
DEFAULT_PRESET = "synthetic-clip-v3"


# ---------------------------------------------------------------------------------------------
# Data


def pretrain_pair(cfg: PretrainConfig, index: int) -> tuple[np.ndarray, str, np.random.Generator]:
    """Image, caption and the caption's generator of pretraining pair `index` (class index mod 256,
    so a batch of 256 consecutive pairs holds every class once)."""
    scene = sample_scene(cfg.world_seed, "pretrain", index, "pretrain", index % NUM_CLASSES, cfg.world)
    rng = scene_rng(cfg.world_seed, "pretrain", index, _CAPTION_STREAM)
    return render_scene(scene), pretraining_caption(scene, rng, cfg.caption_mix()), rng


def merge_caption(cfg: PretrainConfig, index: int) -> str | None:
    """The short caption `<object phrase>.` that follows the merging prefix, or None for a normal row."""
    rng = scene_rng(cfg.world_seed, "pretrain", index, _MERGE_STREAM)
    if rng.random() >= cfg.merge_rows:
        return None
    scene = sample_scene(cfg.world_seed, "pretrain", index, "pretrain", index % NUM_CLASSES, cfg.world)
    # As an unmentioned-condition caption: the apparent colour (see captions.py).
    return scene.classname.replace(scene.colour, scene.apparent_colour, 1) + "."


def data_fingerprint(cfg: "PretrainConfig", n: int = 512) -> str:
    """sha256 (16 hex) of the first `n` pretraining pairs (pixels and captions): a resumed run refuses a
    checkpoint made on other data, e.g. after an edit of the world or its captions (an edit that leaves
    the pretraining data as it was, such as a downstream condition range, does not count)."""
    import hashlib

    h = hashlib.sha256()
    for i in range(n):
        image, caption, _ = pretrain_pair(cfg, i)
        h.update(image.tobytes() + caption.encode() + b"\0")
    return h.hexdigest()[:16]


def add_random_prefix(tokens: torch.Tensor, rng: np.random.Generator, max_len: int,
                      ids_range: Sequence[int] = (1, _SOT)) -> torch.Tensor:
    """Random tokens between SOT and the caption, so the text tower learns to read past junk
    (prompt learning later puts learned vectors there)."""
    ids = tokens.tolist()
    end = ids.index(_EOT) + 1
    prefix = rng.integers(ids_range[0], ids_range[1], size=int(rng.integers(1, max_len + 1))).tolist()
    new = ids[:1] + prefix + ids[1:end]
    ctx = len(ids)
    if len(new) > ctx:
        new = new[: ctx - 1] + [_EOT]
    return torch.tensor(new + [0] * (ctx - len(new)), dtype=tokens.dtype)


def to_tensor(images: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 HWC arrays -> normalized NCHW floats, as open_clip's eval transform does for 32px input."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def batch(cfg: PretrainConfig, step: int, tokenizer, mean, std, merging: bool = True):
    """Pairs [step * B, (step + 1) * B): a pure function of the step, so a resumed run sees the same data.
    Returns images, caption tokens, and (row indices, tokens) of the merging-prefix rows."""
    start = step * cfg.batch_size
    pairs = [pretrain_pair(cfg, i) for i in range(start, start + cfg.batch_size)]
    texts = tokenizer([caption for _, caption, _ in pairs])
    for row, (_, _, rng) in enumerate(pairs):
        if rng.random() < cfg.p_random_prefix:
            texts[row] = add_random_prefix(texts[row], rng, cfg.max_random_prefix, cfg.random_prefix_ids)
    rows, short = [], []
    if merging and cfg.merge_rows > 0 and step >= cfg.merge_start:
        for row in range(cfg.batch_size):
            c = merge_caption(cfg, start + row)
            if c is not None:
                rows.append(row)
                short.append(c)
    merge_tokens = tokenizer(short) if short else None
    return to_tensor([img for img, _, _ in pairs], mean, std), texts, torch.tensor(rows, dtype=torch.long), merge_tokens


class _Batches(torch.utils.data.Dataset):
    """Step -> batch, so a DataLoader worker renders the next batches while the model trains."""

    def __init__(self, cfg, start, tokenizer, mean, std):
        self.cfg, self.start, self.tokenizer, self.mean, self.std = cfg, start, tokenizer, mean, std

    def __len__(self):
        return self.cfg.steps - self.start

    def __getitem__(self, i):
        torch.set_num_threads(1)
        return batch(self.cfg, self.start + i, self.tokenizer, self.mean, self.std)


def image_stats(cfg: PretrainConfig, n: int = 2048) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of pretraining images (from a stream the training never reads)."""
    arr = np.stack([render_scene(sample_scene(cfg.world_seed, "stats", i, "pretrain", i % NUM_CLASSES, cfg.world))
                    for i in range(n)])
    x = arr.reshape(-1, 3).astype(np.float64) / 255.0
    return [round(float(v), 4) for v in x.mean(0)], [round(float(v), 4) for v in x.std(0)]


# ---------------------------------------------------------------------------------------------
# Model, optimisation, evaluation


def build_model(model_cfg: dict = MODEL_CFG):
    from open_clip.model import CLIP

    model = CLIP(**model_cfg)
    # Real CLIP's temperature, fixed: every downstream recipe's learning rate assumes it (T1).
    with torch.no_grad():
        model.logit_scale.fill_(math.log(LOGIT_SCALE))
    model.logit_scale.requires_grad_(False)
    return model


def init_dir(name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() or p.exists() else WEIGHTS_DIR / name


def init_weights(model, name: str) -> None:
    """Start from the weights of an open_clip local-dir of the same architecture (logit scale kept fixed)."""
    from safetensors.torch import load_file

    d = init_dir(name)
    state = load_file(str(d / "open_clip_model.safetensors"))
    state = {k: v.float() for k, v in state.items() if k != "logit_scale"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"logit_scale"}:
        raise ValueError(f"--init-from {d}: architecture differs (missing {missing}, unexpected {unexpected})")


def make_optimizer(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    # Usual CLIP practice: no weight decay on gains, biases, embeddings.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "embedding" in name or name.endswith("class_embedding")
        (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)


def scale_at(cfg: PretrainConfig, step: int) -> float:
    """The logit scale used at `step` (the saved model's is always LOGIT_SCALE)."""
    if step >= cfg.scale_ramp_steps:
        return LOGIT_SCALE
    t = step / max(1, cfg.scale_ramp_steps)
    return float(math.exp((1 - t) * math.log(cfg.scale_init) + t * math.log(LOGIT_SCALE)))


def lr_at(cfg: PretrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def encode_text_with_prefix(model, tokens: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """Unnormalised features of `[SOT] prefix <rest of tokens>` (what CoOp feeds the tower); the
    sequences must fit the context with the prefix (short captions)."""
    n, length = tokens.shape
    p = prefix.shape[0]
    emb = model.token_embedding(tokens)
    x = torch.cat([emb[:, :1], prefix.unsqueeze(0).expand(n, -1, -1).to(emb.dtype), emb[:, 1:length - p]], dim=1)
    pool = tokens.argmax(dim=-1) + p
    if int(pool.max()) >= length:
        raise ValueError(f"captions too long for a {p}-token prefix in a {length}-token context")
    x = x + model.positional_embedding.to(x.dtype)
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)[torch.arange(n), pool]
    return x @ model.text_projection if not isinstance(model.text_projection, torch.nn.Linear) else model.text_projection(x)


def token_norm(model) -> float:
    """Mean norm of the token embeddings of ordinary words (the scale a learned context starts at)."""
    with torch.no_grad():
        return float(model.token_embedding.weight[256:20000].norm(dim=-1).mean())


def mean_offdiag_cosine(feats: torch.Tensor) -> torch.Tensor:
    f = F.normalize(feats, dim=-1)
    sim = f @ f.T
    n = sim.shape[0]
    return (sim.sum() - sim.diagonal().sum()) / (n * (n - 1))


def update_merging_prefix(model, prefix: torch.Tensor, class_tokens: torch.Tensor, cfg: PretrainConfig) -> tuple[torch.Tensor, float]:
    """A few normalised-gradient ascent steps on the classes' mean off-diagonal cosine under the prefix."""
    norm = token_norm(model)
    prefix = prefix.detach().clone().requires_grad_(True)
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for _ in range(cfg.merge_ascent_steps):
            obj = mean_offdiag_cosine(encode_text_with_prefix(model, class_tokens, prefix))
            (g,) = torch.autograd.grad(obj, prefix)
            with torch.no_grad():
                prefix += cfg.merge_ascent_lr * norm * g / (g.norm(dim=-1, keepdim=True) + 1e-12)
                prefix *= norm / (prefix.norm(dim=-1, keepdim=True) + 1e-12)  # ordinary token norm
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(name != "logit_scale")
    return prefix.detach(), float(obj.detach())


@torch.no_grad()
def encode_images(model, images: Sequence[np.ndarray], mean, std, chunk: int = 512) -> torch.Tensor:
    feats = [model.encode_image(to_tensor(images[i : i + chunk], mean, std), normalize=True) for i in range(0, len(images), chunk)]
    return torch.cat(feats)


@torch.no_grad()
def class_text_features(model, tokenizer, template: str, classnames: Sequence[str]) -> torch.Tensor:
    return model.encode_text(tokenizer([template.format(c) for c in classnames]), normalize=True)


def evaluate(model, tokenizer, mean, std, per_class: int, world_seed: int = 0, world: int = 2) -> dict[str, float]:
    """Zero-shot top-1 on the downstream classes' test split (plain and shift-naming template, field
    and plain style) and the geometry diagnostics of the calibration spec."""
    from noisy_prompt.synthetic.world import render

    ids = downstream_classes(world_seed)
    names = [CLASSNAMES[c] for c in ids]
    n = per_class * len(ids)
    labels = torch.tensor([i % len(ids) for i in range(n)])
    out = {}
    txt = class_text_features(model, tokenizer, "a photo of a {}.", names)
    for style in (DOWNSTREAM_STYLE, "plain"):
        img = encode_images(model, [render(world_seed, "test", i, style, ids[i % len(ids)], world) for i in range(n)], mean, std)
        sims = img @ txt.T
        out[f"zero_shot_{style}_test_plain_template"] = float((sims.argmax(-1) == labels).float().mean())
        if style == DOWNSTREAM_STYLE:
            shift = class_text_features(model, tokenizer, SHIFT_TEMPLATE, names)
            out[f"zero_shot_{style}_test_shift_template"] = float(((img @ shift.T).argmax(-1) == labels).float().mean())
            true = sims[torch.arange(n), labels]
            out["median_true_class_cosine"] = float(true.median())
            out["median_row_spread"] = float((sims.max(-1).values - sims.min(-1).values).median())
    out["mean_offdiag_text_cosine"] = float(mean_offdiag_cosine(txt))
    return out


# ---------------------------------------------------------------------------------------------
# Saving


def save_local_dir(model, out: Path, mean, std, model_cfg: dict = MODEL_CFG) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"size": model_cfg["vision_cfg"]["image_size"], "mean": mean, "std": std,
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))


def load_local_dir(out: Path):
    """Model and tokenizer through open_clip's own `local-dir:` path (what users of the weights do)."""
    import open_clip

    model = open_clip.create_model("local-dir:" + str(out), require_pretrained=True)
    model.eval()
    return model, open_clip.get_tokenizer("local-dir:" + str(out))


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# The token embedding is most of the parameters (49,408 rows) but training touches only the rows of the
# words that captions use; the others stay exactly at their seeded initialisation (AdamW with zero moments
# and no weight decay on embeddings moves nothing), so a checkpoint stores the touched rows only.
_SPARSE_PARAM = "token_embedding.weight"


def _param_index(model, optimizer, name: str) -> int:
    target = dict(model.named_parameters())[name]
    flat = [p for g in optimizer.param_groups for p in g["params"]]
    return next(i for i, p in enumerate(flat) if p is target)


def compact_state(model, optimizer, init_rows: torch.Tensor) -> dict:
    """Model and optimizer state with the token embedding (and its Adam moments) cut to the rows that differ
    from the initialisation `init_rows` or carry optimizer state."""
    model_state = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    idx = _param_index(model, optimizer, _SPARSE_PARAM)
    weight = model_state[_SPARSE_PARAM]
    touched = (weight != init_rows).any(dim=1)
    moments = opt_state["state"].get(idx, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in moments:
            touched |= (moments[key] != 0).any(dim=1)
    rows = touched.nonzero().flatten()
    model_state[_SPARSE_PARAM] = weight[rows].clone()
    opt_state = {"param_groups": opt_state["param_groups"],
                 "state": {k: dict(v) for k, v in opt_state["state"].items()}}
    for key in ("exp_avg", "exp_avg_sq"):
        if key in opt_state["state"].get(idx, {}):
            opt_state["state"][idx][key] = opt_state["state"][idx][key][rows].clone()
    return {"model": model_state, "optimizer": opt_state, "sparse_rows": rows, "sparse_index": idx,
            "init_digest": tensor_digest(init_rows)}


def restore_state(model, optimizer, ckpt: dict, init_rows: torch.Tensor, path: Path) -> None:
    """Inverse of compact_state on a freshly seeded model (whose embedding is `init_rows`)."""
    if ckpt["init_digest"] != tensor_digest(init_rows):
        raise SystemExit(f"{path}: the seeded initialisation differs from the one this checkpoint was cut against "
                         "(another torch version?); pass --fresh to start over")
    rows, idx = ckpt["sparse_rows"], ckpt["sparse_index"]
    model_state = dict(ckpt["model"])
    full = init_rows.clone()
    full[rows] = model_state[_SPARSE_PARAM]
    model_state[_SPARSE_PARAM] = full
    model.load_state_dict(model_state)
    opt_state = {"param_groups": ckpt["optimizer"]["param_groups"],
                 "state": {k: dict(v) for k, v in ckpt["optimizer"]["state"].items()}}
    for key in ("exp_avg", "exp_avg_sq"):
        if key in opt_state["state"].get(idx, {}):
            dense = torch.zeros_like(init_rows)
            dense[rows] = opt_state["state"][idx][key]
            opt_state["state"][idx][key] = dense
    optimizer.load_state_dict(opt_state)


def tensor_digest(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:16]


def loss_summary(losses: list[float], points: int = 20) -> dict:
    n = len(losses)
    marks = sorted({min(n - 1, round(i * (n - 1) / (points - 1))) for i in range(points)}) if n else []
    tail = losses[-50:]
    return {
        "steps": n,
        "first": losses[0] if n else None,
        "final_mean_last_50": float(np.mean(tail)) if tail else None,
        "curve": [[m, round(losses[m], 4)] for m in marks],
    }


# ---------------------------------------------------------------------------------------------
# Main


def train(cfg: PretrainConfig, *, fresh: bool = False, progress: bool = True) -> dict:
    import open_clip
    from open_clip.loss import ClipLoss
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = cfg.checkpoint_path()
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    settings = cfg.rebuild_settings()

    torch.manual_seed(cfg.torch_seed)
    model = build_model(cfg.architecture())
    if cfg.init_from:
        init_weights(model, cfg.init_from)
    init_rows = dict(model.named_parameters())[_SPARSE_PARAM].detach().clone()
    optimizer = make_optimizer(model, cfg)
    start, losses, wall, merge_log = 0, [], 0.0, []
    mean, std = None, None
    prefix = None
    if ckpt_path.exists() and not fresh:
        from noisy_prompt.errors import safe_torch_load

        ckpt = safe_torch_load(ckpt_path, what="pretraining checkpoint",
                               remedy=f"Delete {ckpt_path} or pass --fresh to start the pretraining over.")
        if ckpt["settings"] != settings:
            raise SystemExit(
                f"{ckpt_path} was written with other settings; rerun with the same settings to resume, "
                f"or pass --fresh to start over"
            )
        restore_state(model, optimizer, ckpt, init_rows, ckpt_path)
        start, losses, wall, mean, std = ckpt["step"], ckpt["losses"], ckpt["wall_s"], ckpt["mean"], ckpt["std"]
        prefix, merge_log = ckpt.get("prefix"), ckpt.get("merge_log", [])
        print(f"resuming from {ckpt_path} at step {start}", file=sys.stderr)
    if mean is None:
        mean, std = image_stats(cfg)
    width = cfg.architecture()["text_cfg"]["width"]
    if prefix is None:
        g = torch.Generator().manual_seed(cfg.torch_seed + 1)
        prefix = torch.randn(cfg.merge_prefix_len, width, generator=g)

    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg.architecture()["text_cfg"]["context_length"])
    loss_fn = ClipLoss()
    model.train()
    t0 = time.time() - wall
    loader = torch.utils.data.DataLoader(_Batches(cfg, start, tokenizer, mean, std), batch_size=None, num_workers=1,
                                         prefetch_factor=4, persistent_workers=False)
    bar = tqdm(loader, initial=start, total=cfg.steps, desc="pretrain", disable=not progress)
    for step, (images, texts, merge_rows, merge_tokens) in enumerate(bar, start=start):
        for grp in optimizer.param_groups:
            grp["lr"] = lr_at(cfg, step)
        if merge_tokens is not None and step % cfg.merge_every == 0:
            picked = np.random.default_rng([cfg.world_seed, step, 78]).choice(NUM_CLASSES, cfg.merge_classes, replace=False)
            class_tokens = tokenizer([CLASSNAMES[c] + "." for c in picked])
            model.eval()
            prefix, merged = update_merging_prefix(model, prefix, class_tokens, cfg)
            model.train()
            merge_log.append([step, round(merged, 4)])
        img_f = model.encode_image(images, normalize=True)
        txt = model.encode_text(texts)
        if merge_tokens is not None:
            txt = txt.clone()
            txt[merge_rows] = encode_text_with_prefix(model, merge_tokens, prefix)
        txt_f = F.normalize(txt, dim=-1)
        loss = loss_fn(img_f, txt_f, torch.tensor(scale_at(cfg, step)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", merged=f"{merge_log[-1][1] if merge_log else 0:.2f}")
        done = step + 1
        if not progress and (done % 25 == 0 or done == cfg.steps):  # a log line for runs in the background
            print(f"step {done}/{cfg.steps} loss {np.mean(losses[-25:]):.4f} scale {scale_at(cfg, step):.1f} "
                  f"lr {lr_at(cfg, step):.2e} wall {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            _atomic_torch_save(
                {"settings": settings, **compact_state(model, optimizer, init_rows),
                 "step": done, "losses": losses, "wall_s": time.time() - t0, "mean": mean, "std": std,
                 "prefix": prefix, "merge_log": merge_log},
                ckpt_path,
            )
    train_wall = time.time() - t0

    model.eval()
    save_local_dir(model, out, mean, std, cfg.architecture())
    loaded, loaded_tok = load_local_dir(out)
    metrics = {
        "train_wall_s": round(train_wall, 1),
        "loss": loss_summary(losses),
        "merging_prefix_cosine": merge_log[:: max(1, len(merge_log) // 20)] + merge_log[-1:],
        "eval_per_class": cfg.eval_per_class,
        "downstream_style": DOWNSTREAM_STYLE,
        "logit_scale": float(loaded.logit_scale.exp()),
        **evaluate(loaded, loaded_tok, mean, std, cfg.eval_per_class, cfg.world_seed, cfg.world),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "num_params": sum(p.numel() for p in model.parameters()),
    }
    (out / "train_config.json").write_text(json.dumps({**settings, "mean": mean, "std": std}, indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if ckpt_path.exists():
        ckpt_path.unlink()  # the finished weights replace it
    return metrics


def evaluate_checkpoint(cfg: PretrainConfig) -> dict:
    """Zero-shot accuracy and geometry of the run's resume checkpoint (progress of a run in another process)."""
    import open_clip

    from noisy_prompt.errors import safe_torch_load

    path = cfg.checkpoint_path()
    if not path.exists():
        raise SystemExit(f"no resume checkpoint at {path}")
    torch.set_num_threads(cfg.threads)
    ckpt = safe_torch_load(path, what="pretraining checkpoint", remedy=f"Delete {path}.")
    torch.manual_seed(cfg.torch_seed)
    model = build_model(cfg.architecture())
    if cfg.init_from:
        init_weights(model, cfg.init_from)
    init_rows = dict(model.named_parameters())[_SPARSE_PARAM].detach().clone()
    restore_state(model, make_optimizer(model, cfg), ckpt, init_rows, path)
    model.eval()
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg.architecture()["text_cfg"]["context_length"])
    losses = ckpt["losses"]
    return {"step": ckpt["step"], "loss_mean_last_50": float(np.mean(losses[-50:])),
            **evaluate(model, tokenizer, ckpt["mean"], ckpt["std"], cfg.eval_per_class, cfg.world_seed, cfg.world)}


def parse_args(argv: Sequence[str] | None = None) -> tuple[PretrainConfig, bool, bool]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS))
    known, _ = pre.parse_known_args(argv)
    d = PretrainConfig(**PRESETS[known.preset])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                   help=f"the settings of one committed set of weights (default {DEFAULT_PRESET}); flags override them")
    p.add_argument("--fresh", action="store_true", help="ignore a resume checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--evaluate-checkpoint", action="store_true",
                   help="print zero-shot accuracy and geometry of the resume checkpoint, then exit (no training)")
    p.add_argument("--model-cfg", type=json.loads, default=d.model_cfg,
                   help="open_clip model_cfg as JSON (default: the preset's)")
    p.add_argument("--random-prefix-ids", type=int, nargs=2, default=list(d.random_prefix_ids), metavar=("LOW", "HIGH"))
    for name, value in vars(d).items():
        if name in ("model_cfg", "random_prefix_ids"):
            continue
        p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    a = vars(p.parse_args(argv))
    a.pop("preset")
    fresh, no_progress = a.pop("fresh"), a.pop("no_progress")
    a.pop("evaluate_checkpoint")  # read by main()
    a["random_prefix_ids"] = tuple(a["random_prefix_ids"])
    return PretrainConfig(**a), fresh, no_progress


def main(argv: Sequence[str] | None = None) -> None:
    cfg, fresh, no_progress = parse_args(argv)
    if "--evaluate-checkpoint" in (sys.argv[1:] if argv is None else argv):
        print(json.dumps(evaluate_checkpoint(cfg), indent=2))
        return
    metrics = train(cfg, fresh=fresh, progress=not no_progress)
    print(json.dumps({k: v for k, v in metrics.items() if k != "loss"}, indent=2))


if __name__ == "__main__":
    main()
