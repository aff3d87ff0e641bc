"""`python -m noisy_prompt.bench dpsep`: training steps per second of our DP-SEP path against the
CoOp/Dassl-style reference loop, in one process, on the same model.

ours      = cached image features (no image encoder in the step) + text sequence cut at the longest EOT
reference = encode every image batch with the frozen image encoder at every step + full context length
Both run the identical DP-SEP loss and optimiser step. A benchmark, not a test: it prints numbers.
"""
from __future__ import annotations

import argparse
import time

import torch

from noisy_prompt.methods.dpsep import DPSEP

BACKBONES = {
    "synthetic": {"model": "builtin:synthetic-clip", "pretrained": None, "allow_random": False, "name": "synthetic"},
    "vit_b32": {"model": "ViT-B-32-quickgelu", "pretrained": None, "allow_random": True, "name": "vit_b32 (random init)"},
    "vit_b16": {"model": "ViT-B-16-quickgelu", "pretrained": None, "allow_random": True, "name": "vit_b16 (random init)"},
    "rn50": {"model": "RN50-quickgelu", "pretrained": None, "allow_random": True, "name": "rn50 (random init)"},
}


def _steps_per_second(module, opt, batches, steps, warmup, device) -> float:
    use_amp = device.type == "cuda"

    def step(x, y):
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            loss = module.losses(x, y)["train/loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        module.derangement.on_step()

    for i in range(warmup):
        step(*batches[i % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        step(*batches[i % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def bench_dpsep(backbone: str, num_classes: int, batch_size: int, steps: int, warmup: int, device: str) -> dict:
    dev = torch.device(device)
    names = [f"class {i}" for i in range(num_classes)]
    module = DPSEP(backbone=BACKBONES[backbone], classnames=names, n_ctx=16, input="features", max_epochs=50).to(dev)
    module.train()
    size = module.clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    gen = torch.Generator().manual_seed(0)
    images = [torch.randn(batch_size, 3, size, size, generator=gen).to(dev) for _ in range(2)]
    labels = [torch.randint(0, num_classes, (batch_size,), generator=gen).to(dev) for _ in range(2)]
    with torch.no_grad():
        feats = [module.clip.visual(x) for x in images]  # what the feature cache holds
    opt = torch.optim.SGD([module.ctx, module.ctx_neg], lr=0.002, momentum=0.9)

    module.input, module.prompt_encoder.cut_to_eot = "features", True
    full_len = module.prompt_encoder.context_length
    cut_len = int(module.prompt_encoder.pool_idx.max()) + 1
    ours = _steps_per_second(module, opt, list(zip(feats, labels)), steps, warmup, dev)
    module.input, module.prompt_encoder.cut_to_eot = "images", False
    ref = _steps_per_second(module, opt, list(zip(images, labels)), steps, warmup, dev)
    return {"backbone": BACKBONES[backbone]["name"], "classes": num_classes, "batch": batch_size,
            "text_len_ours": cut_len, "text_len_ref": full_len, "ours_steps_s": ours, "ref_steps_s": ref,
            "ratio": ours / ref}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m noisy_prompt.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", choices=["dpsep"])
    p.add_argument("--backbones", nargs="+", default=["synthetic", "vit_b32"], choices=sorted(BACKBONES))
    p.add_argument("--classes", type=int, nargs="+", default=[42, 10],
                   help="number of classes per backbone (the text tower runs on 2C prompts per step)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, nargs="+", default=[20, 3])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    print(f"device={args.device} torch threads={torch.get_num_threads()}")
    print(f"{'backbone':24s} {'C':>4s} {'B':>3s} {'len ours/ref':>12s} {'ours it/s':>10s} {'ref it/s':>9s} {'ratio':>7s}")
    for i, bb in enumerate(args.backbones):
        c = args.classes[min(i, len(args.classes) - 1)]
        n = args.steps[min(i, len(args.steps) - 1)]
        r = bench_dpsep(bb, c, args.batch_size, n, args.warmup, args.device)
        print(f"{r['backbone']:24s} {c:4d} {args.batch_size:3d} {r['text_len_ours']:>5d}/{r['text_len_ref']:<6d} "
              f"{r['ours_steps_s']:10.2f} {r['ref_steps_s']:9.2f} {r['ratio']:6.1f}x", flush=True)


if __name__ == "__main__":
    main()
