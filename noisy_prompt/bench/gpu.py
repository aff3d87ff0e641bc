"""The device benchmark: `make bench-gpu` (= `python -m noisy_prompt.bench gpu`), under 5 minutes on one GPU.

Prints, on CUDA:
1. the DP-SEP prompt-path table (dassl / cut / prefix; ViT-B/32 and RN50 random weights; C = 37, 102,
   1000, all classes run for real) in 16-mixed and bf16-mixed;
2. TANGO's training throughput on ViT-B/16 (the module's own training step: TAC over clean + mixed images,
   backward through the vision tower, SGD): images/s and model FLOPs utilisation (FLOPs counted by
   torch's FlopCounterMode on one step, over the device's dense fp16/bf16 peak);
3. the blocked k-NN purification time at N = 50,000 x 512 (`methods/tango/neighbours.py`: the top-k
   search alone, and the whole `purify` with 100 classes x 40 anchors);
4. a projection of the GPU-hours of the DP-SEP Table 1 sweep (sweeps/dpsep_table1.yaml, 378 runs) from
   the measured prefix-path step times and the measured image-encoder throughput.

`--device cpu --tiny` is a smoke mode (synthetic CLIP, few classes, small N) that a fast test runs, so
the script is known to work before a device is lent. Random weights: timings do not depend on them.
"""
from __future__ import annotations

import argparse
import math
import time
from types import SimpleNamespace

import torch

from noisy_prompt.bench import prompt as bench

# Dense fp16/bf16 tensor-core peaks (FLOP/s) by device-name fragment; --peak-tflops overrides.
PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
               "A10": 125.0, "V100": 125.0, "T4": 65.0}

# DP-SEP Table 1 (sweeps/dpsep_table1.yaml): 7 datasets x {ptnl, dpsep} x 9 noise settings x 3 seeds.
# Classes and test-set sizes of the CoOp splits; 16 shots, 50 epochs, batch 32, one cached view per epoch.
TABLE1 = {"imagenet": (1000, 50000), "caltech101": (100, 2465), "oxford_pets": (37, 3669),
          "oxford_flowers": (102, 2463), "food101": (101, 30300), "dtd": (47, 1692), "ucf101": (101, 3783)}
TABLE1_NOISE, TABLE1_SEEDS, TABLE1_METHODS = 9, 3, ("ptnl", "dpsep")
SHOTS, EPOCHS, BATCH = 16, 50, 32


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def peak_flops(dev: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override * 1e12, f"{override:g} TFLOP/s (given)"
    if dev.type != "cuda":
        return None, "unknown (not a CUDA device)"
    name = torch.cuda.get_device_name(dev)
    for frag, tf in PEAK_TFLOPS.items():
        if frag in name:
            return tf * 1e12, f"{tf:g} TFLOP/s dense fp16/bf16 ({name})"
    return None, f"unknown for {name} (pass --peak-tflops)"


# ---- 1. prompt paths ------------------------------------------------------------------------------
def prompt_tables(cfg, dev) -> dict:
    """Prefix-path step times per (backbone, method, C), for the projection; prints one table per precision."""
    times = {}
    for precision in cfg.precisions:
        rows = []
        for bb in cfg.prompt_backbones:
            bundle = bench.build_clip(bb)
            for c in cfg.classes:
                r = bench.bench_prompt_paths(bundle, bb, c, None, BATCH, cfg.steps, cfg.warmup, str(dev), precision)
                rows.append(r)
                times[(precision, bb, "dpsep", c)] = r["paths"]["prefix"].step_s
                if bb == cfg.sweep_backbone:
                    ptnl = bench.bench_prompt_paths(bundle, bb, c, None, BATCH, cfg.steps, cfg.warmup, str(dev),
                                                    precision, paths=("prefix",), negative=False)
                    times[(precision, bb, "ptnl", c)] = ptnl["paths"]["prefix"].step_s
            del bundle
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        print(bench.format_prompt_table(rows, f"\n[1] DP-SEP training step, device={dev}, precision={precision}"),
              flush=True)
    return times


def image_encoder_throughput(cfg, dev, precision: str) -> float:
    """Images/s of the frozen image encoder of the sweep's backbone (what fills the feature cache)."""
    bundle = bench.build_clip(cfg.sweep_backbone)
    visual = bundle.model.visual.to(dev).eval()
    size = visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    x = torch.randn(cfg.encode_batch, 3, size, size, device=dev)
    dtype = bench.PRECISIONS[precision]
    with torch.no_grad(), torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for _ in range(cfg.warmup):
            visual(x)
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(cfg.steps):
            visual(x)
        _sync(dev)
    return cfg.encode_batch * cfg.steps / (time.perf_counter() - t0)


# ---- 2. TANGO ---------------------------------------------------------------------------------------
def tango_throughput(cfg, dev, precision: str, peak: float | None) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from noisy_prompt.methods.tango.module import PurifiedLabels, Tango

    bundle = bench.build_clip(cfg.tango_backbone)
    names = bench.class_names(cfg.tango_classes)
    module = Tango(backbone=bench.BACKBONES[cfg.tango_backbone], classnames=names, clip_bundle=bundle, max_epochs=1,
                   anchors={"source": "templates", "k": cfg.tango_anchors_k}).to(dev)
    module.train()
    n, b = cfg.tango_batch * 4, cfg.tango_batch
    gen = torch.Generator().manual_seed(0)
    given = torch.randint(0, len(names), (n,), generator=gen)
    module.purified = PurifiedLabels(epoch=0, given=given.to(dev), true=None,
                                     clean_mask=(torch.rand(n, generator=gen) < 0.6).to(dev),
                                     soft_labels=torch.nn.functional.one_hot(given, len(names)).float().to(dev),
                                     q_given=torch.ones(n, device=dev))
    size = module.clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    batches = [{"x": torch.randn(b, 3, size, size, generator=gen).to(dev), "label": given[i * b:(i + 1) * b].to(dev),
                "index": torch.arange(i * b, (i + 1) * b, device=dev)} for i in range(2)]
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=5e-4, momentum=0.9, weight_decay=5e-4)
    # self.log without a trainer only warns
    step = bench.amp_step(opt, dev, precision, lambda batch: module.training_step(batch, 0))

    for i in range(cfg.warmup):
        step(batches[i % 2])
    counter = FlopCounterMode(display=False)
    with counter:
        step(batches[0])
    flops = counter.get_total_flops()
    _sync(dev)
    t0 = time.perf_counter()
    for i in range(cfg.steps):
        step(batches[i % 2])
    _sync(dev)
    t = (time.perf_counter() - t0) / cfg.steps
    del module, bundle
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {"precision": precision, "batch": b, "step_s": t, "images_s": b / t, "tflop_step": flops / 1e12,
            "mfu": (flops / t / peak) if peak else None}


