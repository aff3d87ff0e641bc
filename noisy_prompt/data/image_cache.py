"""Decoded images of a small dataset kept in memory (and on disk), and how many loader workers to use.

Small datasets (the built-in world: 32 px images rendered from code; CIFAR-size sets) are read or rendered
again at every access: five epochs of a full-data cell render each training image ten times (training
pass + purification pass) and each test image six times. `CachedImages` decodes each image once per
process, returning the very same pixels (a PIL image rebuilt from the stored uint8 array is bit-identical
to the decoded one, so every transform and random draw that follows is unchanged), and keeps a split on
disk under `<cache_dir>/images/` keyed by the identities of all its items (`ImageSplit.identity`: a file's
resolved path, size and mtime, or a generated image's key and generator-code digest), so a changed,
replaced or moved input is a new key and is never served stale.

Only splits whose decoded size stays under a budget are cached (`data.cache_images_mb`); larger datasets
stream from disk through loader workers (`resolve_num_workers`).
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from noisy_prompt import atomic
from noisy_prompt.data.base import ImageLoader, ImageSplit, as_loader

log = logging.getLogger(__name__)

FORMAT = "image-cache-v1"
CACHE_MODES = ("auto", "true", "false")
# At most this many loader workers per device from `num_workers: auto` (each holds a dataset copy).
MAX_AUTO_WORKERS = 16


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a SLURM allocation), not the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_num_workers(value: Any, devices: int = 1, cores: int | None = None, accelerator: str = "cpu") -> int:
    """`data.num_workers`: an integer >= 0, or "auto" = the cores per device (this process's affinity),
    capped at MAX_AUTO_WORKERS. On CPU the training process computes on one of those cores itself, so
    auto leaves it one: 1 core -> 0 (load in the training process), 2 -> 1, 16 -> 15. On a GPU the
    training process mostly waits for the device, so every core decodes: 1 -> 1, 2 -> 2, 16 -> 16;
    16 cores shared by 4 GPUs -> 4 per GPU."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        cores = available_cores() if cores is None else int(cores)
        per_device = max(1, cores // max(1, int(devices)))
        keep = 1 if str(accelerator).lower() == "cpu" else 0
        return max(0, min(per_device - keep, MAX_AUTO_WORKERS))
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n < 0 or (isinstance(value, float) and value != n):
        raise ValueError(f"data.num_workers must be an integer >= 0 or 'auto', got {value!r}")
    return n


def resolve_cache_mode(value: Any) -> str:
    mode = str(value).strip().lower() if not isinstance(value, bool) else ("true" if value else "false")
    if mode not in CACHE_MODES:
        raise ValueError(f"data.cache_images must be one of auto, true, false; got {value!r}")
    return mode


def split_digest(split: ImageSplit) -> str:
    """Digest of everything that decides a split's pixels: every item's identity, in order."""
    h = hashlib.sha256(FORMAT.encode())
    for i in range(len(split)):
        h.update(b"\0" + split.identity(i).encode())
    return h.hexdigest()[:24]


class CachedImages(ImageLoader):
    """The loader of a cached split: `loader(item)` -> the decoded image, from memory after the first time.

    A plain picklable object (DataLoader workers get a copy; a memory-mapped disk file is shared). The
    loader's facts (`source`, `content_digest`, `pixels32`) are those of the wrapped loader, so cache
    identities and readers' fast paths are unchanged.
    """

    def __init__(self, base, items: Sequence[Any], path: Path | None = None):
        self.base = as_loader(base)
        self.row = {item: r for r, item in enumerate(items)}
        self.path = path
        self.memo: dict[int, np.ndarray] = {}
        self.saved = False
        if path is not None and path.is_file():
            self._load(path)

    @property
    def source(self) -> str | None:
        return self.base.source

    @property
    def content_digest(self) -> str | None:
        return self.base.content_digest

    def pixels32(self, items: Sequence[Any]) -> np.ndarray | None:
        return self.base.pixels32(items)

    def __call__(self, item) -> Image.Image:
        r = self.row.get(item)
        if r is None:  # an item of another split sharing this loader object
            return self.base(item)
        arr = self.memo.get(r)
        if arr is None:
            image = self.base(item)
            if image.mode != "RGB":  # only plain RGB round-trips exactly through a uint8 array
                return image
            arr = self.memo[r] = np.asarray(image, dtype=np.uint8)
            if self.path is not None and not self.saved and len(self.memo) == len(self.row):
                self._save(self.path)
        return Image.fromarray(arr, "RGB")

    def fill(self) -> None:
        """Decode every item now (e.g. before forking workers, so that they share the memory)."""
        for item in list(self.row):
            self(item)

    # one flat uint8 buffer + shapes: images of a split may differ in size
    def _save(self, path: Path) -> None:
        self.saved = True
        arrays = [self.memo[r] for r in range(len(self.row))]
        shapes = np.array([a.shape for a in arrays], dtype=np.int64)
        with atomic.replacing(path) as tmp, open(tmp, "wb") as fh:  # a concurrent cell never reads half a file
            np.savez(fh, shapes=shapes, pixels=np.concatenate([a.reshape(-1) for a in arrays]))

    def _load(self, path: Path) -> None:
        try:
            with np.load(path) as blob:
                shapes, pixels = blob["shapes"], blob["pixels"]
        except (OSError, ValueError, KeyError) as err:  # unreadable: decode again and rewrite it
            log.warning("image cache %s unreadable (%s): decoding the images again", path, err)
            return
        if len(shapes) != len(self.row):
            return
        offsets = np.concatenate([[0], np.cumsum(np.prod(shapes, axis=1))])
        self.memo = {r: pixels[offsets[r]:offsets[r + 1]].reshape(shapes[r]) for r in range(len(shapes))}
        self.saved = True


def cache_split(split: ImageSplit, mode: str = "auto", max_mb: float = 1024.0,
                cache_dir: str | Path | None = None) -> ImageSplit:
    """`split` with a `CachedImages` loader when the mode allows it, else `split` itself.

    auto: cache when the decoded split (estimated from its first image) fits in `max_mb`; true: always;
    false: never. With a cache dir, the decoded split is also kept on disk (written once complete).
    """
    mode = resolve_cache_mode(mode)
    if mode == "false" or len(split) == 0 or isinstance(split.loader, CachedImages):
        return split
    if len(set(split.items)) != len(split.items):  # repeated items: one row per distinct item
        items = list(dict.fromkeys(split.items))
    else:
        items = list(split.items)
    if mode == "auto":
        first = split.load(0)
        size_mb = first.width * first.height * 3 * len(items) / 2**20
        if size_mb > float(max_mb):
            log.info("image cache: %s/%s would take %.0f MB > data.cache_images_mb=%g: not cached",
                     split.dataset, split.split, size_mb, float(max_mb))
            return split
    path = None
    if cache_dir:
        path = Path(cache_dir) / "images" / f"{split_digest(split)}.npz"
    cached = ImageSplit(items=list(split.items), labels=list(split.labels), classnames=split.classnames,
                        loader=CachedImages(split.loader, items, path), clean_labels=split.clean_labels,
                        keys=list(split.keys), dataset=split.dataset, split=split.split)
    return cached
