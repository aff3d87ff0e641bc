"""Pretrain the small built-in CLIP on generated image-caption pairs (CPU, about 15 minutes).

    python -m noisy_prompt.synthetic.pretrain [--out DIR] [--steps N] [--batch-size B] ...

The result is an open_clip `local-dir:` folder (open_clip_config.json + open_clip_model.safetensors
in fp16), loadable with `open_clip.create_model("local-dir:" + DIR)` and
`open_clip.get_tokenizer("local-dir:" + DIR)`, plus train_config.json (every setting) and
metrics.json (loss curve, zero-shot accuracies, wall time). A run writes a resume checkpoint every
`--checkpoint-every` steps and picks it up when restarted with the same settings.
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

from .captions import CaptionMix, pretraining_caption
from .world import CLASSNAMES, DOWNSTREAM_STYLE, NUM_CLASSES, STYLES, render_scene, sample_scene, scene_rng

DEFAULT_OUT = Path(__file__).resolve().parent / "weights" / "synthetic-clip"
CHECKPOINT_NAME = "resume_checkpoint.pt"

# open_clip keeps architectures as data: this dict is the `model_cfg` of open_clip_config.json.
MODEL_CFG: dict = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}

DEFAULT_STYLE_WEIGHTS = {"plain": 0.3, "dim": 0.12, "blurry": 0.12, "striped": 0.12, "dotted": 0.12, "tinted": 0.22}

# Stream ids of the per-image generators (0 and 1 are the renderer's).
_STYLE_STREAM, _CAPTION_STREAM = 2, 3
_SOT, _EOT = 49406, 49407


@dataclass
class PretrainConfig:
    out: str = str(DEFAULT_OUT)
    steps: int = 800
    batch_size: int = 256
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.1
    world_seed: int = 0
    torch_seed: int = 0
    threads: int = 2
    checkpoint_every: int = 50
    style_weights: dict | None = None
    p_mention_tinted: float = 0.5
    p_mention_other: float = 0.6
    p_random_prefix: float = 0.1
    max_random_prefix: int = 16
    eval_per_class: int = 32
    model_cfg: dict | None = None  # None: MODEL_CFG

    def architecture(self) -> dict:
        return self.model_cfg or MODEL_CFG

    def caption_mix(self) -> CaptionMix:
        p = {s: self.p_mention_other for s in STYLES if s != "plain"}
        p["tinted"] = self.p_mention_tinted
        return CaptionMix(p_mention_style=p)

    def weights(self) -> dict[str, float]:
        w = dict(self.style_weights or DEFAULT_STYLE_WEIGHTS)
        unknown = set(w) - set(STYLES)
        if unknown:
            raise ValueError(f"style_weights: unknown styles {sorted(unknown)}; expected a subset of {list(STYLES)}")
        total = sum(w.values())
        return {s: w.get(s, 0.0) / total for s in STYLES}

    def rebuild_settings(self) -> dict:
        """The settings that determine the weights (resume requires them to match)."""
        d = dict(vars(self))
        for k in ("out", "threads", "checkpoint_every", "eval_per_class"):
            d.pop(k)
        d["style_weights"] = self.weights()
        d["caption_mix"] = self.caption_mix().to_dict()
        d["model_cfg"] = self.architecture()
        return d


# ---------------------------------------------------------------------------------------------
# Data


def pretrain_style(cfg: PretrainConfig, index: int) -> str:
    w = cfg.weights()
    rng = scene_rng(cfg.world_seed, "pretrain", index, _STYLE_STREAM)
    return STYLES[int(rng.choice(len(STYLES), p=[w[s] for s in STYLES]))]


def pretrain_pair(cfg: PretrainConfig, index: int) -> tuple[np.ndarray, str, np.random.Generator]:
    """Image, caption and the caption's generator (for the token prefix) of pretraining pair `index`."""
    scene = sample_scene(cfg.world_seed, "pretrain", index, pretrain_style(cfg, index))
    rng = scene_rng(cfg.world_seed, "pretrain", index, _CAPTION_STREAM)
    return render_scene(scene), pretraining_caption(scene, rng, cfg.caption_mix()), rng


