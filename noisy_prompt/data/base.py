"""What every dataset reader returns, so that the datamodule treats real and synthetic data alike."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder does not match the layout a reader expects.

    The message lists every missing path, the expected layout and where the data comes from, so a
    user can fix the folder without reading the code.
    """

    def __init__(self, dataset: str, root: Path | str, missing: Sequence[str], layout: str, source: str):
        self.dataset, self.root, self.missing = dataset, Path(root), list(missing)
        lines = [f"dataset '{dataset}' under {root} is incomplete; missing:"]
        lines += [f"  - {m}" for m in self.missing]
        lines += ["expected layout:", *("  " + line for line in layout.strip().splitlines())]
        lines += [f"get it from: {source}"]
        super().__init__("\n".join(lines))


def open_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


@dataclass
class ImageSplit:
    """One split of one dataset.

    `items[i]` is whatever `loader` needs to produce image i (a file path for folder datasets, an
    index for in-memory arrays or generated images). `keys[i]` is a stable string identity of item i
    (used by the feature cache and for reproducibility); it defaults to `str(items[i])`.
    """

    items: list[Any]
    labels: list[int]
    classnames: list[str]
    loader: Callable[[Any], Image.Image] = open_rgb
    clean_labels: list[int] | None = None  # real-noise datasets where the truth is known (CIFAR-100N)
    keys: list[str] = field(default_factory=list)

    def __post_init__(self):
        if len(self.items) != len(self.labels):
            raise ValueError(f"ImageSplit: {len(self.items)} items but {len(self.labels)} labels")
        if not self.keys:
            self.keys = [str(it) for it in self.items]
        if self.clean_labels is not None and len(self.clean_labels) != len(self.labels):
            raise ValueError("ImageSplit: clean_labels and labels differ in length")

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> Image.Image:
        return self.loader(self.items[i])

    def subset(self, indices: Sequence[int], labels: Sequence[int] | None = None) -> "ImageSplit":
        """A new split with the given rows; `labels` replaces the labels (e.g. a noisy few-shot set)."""
        idx = list(indices)
        return ImageSplit(
            items=[self.items[i] for i in idx],
            labels=list(labels) if labels is not None else [self.labels[i] for i in idx],
            classnames=self.classnames,
            loader=self.loader,
            clean_labels=None if self.clean_labels is None else [self.clean_labels[i] for i in idx],
            keys=[self.keys[i] for i in idx],
        )


@dataclass
class DatasetSplits:
    """A reader's result: train/val/test plus optional extra test sets (e.g. WebVision's ILSVRC12 val)."""

    name: str
    train: ImageSplit
    val: ImageSplit | None
    test: ImageSplit
    extra_tests: dict[str, ImageSplit] = field(default_factory=dict)
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])

    @property
    def classnames(self) -> list[str]:
        return self.train.classnames
