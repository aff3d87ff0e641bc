"""`python -m noisy_prompt.bench prompt`: the DP-SEP prompt paths (not a test: it prints numbers).

Steps/s and memory of one DP-SEP training step for the three text paths, in one process, on the same
model: `dassl` = every image batch through the frozen image encoder + the full 77-token text sequence
(the CoOp/Dassl loop); `cut` = cached image features + the sequence cut at the longest EOT; `prefix` =
cached features + [SOS]+ctx once per branch and the class-name suffixes batched over classes
(`noisy_prompt/clip/prefix_forward.py`). All three run the identical DP-SEP loss and optimiser step and
are exact (parity: tests/clip/test_prompt_prefix.py). `--paths cut dassl` gives the two-way comparison.
Shared helpers of the other benchmarks (class names, random-weight backbones, the timed optimiser step)
live here too; `noisy_prompt.bench.gpu` imports them (one direction only).
"""
from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass

import torch

from noisy_prompt.methods.dpsep import DPSEP

BACKBONES = {
    "synthetic": {"model": "builtin:synthetic-clip", "pretrained": None, "allow_random": False, "name": "synthetic"},
    "vit_b32": {"model": "ViT-B-32-quickgelu", "pretrained": None, "allow_random": True, "name": "vit_b32 (random init)"},
    "vit_b16": {"model": "ViT-B-16-quickgelu", "pretrained": None, "allow_random": True, "name": "vit_b16 (random init)"},
    "rn50": {"model": "RN50-quickgelu", "pretrained": None, "allow_random": True, "name": "rn50 (random init)"},
}
PATHS = ("dassl", "cut", "prefix")
PRECISIONS = {"32": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}

# Class names are drawn from these words (1-4 words each, fixed seed) so that, like real datasets
# ("american pit bull terrier", "bishop of llandaff"), names have different token lengths.
WORDS = ("dog cat bird fish tree flower car plane ship house red blue green black white golden spotted "
         "great small long wild common northern american european bull terrier retriever shepherd eagle "
         "owl shark ray lily rose orchid daisy tulip bishop of the mountain river sea island bread soup "
         "cake salad pizza dance jump swim ride playing").split()


def class_names(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) for _ in range(n)]


def build_clip(backbone: str):
    from noisy_prompt.clip import create_clip

    cfg = {k: v for k, v in BACKBONES[backbone].items() if k != "name"}
    torch.manual_seed(0)
    return create_clip(**cfg)


@dataclass
class Measure:
    step_s: float  # wall seconds per step
    mem_mb: float  # see `memory_kind`
    memory_kind: str
    cpu_s: float = float("nan")  # process CPU seconds per step: on a shared CPU, the work done, whatever
    # the scheduler gave us (wall time there measures the contention as much as the code)


class _SavedTensorBytes:
    """CPU stand-in for a peak-memory counter: bytes of the distinct storages autograd saves for the
    backward pass during one step (the activation memory, which is what differs between the paths),
    not counting parameters."""

    def __init__(self, params):
        self.skip = {p.untyped_storage().data_ptr() for p in params}
        self.seen: dict[int, int] = {}

    def pack(self, t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.skip and ptr not in self.seen:
            self.seen[ptr] = t.untyped_storage().nbytes()
        return t

    def total_mb(self) -> float:
        return sum(self.seen.values()) / 2**20


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, batches, steps: int, warmup: int, dev: torch.device, params) -> Measure:
    """Mean seconds per `step(x, y)` over `steps` steps after `warmup` steps, and the step's memory
    (CUDA: peak allocated during the timed steps above what was held before them; CPU: autograd-saved
    activations of the first timed step, counted by a hook that costs microseconds per saved tensor)."""
    for i in range(warmup):
        step(*batches[i % len(batches)])
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    counter = _SavedTensorBytes(params)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(max(steps, 1)):
        if i == 0 and dev.type != "cuda":
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
                step(*batches[i % len(batches)])
        else:
            step(*batches[i % len(batches)])
    _sync(dev)
    elapsed = (time.perf_counter() - t0) / max(steps, 1)
    cpu = (time.process_time() - c0) / max(steps, 1)
    if dev.type == "cuda":
        return Measure(elapsed, (torch.cuda.max_memory_allocated(dev) - base) / 2**20, "CUDA peak allocated above baseline")
    return Measure(elapsed, counter.total_mb(), "autograd-saved activations (CPU)", cpu)


def amp_step(opt, dev: torch.device, precision: str, compute_loss):
    """One optimiser step per call of the returned function, its arguments passed to `compute_loss`, under
    autocast at `precision` (a loss scaler for fp16), as Lightning's trainer steps at that precision."""
    dtype = PRECISIONS[precision]
    scaler = torch.amp.GradScaler(dev.type) if dtype is torch.float16 else None

    def step(*args):
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = compute_loss(*args)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    return step


