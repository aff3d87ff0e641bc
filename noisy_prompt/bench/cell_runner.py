"""Run one cell (`python -m noisy_prompt.run` overrides) with phase timers; a plain script on purpose.

It is executed by file path (`python noisy_prompt/bench/cell_runner.py --out prof.json -- <overrides>`) so
that the `noisy_prompt` it times is whichever one PYTHONPATH names: the benchmark of `bench cell --compare`
profiles an older checkout with this same timer code. It only wraps functions (found by name, skipped where
a version lacks them) with wall-clock timers; it changes no computation.

Time is charged exclusively to the innermost running phase (a render inside a purification pass counts as
render, not purification); "other" is the rest of the process's wall time (imports, Hydra, Lightning's loop).
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time


class PhaseTimers:
    def __init__(self):
        self.total: dict[str, float] = {}
        self.cpu: dict[str, float] = {}  # process CPU seconds: on a loaded machine, the work itself
        self.calls: dict[str, int] = {}
        self.stack: list[list] = []  # [label, wall start, cpu start, wall in children, cpu in children]

    def wrap(self, owner, attr: str, label: str | None = None, label_of=None) -> bool:
        fn = getattr(owner, attr, None)
        if fn is None or getattr(fn, "_phase_wrapped", False):
            return False
        timers = self

        def wrapper(*args, **kwargs):
            name = label_of(*args) if label_of is not None else label
            timers.stack.append([name, time.perf_counter(), time.process_time(), 0.0, 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                name, start, cstart, children, cchildren = timers.stack.pop()
                elapsed, celapsed = time.perf_counter() - start, time.process_time() - cstart
                timers.total[name] = timers.total.get(name, 0.0) + elapsed - children
                timers.cpu[name] = timers.cpu.get(name, 0.0) + celapsed - cchildren
                timers.calls[name] = timers.calls.get(name, 0) + 1
                if timers.stack:
                    timers.stack[-1][3] += elapsed
                    timers.stack[-1][4] += celapsed

        wrapper._phase_wrapped = True
        wrapper.__name__ = getattr(fn, "__name__", attr)
        wrapper.__doc__ = getattr(fn, "__doc__", None)
        setattr(owner, attr, wrapper)
        return True


def _get(path: str):
    """`pkg.module:Class` or `pkg.module` -> object, None when it does not exist in this version."""
    mod, _, cls = path.partition(":")
    try:
        obj = importlib.import_module(mod)
    except ImportError:
        return None
    for part in filter(None, cls.split(".")):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _compose_label(compose, *args) -> str:
    from torchvision import transforms as T

    random = any(isinstance(t, (T.RandomResizedCrop, T.RandomHorizontalFlip)) for t in getattr(compose, "transforms", []))
    return "augment (train transform)" if random else "eval transform (resize/crop/normalize)"


# (owner, attribute, phase). Several names per phase cover older and newer versions of the code.
PATCHES = [
    ("noisy_prompt.data.base:ImageSplit", "load", "render/decode images"),
    ("noisy_prompt.data.image_cache:CachedImages", "fill", "image cache (fill/load)"),
    ("torch.utils.data.dataloader:_BaseDataLoaderIter", "__next__", "loader (collate, sampler, worker wait)"),
    ("noisy_prompt.data.features:FeatureCache", "features", "feature cache (frozen encoder pass, disk)"),
    ("noisy_prompt.data.datamodule:CLIPDataModule", "setup", "data setup (read, noise, caches)"),
    ("noisy_prompt.clip.factory", "create_clip", "build CLIP"),
    ("lightning.pytorch.strategies.strategy:Strategy", "training_step", "train forward"),
    ("lightning.pytorch.core.module:LightningModule", "backward", "train backward"),
    ("lightning.pytorch.strategies.strategy:Strategy", "optimizer_step", "optimizer step"),
    ("lightning.pytorch.strategies.strategy:Strategy", "validation_step", "evaluation forward"),
    ("lightning.pytorch.strategies.strategy:Strategy", "test_step", "evaluation forward"),
    ("noisy_prompt.methods.tango.module:Tango", "tac_test_accuracy", "evaluation forward"),
    ("noisy_prompt.methods.tango.module:Tango", "extract_features", "purification: feature pass forward"),
    ("noisy_prompt.methods.tango.module", "purify", "purification: k-NN, graphs, labels"),
    ("noisy_prompt.methods.tango.module:Tango", "_encode_anchors", "anchors (text tower)"),
    ("lightning.pytorch.trainer.trainer:Trainer", "save_checkpoint", "checkpointing"),
    ("lightning.pytorch.core.module:LightningModule", "log", "logging"),
    ("lightning.pytorch.core.module:LightningModule", "log_dict", "logging"),
    ("lightning.pytorch.loggers.csv_logs:CSVLogger", "save", "logging"),
    ("lightning.pytorch.loggers.csv_logs:CSVLogger", "log_metrics", "logging"),
    ("lightning.pytorch.callbacks.progress.tqdm_progress:TQDMProgressBar", "on_train_batch_end", "logging"),
    ("noisy_prompt.reporting.artifacts", "save_run_artifacts", "results and artifacts"),
]


def main(argv: list[str]) -> None:
    out = None
    if argv[:1] == ["--out"]:
        out, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    torch.set_num_threads(threads)
    timers = PhaseTimers()
    t0, c0 = time.perf_counter(), time.process_time()
    for owner_path, attr, label in PATCHES:
        owner = _get(owner_path)
        if owner is not None:
            timers.wrap(owner, attr, label)
    compose = _get("torchvision.transforms:Compose")
    timers.wrap(compose, "__call__", label_of=_compose_label)
    run = importlib.import_module("noisy_prompt.run")
    sys.argv = ["noisy_prompt.run", *argv]
    try:
        run.main()
    finally:
        wall = time.perf_counter() - t0
        phases = dict(sorted(timers.total.items(), key=lambda kv: -kv[1]))
        cpu = time.process_time() - c0
        record = {"wall_s": wall, "cpu_s": cpu, "threads": torch.get_num_threads(),
                  "phases": phases, "phases_cpu": timers.cpu, "calls": timers.calls,
                  "other": wall - sum(phases.values()), "other_cpu": cpu - sum(timers.cpu.values()),
                  "package": os.path.dirname(run.__file__)}
        if out:
            with open(out, "w") as fh:
                json.dump(record, fh, indent=1)
        else:
            print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