# ---- 3. k-NN purification ---------------------------------------------------------------------------
def knn_time(cfg, dev) -> dict:
    from noisy_prompt.methods.tango.neighbours import blocked_topk
    from noisy_prompt.methods.tango.purification import purify

    gen = torch.Generator().manual_seed(0)
    n, d, c, k = cfg.knn_n, cfg.knn_d, cfg.knn_classes, min(200, cfg.knn_n - 1)
    feats = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1).to(dev)
    labels = torch.randint(0, c, (n,), generator=gen).to(dev)
    anchors = torch.nn.functional.normalize(torch.randn(c * 40, d, generator=gen), dim=-1).to(dev)
    anchor_labels = torch.arange(c).repeat_interleave(40).to(dev)
    blocked_topk(feats[:4096], feats, k, 4096)  # warm-up (kernels, allocator)
    _sync(dev)
    t0 = time.perf_counter()
    blocked_topk(feats, feats, k, 4096, exclude_self=True)
    _sync(dev)
    t_topk = time.perf_counter() - t0
    t0 = time.perf_counter()
    purify(feats, labels, anchors, anchor_labels, c, k=k, block_size=4096)
    _sync(dev)
    return {"N": n, "D": d, "k": k, "C": c, "topk_s": t_topk, "purify_s": time.perf_counter() - t0}


# ---- 4. projection ----------------------------------------------------------------------------------
def _interp(points: dict[int, float], c: int) -> float:
    """Step time at C classes: piecewise linear in C between measured points (the text tower's work
    grows linearly with the number of prompts); above the largest measured C, proportional to C from it
    (an upper bound: fixed costs are scaled too); below the smallest, that point's time (also an upper
    bound). Never extrapolates a noisy slope, so the result stays positive."""
    xs = sorted(points)
    if c >= xs[-1]:
        return points[xs[-1]] * c / xs[-1]
    if c <= xs[0]:
        return points[xs[0]]
    lo, hi = next((a, b) for a, b in zip(xs, xs[1:]) if a <= c <= b)
    return points[lo] + (points[hi] - points[lo]) * (c - lo) / (hi - lo)