def make_step(module, opt, dev: torch.device, precision: str = "32"):
    optimise = amp_step(opt, dev, precision, lambda x, y: module.losses(x, y)["train/loss"])

    def step(x, y):
        optimise(x, y)
        if module.negative:
            module.derangement.on_step()

    return step


def _set_path(module, path: str) -> None:
    enc = module.prompt_encoder
    module.input = "images" if path == "dassl" else "features"
    enc.path = "full" if path == "dassl" else enc.resolve_path(path)


def bench_prompt_paths(bundle, backbone: str, num_classes: int, subset: int | None, batch_size: int, steps: int,
                       warmup: int, device: str, precision: str = "32", paths=PATHS, negative: bool = True,
                       dassl_steps: int | None = None) -> dict:
    """One DP-SEP module on `subset` (default: all) of `num_classes` class names; per path the step time
    and memory. With a subset S < C, times are scaled to C as fixed + (t - fixed) * C / S, where fixed
    is the image-encoder time of the `dassl` step (measured here; 0 for the other paths): the text
    tower's cost is linear in the number of prompts. Memory is scaled by C / S."""
    dev = torch.device(device)
    names = class_names(num_classes)
    run_names = names[:subset] if subset and subset < num_classes else names
    s = len(run_names)
    module = DPSEP(backbone=BACKBONES[backbone], classnames=run_names, n_ctx=16, input="features", max_epochs=50,
                   negative=negative, clip_bundle=bundle).to(dev)
    module.train()
    size = module.clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    gen = torch.Generator().manual_seed(0)
    images = [torch.randn(batch_size, 3, size, size, generator=gen).to(dev) for _ in range(2)]
    labels = [torch.randint(0, s, (batch_size,), generator=gen).to(dev) for _ in range(2)]
    with torch.no_grad():
        feats = [module.clip.visual(x) for x in images]  # what the feature cache holds
        _sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        module.clip.visual(images[0])
        _sync(dev)
        t_img, c_img = time.perf_counter() - t0, time.process_time() - c0
    params = [module.ctx] + ([module.ctx_neg] if negative else [])
    opt = torch.optim.SGD(params, lr=0.002, momentum=0.9)
    step = make_step(module, opt, dev, precision)
    enc = module.prompt_encoder
    suffix_lens = (enc.pool_idx - enc.n_ctx).tolist()  # class tokens + '.' + EOT
    out = {"backbone": BACKBONES[backbone]["name"], "C": num_classes, "S": s, "B": batch_size,
           "suffix_tokens": (min(suffix_lens), sum(suffix_lens) / len(suffix_lens), max(suffix_lens)),
           "len": {"dassl": enc.context_length, "cut": int(enc.pool_idx.max()) + 1,
                   "prefix": int(enc.pool_idx.max()) + 1 - (1 + enc.n_ctx)},
           "t_img": t_img, "c_img": c_img, "paths": {}}
    all_params = list(module.clip.parameters()) + params
    for path in paths:
        _set_path(module, path)
        batches = list(zip(images if path == "dassl" else feats, labels))
        n = dassl_steps if (path == "dassl" and dassl_steps is not None) else steps
        m = time_steps(step, batches, n, warmup, dev, all_params)
        fixed, cfixed = (t_img, c_img) if path == "dassl" else (0.0, 0.0)
        scale = num_classes / s
        out["paths"][path] = Measure(fixed + (m.step_s - fixed) * scale, m.mem_mb * scale, m.memory_kind,
                                     cfixed + (m.cpu_s - cfixed) * scale)
    _set_path(module, "prefix")
    return out


