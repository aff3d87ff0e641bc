"""The per-epoch no-grad pass over the whole training set that sample-selection methods run before training.

TANGO (purification), SSR / LSL (relabelling and k-NN selection), DivideMix (per-sample losses for the
GMM) and DeFT (p_yes verdicts) all need, for every training sample in dataset order, some outputs of the
current model on the un-augmented image, plus the given and clean labels. This is the general form of
`Tango.extract_features`: `outputs(x)` returns any dict of per-sample tensors.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

# Below this many training images the pass is quick enough that a progress bar is noise.
PROGRESS_MIN_IMAGES = 5000


def _training_set_loader(module, dm: Any):
    if dm is None:
        dm = getattr(module.trainer, "datamodule", None) if module._trainer is not None else None
    if dm is None or not hasattr(dm, "train_eval_dataloader"):
        raise RuntimeError(f"{type(module).__name__} scores the whole training set before every epoch: fit it with "
                           "a datamodule that has train_eval_dataloader() (the training set, no augmentation)")
    return dm, dm.train_eval_dataloader()


@torch.no_grad()
def training_set_pass(module, outputs: Callable[[Tensor], dict[str, Tensor]], dm: Any = None,
                      desc: str = "scoring the training set") -> tuple[dict[str, Tensor], Tensor, Tensor, Any]:
    """Run `outputs(x)` over the training set in eval mode, under the trainer's precision.

    Returns ({name: (N, ...) tensor on the module's device, in dataset order}, given labels (N,),
    clean labels (N,), the datamodule). Every module's train/eval mode is restored afterwards. Raises when
    the loader does not yield each index 0..N-1 exactly once.
    """
    dm, loader = _training_set_loader(module, dm)
    n = len(loader.dataset) if hasattr(loader, "dataset") else 0
    batches: Iterable[dict] = loader
    if (module._trainer is None or module.trainer.is_global_zero) and n >= PROGRESS_MIN_IMAGES:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc=desc, leave=False)
    plugin = module.trainer.precision_plugin if module._trainer is not None else None
    modes = {mod: mod.training for mod in module.modules()}
    module.eval()
    parts: dict[str, list[Tensor]] = {}
    labels, clean, order = [], [], []
    try:
        with plugin.forward_context() if plugin is not None else nullcontext():
            for batch in batches:
                x = batch["x"].to(module.device, non_blocking=True)
                out = outputs(plugin.convert_input(x) if plugin is not None else x)
                for key, value in out.items():
                    parts.setdefault(key, []).append(value.float() if value.is_floating_point() else value)
                labels.append(torch.as_tensor(batch["label"]))
                clean.append(torch.as_tensor(batch["clean_label"]))
                order.append(torch.as_tensor(batch["index"]))
    finally:
        for mod, mode in modes.items():
            mod.train(mode)
    index = torch.cat(order).long() if order else torch.empty(0, dtype=torch.long)
    n = index.numel()
    if n == 0 or not torch.equal(torch.sort(index).values, torch.arange(n)):
        raise ValueError(f"the training-set loader must yield each index 0..N-1 exactly once; got {n} items "
                         "with missing or repeated indices")
    dev_index = index.to(module.device)
    placed = {}
    for key, chunks in parts.items():
        values = torch.cat(chunks).to(module.device)
        out = torch.empty_like(values)
        out[dev_index] = values
        placed[key] = out
    given, true = torch.empty(n, dtype=torch.long), torch.empty(n, dtype=torch.long)
    given[index], true[index] = torch.cat(labels).long(), torch.cat(clean).long()
    return placed, given.to(module.device), true.to(module.device), dm
