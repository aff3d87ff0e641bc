"""The synthetic world as a dataset reader, returning the same types as the real-data readers."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image

from ..data.base import DatasetSplits, ImageLoader, ImageSplit
from .captions import class_descriptions
from .world import CLASSNAMES, DEFAULT_WORLD, DOWNSTREAM_STYLE, check_style, downstream_classes, render_pil, world_spec

# An image key starts with its world's `key_prefix` (world.WORLDS): a new world gets a new prefix.
# Keys also seed each image's augmentations, so a world's keys stay as they are; the cache identity
# of an image carries world_digest() besides (SyntheticImageLoader.content_digest), so an edit that
# nobody gave a new prefix (a field-condition range, say) still never serves cached features of the
# old images.
RENDER_VERSION = world_spec(DEFAULT_WORLD).key_prefix
# The modules that decide what the dataset holds: pixels and labels (world), the published class
# descriptions (captions), splits and keys (this file). Pretraining is not among them: it changes
# the weights, which clip.factory.weights_digest covers.
_WORLD_SOURCES = ("world.py", "captions.py", "dataset.py")
# Sentences per class published as the dataset's class descriptions (TANGO's K).
NUM_DESCRIPTIONS = 40


@dataclass(frozen=True)
class SyntheticImageLoader(ImageLoader):
    """Renders image `i` of one split; a plain object so DataLoader workers can pickle it."""

    world_seed: int
    split: str
    style: str
    class_ids: tuple[int, ...]  # local label -> global class id
    world: int = 2  # world version (world.WORLDS)

    @property
    def content_digest(self) -> str:
        """What ImageSplit.identity adds to an image's key: the code that renders it."""
        return world_digest()

    def __call__(self, index: int) -> Image.Image:
        index = int(index)
        return render_pil(self.world_seed, self.split, index, self.style, self.class_ids[index % len(self.class_ids)],
                          self.world)


@lru_cache(maxsize=1)
def world_digest() -> str:
    """sha256 (16 hex) of the source of the modules that decide the images, labels and class
    descriptions. Each image's feature-cache identity and each run's record (`data_digest`) carry it, so a world
    edited in place is never answered with features or results of the world before the edit. Every line
    of code counts, docstrings and trailing comments too: a needless recompute is cheap, a stale number is
    not. Whole-line comments and blank lines do not (code_lines): rewording a comment must not turn
    hours of committed evidence stale."""
    return sources_digest(Path(__file__).parent)


def code_lines(text: str) -> str:
    """`text` without its whole-line comments and blank lines, each kept line without trailing blanks.
    (A line inside a multi-line string that starts with `#` would be dropped too; these modules have
    none, and a test pins that.)"""
    return "\n".join(line.rstrip() for line in text.splitlines()
                     if line.strip() and not line.lstrip().startswith("#"))


def sources_digest(folder: Path, names: tuple[str, ...] = _WORLD_SOURCES) -> str:
    h = hashlib.sha256()
    for name in names:
        code = code_lines((Path(folder) / name).read_text(encoding="utf-8"))
        h.update(name.encode() + b"\0" + code.encode() + b"\0")
    return h.hexdigest()[:16]


def content_digest(root: str | Path | None = None, **reader_kwargs) -> str:
    """The data seam's digest of this dataset (see data.readers.data_digest): the world's code. The
    reader's arguments (world seed, class count, split sizes) are in the run's config hash already."""
    del root, reader_kwargs
    return world_digest()


def image_key(split: str, style: str, index: int, world_seed: int = 0, num_classes: int = 64, world: int = 2) -> str:
    # The image depends on its class, and the class of index i on the class count: both in the key.
    seed_part = "" if world_seed == 0 else f"seed{world_seed}/"
    return f"{world_spec(world).key_prefix}/{seed_part}c{num_classes}/{split}/{style}/{index}"


def synthetic_split(split: str, num_per_class: int, style: str, world_seed: int = 0, num_classes: int = 64,
                    world: int = 2) -> ImageSplit:
    if num_per_class < 0:
        raise ValueError(f"synthetic split {split!r}: num_per_class must be >= 0, got {num_per_class}")
    check_style(style)
    ids = downstream_classes(world_seed, num_classes)
    items = list(range(num_per_class * len(ids)))
    return ImageSplit(
        items=items,
        labels=[i % len(ids) for i in items],  # classes cycle with the index: balanced splits
        classnames=[CLASSNAMES[c] for c in ids],
        loader=SyntheticImageLoader(world_seed, split, style, ids, int(world)),
        keys=[image_key(split, style, i, world_seed, num_classes, world) for i in items],
    )


def read_synthetic(
    root: str | Path | None = None,
    *,
    num_train_per_class: int = 64,
    num_val_per_class: int = 8,
    num_test_per_class: int = 32,
    style: str = DOWNSTREAM_STYLE,
    world_seed: int = 0,
    num_classes: int = 64,
    world: int = 2,
) -> DatasetSplits:
    """The built-in dataset: `num_classes` of the world's patterned coloured-shape classes rendered on
    the fly (`root` is ignored), with the world's class descriptions.

    Splits come from separate generator streams, so they never share an image; a larger
    `num_train_per_class` (hundreds) gives a "full-data" training set. `world` is the world version
    (world.WORLDS): the one the backbone was pretrained on.
    """
    del root  # nothing on disk
    world_spec(world)  # unknown versions fail here, naming the known ones
    train = synthetic_split("train", num_train_per_class, style, world_seed, num_classes, world)
    return DatasetSplits(
        name="synthetic",
        train=train,
        val=(synthetic_split("val", num_val_per_class, style, world_seed, num_classes, world)
             if num_val_per_class > 0 else None),
        test=synthetic_split("test", num_test_per_class, style, world_seed, num_classes, world),
        templates=["a photo of a {}."],
        class_descriptions={c: class_descriptions(c, NUM_DESCRIPTIONS) for c in train.classnames},
    )