def add_random_prefix(tokens: torch.Tensor, rng: np.random.Generator, max_len: int) -> torch.Tensor:
    """Random tokens between SOT and the caption, so the text tower learns to read past junk
    (prompt learning later puts learned vectors there)."""
    ids = tokens.tolist()
    end = ids.index(_EOT) + 1
    prefix = rng.integers(1, _SOT, size=int(rng.integers(1, max_len + 1))).tolist()
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


def batch(cfg: PretrainConfig, step: int, tokenizer, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs [step * B, (step + 1) * B): a pure function of the step, so a resumed run sees the same data."""
    start = step * cfg.batch_size
    pairs = [pretrain_pair(cfg, i) for i in range(start, start + cfg.batch_size)]
    texts = tokenizer([caption for _, caption, _ in pairs])
    for row, (_, _, rng) in enumerate(pairs):
        if rng.random() < cfg.p_random_prefix:
            texts[row] = add_random_prefix(texts[row], rng, cfg.max_random_prefix)
    return to_tensor([img for img, _, _ in pairs], mean, std), texts


def image_stats(cfg: PretrainConfig, n: int = 2048) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of pretraining images (from a stream the training never reads)."""
    arr = np.stack([render_scene(sample_scene(cfg.world_seed, "stats", i, pretrain_style(cfg, i))) for i in range(n)])
    x = arr.reshape(-1, 3).astype(np.float64) / 255.0
    return [round(float(v), 4) for v in x.mean(0)], [round(float(v), 4) for v in x.std(0)]


# ---------------------------------------------------------------------------------------------
# Model, optimisation, evaluation


def build_model(model_cfg: dict = MODEL_CFG):
    from open_clip.model import CLIP

    return CLIP(**model_cfg)


def make_optimizer(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    # Usual CLIP practice: no weight decay on gains, biases, embeddings and the temperature.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = p.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("class_embedding")
        (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)


def lr_at(cfg: PretrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def encode_images(model, images: Sequence[np.ndarray], mean, std, chunk: int = 512) -> torch.Tensor:
    feats = [model.encode_image(to_tensor(images[i : i + chunk], mean, std), normalize=True) for i in range(0, len(images), chunk)]
    return torch.cat(feats)


@torch.no_grad()
def class_text_features(model, tokenizer, template: str, classnames: Sequence[str] = CLASSNAMES) -> torch.Tensor:
    return model.encode_text(tokenizer([template.format(c) for c in classnames]), normalize=True)


def zero_shot_accuracy(model, tokenizer, images, labels, template: str, mean, std) -> float:
    img = encode_images(model, images, mean, std)
    pred = (img @ class_text_features(model, tokenizer, template).T).argmax(-1)
    return float((pred == torch.as_tensor(labels)).float().mean())


def evaluate(model, tokenizer, mean, std, per_class: int, world_seed: int = 0) -> dict[str, float]:
    """Zero-shot top-1 on the downstream test split, with the plain and the style-naming template."""
    from .world import render

    idx = range(per_class * NUM_CLASSES)
    labels = [i % NUM_CLASSES for i in idx]
    down = [render(world_seed, "test", i, DOWNSTREAM_STYLE) for i in idx]
    plain = [render(world_seed, "test", i, "plain") for i in idx]
    return {
        f"zero_shot_{DOWNSTREAM_STYLE}_test_plain_template": zero_shot_accuracy(model, tokenizer, down, labels, "a photo of a {}.", mean, std),
        f"zero_shot_{DOWNSTREAM_STYLE}_test_style_template": zero_shot_accuracy(
            model, tokenizer, down, labels, "a " + DOWNSTREAM_STYLE + " photo of a {}.", mean, std
        ),
        "zero_shot_plain_test_plain_template": zero_shot_accuracy(model, tokenizer, plain, labels, "a photo of a {}.", mean, std),
    }


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
    ckpt_path = out / CHECKPOINT_NAME
    settings = cfg.rebuild_settings()

    torch.manual_seed(cfg.torch_seed)
    model = build_model(cfg.architecture())
    optimizer = make_optimizer(model, cfg)
    start, losses, wall = 0, [], 0.0
    mean, std = None, None
    if ckpt_path.exists() and not fresh:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["settings"] != settings:
            raise SystemExit(
                f"{ckpt_path} was written with other settings; rerun with the same settings to resume, "
                f"or pass --fresh to start over"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start, losses, wall, mean, std = ckpt["step"], ckpt["losses"], ckpt["wall_s"], ckpt["mean"], ckpt["std"]
        print(f"resuming from {ckpt_path} at step {start}", file=sys.stderr)
    if mean is None:
        mean, std = image_stats(cfg)

    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg.architecture()["text_cfg"]["context_length"])
    loss_fn = ClipLoss()
    model.train()
    t0 = time.time() - wall
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="pretrain", disable=not progress)
    for step in bar:
        for g in optimizer.param_groups:
            g["lr"] = lr_at(cfg, step)
        images, texts = batch(cfg, step, tokenizer, mean, std)
        img_f, txt_f, scale = model(images, texts)
        loss = loss_fn(img_f, txt_f, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", scale=f"{scale.item():.1f}")
        done = step + 1
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            _atomic_torch_save(
                {"settings": settings, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "step": done, "losses": losses, "wall_s": time.time() - t0, "mean": mean, "std": std},
                ckpt_path,
            )
    train_wall = time.time() - t0

    model.eval()
    save_local_dir(model, out, mean, std, cfg.architecture())
    loaded, loaded_tok = load_local_dir(out)
    metrics = {
        "train_wall_s": round(train_wall, 1),
        "loss": loss_summary(losses),
        "eval_per_class": cfg.eval_per_class,
        "downstream_style": DOWNSTREAM_STYLE,
        **evaluate(loaded, loaded_tok, mean, std, cfg.eval_per_class, cfg.world_seed),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "num_params": sum(p.numel() for p in model.parameters()),
    }
    (out / "train_config.json").write_text(json.dumps({**settings, "mean": mean, "std": std}, indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if ckpt_path.exists():
        ckpt_path.unlink()  # the finished weights replace it; keeps ~100 MB out of the package
    return metrics


def parse_args(argv: Sequence[str] | None = None) -> tuple[PretrainConfig, bool, bool]:
    d = PretrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=d.out, help="output folder (default: the committed weights)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--world-seed", type=int, default=d.world_seed)
    p.add_argument("--torch-seed", type=int, default=d.torch_seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--style-weights", type=json.loads, default=None,
                   help='JSON dict, e.g. \'{"plain": 0.3, "tinted": 0.2, ...}\'')
    p.add_argument("--p-mention-tinted", type=float, default=d.p_mention_tinted)
    p.add_argument("--p-mention-other", type=float, default=d.p_mention_other)
    p.add_argument("--p-random-prefix", type=float, default=d.p_random_prefix)
    p.add_argument("--max-random-prefix", type=int, default=d.max_random_prefix)
    p.add_argument("--eval-per-class", type=int, default=d.eval_per_class)
    p.add_argument("--model-cfg", type=json.loads, default=None, help="open_clip model_cfg as JSON (default: MODEL_CFG)")
    p.add_argument("--fresh", action="store_true", help="ignore a resume checkpoint in --out")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = PretrainConfig(
        out=a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup_steps=a.warmup_steps,
        weight_decay=a.weight_decay, world_seed=a.world_seed, torch_seed=a.torch_seed, threads=a.threads,
        checkpoint_every=a.checkpoint_every, style_weights=a.style_weights, p_mention_tinted=a.p_mention_tinted,
        p_mention_other=a.p_mention_other, p_random_prefix=a.p_random_prefix, max_random_prefix=a.max_random_prefix,
        eval_per_class=a.eval_per_class, model_cfg=a.model_cfg,
    )
    return cfg, a.fresh, a.no_progress


def main(argv: Sequence[str] | None = None) -> None:
    cfg, fresh, no_progress = parse_args(argv)
    metrics = train(cfg, fresh=fresh, progress=not no_progress)
    print(json.dumps({k: v for k, v in metrics.items() if k != "loss"}, indent=2))


if __name__ == "__main__":
    main()