def format_prompt_table(rows: list[dict], title: str, timer: str = "wall") -> str:
    """The ratio table; `timer="cpu"` uses process CPU seconds instead of wall seconds."""
    attr = "cpu_s" if timer == "cpu" else "step_s"
    title = f"{title} [{'process CPU' if timer == 'cpu' else 'wall'} seconds per step]"
    lines = [title,
             f"{'backbone':22s} {'C':>5s} {'run on':>6s} {'len cut/sfx':>11s} {'dassl s/step':>12s} {'cut s/step':>10s} {'prefix s/step':>13s} "
             f"{'dassl MB':>9s} {'cut MB':>8s} {'prefix MB':>9s} {'prefix/cut':>10s} {'prefix/dassl':>12s}"]
    notes = set()
    for r in rows:
        p = r["paths"]
        get = lambda k, a: getattr(p[k], a) if k in p else float("nan")  # noqa: E731
        ratio = lambda a, b: (get(b, attr) / get(a, attr)) if a in p and b in p else float("nan")  # noqa: E731
        lines.append(f"{r['backbone']:22s} {r['C']:5d} {r['S']:6d} {r['len']['cut']:>6d}/{r['len']['prefix']:<4d} {get('dassl', attr):12.3f} {get('cut', attr):10.3f} "
                     f"{get('prefix', attr):13.3f} {get('dassl', 'mem_mb'):9.0f} {get('cut', 'mem_mb'):8.0f} "
                     f"{get('prefix', 'mem_mb'):9.0f} {ratio('prefix', 'cut'):9.2f}x {ratio('prefix', 'dassl'):11.1f}x")
        notes.update(m.memory_kind for m in p.values())
        if r["S"] < r["C"]:
            notes.add(f"C={r['C']} run on a subset of S={r['S']} classes, times scaled as "
                      "img_enc + (t - img_enc) * C/S (img_enc only for dassl), memory * C/S")
        lo, mean, hi = r["suffix_tokens"]
        notes.add(f"len: tokens per prompt of the cut path / of the prefix path's batched suffix (the shared "
                  f"[SOS]+16 ctx run once per branch); dassl runs {r['len']['dassl']}")
        notes.add(f"C={r['C']}: class-name suffixes (name + '.' + EOT) {lo}-{hi} tokens, mean {mean:.1f}")
    lines += [f"  note: {n}" for n in sorted(notes)]
    return "\n".join(lines)


def rescale(r: dict, num_classes: int) -> dict:
    """A measurement on S classes restated for C classes (the rule of `bench_prompt_paths`)."""
    f = num_classes / r["C"]

    def scaled(k: str, m: Measure) -> Measure:
        t, c = (r["t_img"], r["c_img"]) if k == "dassl" else (0.0, 0.0)
        return Measure(t + (m.step_s - t) * f, m.mem_mb * f, m.memory_kind, c + (m.cpu_s - c) * f)

    paths = {k: scaled(k, m) for k, m in r["paths"].items()}
    return {**r, "C": num_classes, "paths": paths}


def run_prompt(args) -> list[dict]:
    rows = []
    dev = torch.device(args.device)
    for bb in args.backbones:
        bundle = build_clip(bb)
        done: dict[int, dict] = {}
        for c in args.classes:
            subset = args.subset if (args.subset and c > args.subset) else None
            s = subset or c
            # class_names(C)[:S] == class_names(S) (same seeded draw): a subset of the size of a C already
            # measured is that very measurement, restated for C.
            if s in done and done[s]["S"] == s:
                r = rescale(done[s], c)
            else:
                r = bench_prompt_paths(bundle, bb, c, subset, args.batch_size, args.steps, args.warmup, args.device,
                                       args.precision, paths=args.paths, dassl_steps=args.dassl_steps)
                done[s] = r if r["C"] == s else rescale(r, s)
            rows.append(r)
            p = r["paths"]
            print(f"  {r['backbone']} C={c} (run on {r['S']}): " + ", ".join(
                f"{k} {v.step_s:.3f} s/step (cpu {v.cpu_s:.3f}) {v.mem_mb:.0f} MB" for k, v in p.items()), flush=True)
        del bundle
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    title = (f"DP-SEP training step (2C prompts, batch {args.batch_size}, n_ctx 16), device={args.device}, "
             f"precision={args.precision}, torch threads={torch.get_num_threads()}")
    print(format_prompt_table(rows, title))
    if dev.type == "cpu":
        print(format_prompt_table(rows, title, timer="cpu"))
    return rows


def main(argv: list[str] | None = None, prog: str = "python -m noisy_prompt.bench prompt") -> None:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=None, choices=sorted(BACKBONES))
    p.add_argument("--classes", type=int, nargs="+", default=None,
                   help="numbers of classes (the text tower runs on 2C prompts per DP-SEP step)")
    p.add_argument("--subset", type=int, default=None,
                   help="run C above this on a class subset of this size, scaled up (stated in the output)")
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--precision", default="32", choices=sorted(PRECISIONS))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=2, help="timed steps per path")
    p.add_argument("--dassl-steps", type=int, default=None,
                   help="timed steps of the (slow) dassl path (default: --steps on CUDA, 1 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 1 on CUDA, 0 on CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    print(f"device={args.device} torch threads={torch.get_num_threads()}")
    on_cpu = torch.device(args.device).type == "cpu"
    if args.warmup is None:
        args.warmup = 0 if on_cpu else 1
    if args.dassl_steps is None and on_cpu:
        args.dassl_steps = 1  # one dassl step at C=102 is minutes on a 2-core CPU
    args.backbones = args.backbones or ["vit_b32", "rn50"]
    args.classes = args.classes or [37, 102, 1000]
    args.subset = 102 if args.subset is None else args.subset
    run_prompt(args)