def project_table1(times: dict, precision: str, backbone: str, enc_images_s: float) -> tuple[list[str], float]:
    lines = [f"{'dataset':15s} {'C':>5s} {'steps/run':>9s} {'ptnl s/step':>11s} {'dpsep s/step':>12s} "
             f"{'train h':>8s} {'encode h':>8s}"]
    total_train = total_enc = 0.0
    for name, (c, n_test) in TABLE1.items():
        steps = EPOCHS * math.ceil(SHOTS * c / BATCH)
        t = {m: _interp({cc: v for (p, bb, mm, cc), v in times.items() if p == precision and bb == backbone and mm == m}, c)
             for m in TABLE1_METHODS}
        train_h = sum(steps * t[m] for m in TABLE1_METHODS) * TABLE1_NOISE * TABLE1_SEEDS / 3600
        # The feature cache is keyed by image (not label), so the 18 runs of a (dataset, seed) share it:
        # 50 views of the 16-shot train split + the test split once per seed.
        enc_h = TABLE1_SEEDS * (EPOCHS * SHOTS * c + n_test) / enc_images_s / 3600
        total_train += train_h
        total_enc += enc_h
        lines.append(f"{name:15s} {c:5d} {steps:9d} {t['ptnl']:11.4f} {t['dpsep']:12.4f} {train_h:8.2f} {enc_h:8.2f}")
    return lines, total_train + total_enc


def main(argv: list[str] | None = None, prog: str = "python -m noisy_prompt.bench gpu") -> None:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="smoke mode: synthetic CLIP, few classes, small N")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: by device name)")
    p.add_argument("--skip", nargs="*", default=[], choices=["prompt", "tango", "knn", "projection"])
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what Lightning runs would use with 'high' matmul precision
        torch.backends.cudnn.benchmark = True
    if args.tiny:
        cfg = SimpleNamespace(precisions=["32"] if dev.type == "cpu" else ["16-mixed", "bf16-mixed"],
                              prompt_backbones=["synthetic"], sweep_backbone="synthetic", classes=[4, 8], steps=1,
                              warmup=0, encode_batch=8, tango_backbone="synthetic", tango_classes=4, tango_batch=4,
                              tango_anchors_k=2, knn_n=2000, knn_d=64, knn_classes=10)
    else:
        cfg = SimpleNamespace(precisions=["16-mixed", "bf16-mixed"], prompt_backbones=["vit_b32", "rn50"],
                              sweep_backbone="vit_b32", classes=[37, 102, 1000], steps=10, warmup=3, encode_batch=512,
                              tango_backbone="vit_b16", tango_classes=100, tango_batch=64, tango_anchors_k=40,
                              knn_n=50000, knn_d=512, knn_classes=100)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"device={dev} ({name}) torch={torch.__version__} tiny={args.tiny}", flush=True)
    t_start = time.perf_counter()
    peak, peak_txt = peak_flops(dev, args.peak_tflops)

    times = {}
    if "prompt" not in args.skip:
        times = prompt_tables(cfg, dev)
    if "tango" not in args.skip:
        print(f"\n[2] TANGO training step, {cfg.tango_backbone} (random init), {cfg.tango_classes} classes, "
              f"batch {cfg.tango_batch} (+ as many mixed images in the same forward); peak {peak_txt}")
        for precision in cfg.precisions:
            r = tango_throughput(cfg, dev, precision, peak)
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
            print(f"  {precision:10s} {r['step_s'] * 1000:8.1f} ms/step {r['images_s']:9.1f} images/s "
                  f"{r['tflop_step']:7.3f} TFLOP/step  MFU {mfu}", flush=True)
    if "knn" not in args.skip:
        r = knn_time(cfg, dev)
        print(f"\n[3] blocked k-NN, N={r['N']} x D={r['D']}, k={r['k']}, block 4096, fp32: top-k search "
              f"{r['topk_s']:.2f} s; whole purify (C={r['C']}, 40 anchors/class) {r['purify_s']:.2f} s", flush=True)
    if "projection" not in args.skip and times:
        precision = "bf16-mixed" if "bf16-mixed" in cfg.precisions else cfg.precisions[0]
        enc = image_encoder_throughput(cfg, dev, precision)
        lines, total = project_table1(times, precision, cfg.sweep_backbone, enc)
        print(f"\n[4] DP-SEP Table 1 projection (378 runs = 7 datasets x 2 methods x 9 noise x 3 seeds), "
              f"{cfg.sweep_backbone}, {precision}, prefix path; image encoder {enc:.0f} images/s")
        print("\n".join("  " + line for line in lines))
        print(f"  total {total:.2f} GPU-hours (one GPU; step time interpolated linearly in C between the "
              "measured C; image decoding/augmentation, evaluation passes and process start-up not included)")
    print(f"\nbench-gpu wall time {time.perf_counter() - t_start:.0f} s", flush=True)
