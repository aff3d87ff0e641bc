"""`python -m noisy_prompt.bench loader`: images/s of the training loader on real-size JPEGs, against this
machine's decode limit.

A tree of JPEGs (default 500x375, the size of a typical photo dataset image) is generated under a temporary
directory in the layout of a CoOp split dataset (Food-101's: `food-101/images/<class>/*.jpg` + its split
file), then read the way a training run reads it: the project's reader, `CLIPDataModule` with
`input=images`, the real training transform (RandomResizedCrop to the backbone's size, bicubic, flip,
ToTensor, Normalize), `data.num_workers` (auto by default), persistent workers, batches of `--batch-size`.

The limit is the same work without any loader: one process per core, each opening, decoding and
transforming its share of the files with the very same transform, nothing else (no sampler, no collate,
no inter-process transfer). The ratio loader / limit is what the loader loses to its own machinery.
Nothing is written outside the temporary directory (removed at the end; --keep keeps it).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

# CLIP's normalisation (every OpenAI CLIP backbone): the transform of a real run.
from noisy_prompt.clip.factory import OPENAI_MEAN as CLIP_MEAN, OPENAI_STD as CLIP_STD


def write_tree(root: Path, n: int, width: int, height: int, classes: int = 10, seed: int = 0, quality: int = 90) -> Path:
    """n JPEGs of width x height with photo-like content (smooth colour fields + texture + noise, so the
    files compress like photos, ~30-60 KB), in Food-101's CoOp layout. Returns the data root."""
    from PIL import Image

    from noisy_prompt.data.readers.coop import clean_classname

    rng = np.random.default_rng(seed)
    img_dir = root / "food-101" / "images"
    names = [f"class_{c:02d}" for c in range(classes)]
    rows = []
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(n):
        c = i % classes
        (img_dir / names[c]).mkdir(parents=True, exist_ok=True)
        base = rng.uniform(0, 255, size=3)
        fx, fy = rng.uniform(0.005, 0.05, size=2)
        field = np.stack([base[k] * (0.6 + 0.4 * np.sin(fx * xx * (k + 1) + fy * yy)) for k in range(3)], axis=-1)
        field += rng.normal(0, 12, size=field.shape)
        rel = f"{names[c]}/{i:06d}.jpg"
        Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)).save(img_dir / rel, quality=quality)
        rows.append([rel, c, clean_classname(names[c])])
    split = {"train": rows, "val": rows[: max(classes, n // 10)], "test": rows[: max(classes, n // 10)]}
    (root / "food-101" / "split_zhou_Food101.json").write_text(json.dumps(split))
    return root


def _limit_worker(args) -> int:
    files, size, seed = args
    from noisy_prompt.data.base import open_rgb
    from noisy_prompt.data.transforms import train_transform

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    tf = train_transform(size, CLIP_MEAN, CLIP_STD)
    for f in files:
        tf(open_rgb(f))
    return len(files)


def decode_limit(files: list[str], size: int, processes: int) -> float:
    """Images/s of decode + the training transform, one process per core, files split evenly."""
    chunks = [files[i::processes] for i in range(processes)]
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(processes) as pool:
        pool.map(_limit_worker, [(c[:2], size, i) for i, c in enumerate(chunks)])  # imports, warm caches
        t0 = time.perf_counter()
        done = sum(pool.map(_limit_worker, [(c, size, i) for i, c in enumerate(chunks)]))
        return done / (time.perf_counter() - t0)


def loader_rate(root: Path, size: int, batch_size: int, num_workers, epochs: int, accelerator: str) -> dict:
    """Images/s of the training loader a run builds, averaged over `epochs` passes after a first one that
    starts the (persistent) workers."""
    from noisy_prompt.data.datamodule import CLIPDataModule
    from noisy_prompt.data.image_cache import resolve_num_workers

    bundle = SimpleNamespace(image_size=size, mean=CLIP_MEAN, std=CLIP_STD)  # the transform's facts only
    dm = CLIPDataModule("food101", str(root), input="images", shots=None, val_from="none", batch_size=batch_size,
                        num_workers=num_workers, cache_images="false", clip_bundle=bundle, seed=1)
    dm.setup("fit")
    workers = resolve_num_workers(num_workers, 1, accelerator=accelerator)
    dm.num_workers = workers
    loader = dm.train_dataloader()
    n = len(dm.train_set)
    t_first = time.perf_counter()
    for _ in loader:  # starts the workers (persistent: the next passes reuse them)
        pass
    first = n / (time.perf_counter() - t_first)
    t0 = time.perf_counter()
    for e in range(epochs):
        dm.set_epoch(e + 1)
        for batch in loader:
            assert batch["x"].shape[1:] == (3, size, size)
    rate = n * epochs / (time.perf_counter() - t0)
    return {"workers": workers, "images_s": rate, "first_pass_images_s": first, "n": n}


def main(argv: list[str] | None = None, prog: str = "python -m noisy_prompt.bench loader") -> dict:
    from noisy_prompt.data.image_cache import available_cores

    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=600, help="JPEGs in the generated tree")
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--size", type=int, default=224, help="crop size of the transform (ViT-B/16: 224)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2, help="timed passes after the first (worker start-up) pass")
    p.add_argument("--num-workers", default="auto", help="data.num_workers of the loader (default auto)")
    p.add_argument("--accelerator", default="gpu", choices=["gpu", "cpu"],
                   help="what `auto` resolves for: gpu = every core decodes (default), cpu = one core left to training")
    p.add_argument("--processes", type=int, default=None, help="processes of the decode limit (default: the cores)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved limit/loader measurements (medians reported)")
    p.add_argument("--root", default=None, help="use/generate the tree here instead of a temporary dir")
    p.add_argument("--keep", action="store_true", help="keep the generated tree")
    p.add_argument("--smoke", action="store_true", help="seconds: 24 small JPEGs, crop 32, one timed pass")
    args = p.parse_args(argv)
    if args.smoke:
        args.images, args.width, args.height, args.size, args.batch_size, args.epochs = 24, 64, 48, 32, 8, 1
        args.repeats = 1
    torch.set_num_threads(1)  # the loader's processes and the limit's each use one thread
    cores = available_cores()
    processes = args.processes or cores
    tmp = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="noisy_prompt_loader_bench_"))
    try:
        if not (tmp / "food-101" / "split_zhou_Food101.json").is_file():
            t0 = time.perf_counter()
            write_tree(tmp, args.images, args.width, args.height)
            print(f"generated {args.images} JPEGs of {args.width}x{args.height} under {tmp} "
                  f"in {time.perf_counter() - t0:.1f} s", flush=True)
        files = sorted(str(f) for f in (tmp / "food-101" / "images").rglob("*.jpg"))
        mean_kb = np.mean([os.path.getsize(f) for f in files]) / 1024
        # Interleaved (limit, loader, limit, loader, ...): on a shared machine both see the same load.
        limits, rates = [], []
        for _ in range(args.repeats):
            limits.append(decode_limit(files, args.size, processes))
            rates.append(loader_rate(tmp, args.size, args.batch_size, args.num_workers, args.epochs, args.accelerator))
            print(f"  limit {limits[-1]:.1f} images/s, loader {rates[-1]['images_s']:.1f} images/s", flush=True)
        limit = float(np.median(limits))
        r = dict(rates[0], images_s=float(np.median([x["images_s"] for x in rates])),
                 first_pass_images_s=float(np.median([x["first_pass_images_s"] for x in rates])))
        out = {"cores": cores, "limit_processes": processes, "limit_images_s": limit, **r,
               "ratio": r["images_s"] / limit, "mean_file_kb": mean_kb}
        print(f"machine: {cores} cores available; files {len(files)} JPEGs {args.width}x{args.height}, "
              f"mean {mean_kb:.0f} KB; transform RandomResizedCrop({args.size}, bicubic) + flip + ToTensor + Normalize")
        print(f"decode limit ({processes} processes, decode + transform only): {limit:8.1f} images/s "
              f"({limit / processes:.1f} per core)")
        print(f"training loader (num_workers={args.num_workers} -> {r['workers']}, batch {args.batch_size}, "
              f"persistent workers): {r['images_s']:8.1f} images/s (first pass, worker start-up included: "
              f"{r['first_pass_images_s']:.1f})")
        print(f"loader / limit: {out['ratio']:.2f}x (medians of {args.repeats} interleaved repeats)", flush=True)
        return out
    finally:
        if not args.keep and not args.root:
            shutil.rmtree(tmp, ignore_errors=True)
