"""The synthetic world as a dataset reader, returning the same types as the real-data readers."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..data.base import DatasetSplits, ImageSplit
from .world import CLASSNAMES, DOWNSTREAM_STYLE, NUM_CLASSES, check_style, label_of, render_pil

# Bump when the renderer changes what an (index, style, seed) looks like: keys carry it, so cached
# features of old images are never reused.
RENDER_VERSION = "synthetic-v1"


@dataclass(frozen=True)
class SyntheticImageLoader:
    """Renders image `i` of one split; a plain object so DataLoader workers can pickle it."""

    world_seed: int
    split: str
    style: str

    def __call__(self, index: int) -> Image.Image:
        return render_pil(self.world_seed, self.split, int(index), self.style)


def image_key(split: str, style: str, index: int, world_seed: int = 0) -> str:
    # The default world keeps the short key; other seeds are different images, so they say so.
    seed_part = "" if world_seed == 0 else f"seed{world_seed}/"
    return f"{RENDER_VERSION}/{seed_part}{split}/{style}/{index}"


def synthetic_split(split: str, num_per_class: int, style: str, world_seed: int = 0) -> ImageSplit:
    if num_per_class < 0:
        raise ValueError(f"synthetic split {split!r}: num_per_class must be >= 0, got {num_per_class}")
    check_style(style)
    items = list(range(num_per_class * NUM_CLASSES))
    return ImageSplit(
        items=items,
        labels=[label_of(i) for i in items],
        classnames=list(CLASSNAMES),
        loader=SyntheticImageLoader(world_seed, split, style),
        keys=[image_key(split, style, i, world_seed) for i in items],
    )


def read_synthetic(
    root: str | Path | None = None,
    *,
    num_train_per_class: int = 64,
    num_val_per_class: int = 8,
    num_test_per_class: int = 32,
    style: str = DOWNSTREAM_STYLE,
    world_seed: int = 0,
) -> DatasetSplits:
    """The built-in dataset: 42 coloured-shape classes rendered on the fly (`root` is ignored).

    Splits come from separate generator streams, so they never share an image; a larger
    `num_train_per_class` (hundreds) gives a "full-data" training set.
    """
    del root  # nothing on disk
    return DatasetSplits(
        name="synthetic",
        train=synthetic_split("train", num_train_per_class, style, world_seed),
        val=synthetic_split("val", num_val_per_class, style, world_seed) if num_val_per_class > 0 else None,
        test=synthetic_split("test", num_test_per_class, style, world_seed),
        templates=["a photo of a {}."],
    )
