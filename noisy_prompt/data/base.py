"""What every dataset reader returns, so that the datamodule treats real and synthetic data alike."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from noisy_prompt.errors import UserError


class DatasetLayoutError(UserError, FileNotFoundError):
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


class Loader(Protocol):
    """What an ImageSplit's `loader` offers: `loader(item)` opens item i as an RGB image, and the optional
    facts below, whose defaults `ImageLoader` declares (a reader's loader subclasses it)."""

    # The file an in-memory array was read from (CIFAR's pickle): part of every item's cache identity.
    source: str | None
    # A digest of what generates the images (the synthetic world's code): part of every item's cache identity.
    content_digest: str | None

    def __call__(self, item: Any) -> Image.Image: ...

    def pixels32(self, items: Sequence[Any]) -> np.ndarray | None:
        """(N, 3072) float32 raw 32x32 RGB pixels of `items` read directly, or None: open each image."""


class ImageLoader:
    """Base of the readers' loaders, with the `Loader` protocol's defaults: no source file, no content
    digest, no direct pixel path. A plain object, so DataLoader workers can pickle it."""

    source: str | None = None
    content_digest: str | None = None

    def __call__(self, item: Any) -> Image.Image:
        raise NotImplementedError

    def pixels32(self, items: Sequence[Any]) -> np.ndarray | None:
        return None


class FileLoader(ImageLoader):
    """Opens an image file as RGB (items are paths)."""

    def __call__(self, path: str | Path) -> Image.Image:
        with Image.open(path) as im:
            return im.convert("RGB")

    def __repr__(self) -> str:
        return "open_rgb"


# The loader of every dataset of files, and a function to open one.
open_rgb = FileLoader()


class CallableLoader(ImageLoader):
    """A loader given as a plain callable (a user's function, or a loader class that is not an `ImageLoader`)."""

    def __init__(self, fn: Callable[[Any], Image.Image]):
        self.fn = fn
        # A user's loader object that is not an ImageLoader but declares a content digest keeps it: cached
        # features must follow what it loads. A plain function has none.
        digest = getattr(fn, "content_digest", None)
        self.content_digest = None if digest is None else str(digest)

    def __call__(self, item: Any) -> Image.Image:
        return self.fn(item)


def as_loader(loader: Any) -> ImageLoader:
    """`loader` as an ImageLoader: itself when it is one, else wrapped (CallableLoader)."""
    if isinstance(loader, ImageLoader):
        return loader
    if not callable(loader):
        raise TypeError(f"ImageSplit.loader must be callable (item -> PIL image), got {type(loader).__name__}")
    return CallableLoader(loader)


def verify_hint(dataset: str) -> str:
    return (f"Check the whole tree with `python -m noisy_prompt.data verify data={dataset or '<name>'} "
            "paths.data_dir=<root>` (add --quick for a size-only check).")


class ImageReadError(UserError, RuntimeError):
    """An image a split lists is missing, unreadable or truncated; names dataset, split and file."""

    def __init__(self, dataset: str, split: str | None = None, item: Any = None, problem: str | None = None,
                 hint: str | None = None):
        if split is None and item is None and problem is None:
            # Rebuilt from one message by torch's DataLoader, which re-raises a worker's exception as
            # `type(msg)` with msg = "Caught ImageReadError in DataLoader worker ...\nOriginal Traceback ...
            # ImageReadError: <the message>": keep the message alone, so that a run prints it as a user error
            # (not a RuntimeError with the worker's traceback).
            text = str(dataset)
            at = text.find("ImageReadError: ", text.find("Original Traceback"))
            super().__init__(text[at + len("ImageReadError: "):].strip() if at >= 0 else text)
            return
        self.dataset, self.split, self.item, self.problem = dataset, split, item, problem
        super().__init__(f"dataset '{dataset or '?'}', split '{split or '?'}': {problem}: {item}\n"
                         f"{hint or verify_hint(dataset)}")


class EmptyClassError(UserError, ValueError):
    """A class of a split has no images (e.g. an emptied ImageNet class folder)."""


def is_file_item(item: Any) -> bool:
    return isinstance(item, (str, Path))


def file_identity(path: str | Path) -> str:
    """Resolved path, size and modification time: a changed, replaced or moved file gets a new identity."""
    st = os.stat(path)
    return f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}"


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
    loader: ImageLoader = open_rgb  # any callable item -> image is accepted and wrapped (as_loader)
    clean_labels: list[int] | None = None  # real-noise datasets where the truth is known (CIFAR-100N)
    keys: list[str] = field(default_factory=list)
    dataset: str = ""  # names for error messages (set by the datamodule / verify via `name_splits`)
    split: str = ""
    # Where item i was listed (e.g. "train.csv:12" for a user's CSV), for error messages; None = the item itself.
    origins: list[str] | None = None
    # Where each class's images come from on disk (a folder per class, e.g. ImageNet's wnid folders), for
    # messages; None where the classes have no folder of their own.
    class_sources: list[str] | None = None
    # The `python -m noisy_prompt.data verify ...` advice of its messages, where the reader knows the options
    # that name the dataset (a user's folder or CSV); None: verify_hint(dataset).
    verify: str | None = None

    def __post_init__(self):
        self.loader = as_loader(self.loader)
        if len(self.items) != len(self.labels):
            raise ValueError(f"ImageSplit: {len(self.items)} items but {len(self.labels)} labels")
        if not self.keys:
            self.keys = [str(it) for it in self.items]
        if self.clean_labels is not None and len(self.clean_labels) != len(self.labels):
            raise ValueError("ImageSplit: clean_labels and labels differ in length")
        if self.origins is not None and len(self.origins) != len(self.items):
            raise ValueError("ImageSplit: origins and items differ in length")

    def describe_item(self, i: int) -> str:
        """Item i for a message: the item, plus where it was listed when the reader knows (file:line)."""
        item = self.items[i]
        return f"{item} (listed at {self.origins[i]})" if self.origins is not None else str(item)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> Image.Image:
        item = self.items[i]
        try:
            return self.loader(item)
        except FileNotFoundError:
            raise ImageReadError(self.dataset, self.split, self.describe_item(i), "image file is missing",
                                 self.verify) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            # PIL raises OSError("image file is truncated ...") for a cut JPEG, UnidentifiedImageError for junk.
            raise ImageReadError(self.dataset, self.split, self.describe_item(i),
                                 f"image is unreadable or truncated ({type(err).__name__}: {err})", self.verify) from None

    def path(self, i: int) -> str | None:
        """Item i's image file, for datasets of files; None for in-memory or generated images."""
        item = self.items[i]
        return str(item) if is_file_item(item) else None

    def identity(self, i: int) -> str:
        """Cache identity of item i: its key plus, for a file, the file's resolved path, size and mtime."""
        item = self.items[i]
        if not is_file_item(item):
            source = self.loader.source  # an in-memory array read from a file (CIFAR)
            ident = self.keys[i] if source is None else f"{self.keys[i]}|{file_identity(source)}"
            content = self.loader.content_digest  # a generated image: its generator's code
            return ident if content is None else f"{ident}|{content}"
        try:
            return f"{self.keys[i]}|{file_identity(item)}"
        except FileNotFoundError:
            raise ImageReadError(self.dataset, self.split, item, "image file is missing", self.verify) from None

    def check_classes(self) -> None:
        """Every class has at least one image (a silently empty class would still be scored)."""
        counts = [0] * len(self.classnames)
        for y in self.labels:
            if 0 <= int(y) < len(counts):
                counts[int(y)] += 1
        src = self.class_sources if self.class_sources and len(self.class_sources) == len(counts) else None
        empty = [f"{c} ({self.classnames[c]})" + (f" in folder {src[c]}" if src else "")
                 for c, n in enumerate(counts) if n == 0]
        if empty:
            more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
            raise EmptyClassError(f"dataset '{self.dataset or '?'}', split '{self.split or '?'}': {len(empty)} of "
                                  f"{len(counts)} classes have no images: {', '.join(empty[:10])}{more}\n"
                                  + (self.verify or verify_hint(self.dataset)))

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
            dataset=self.dataset,
            split=self.split,
            origins=None if self.origins is None else [self.origins[i] for i in idx],
            class_sources=self.class_sources,
            verify=self.verify,
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
    # classname -> descriptive sentences, for datasets that ship their own (the synthetic world); None elsewhere.
    class_descriptions: dict[str, list[str]] | None = None
    # Facts the dataset publishes for the noise protocols and the methods (data/facts.py, DataFacts):
    # fine class -> superclass (CIFAR-100's coarse labels), None where the classes have no superclasses;
    # class name -> the key public description files use for it, where those files phrase names differently.
    superclass_of: list[int] | None = None
    description_aliases: dict[str, str] = field(default_factory=dict)

    @property
    def classnames(self) -> list[str]:
        return self.train.classnames

    @property
    def clean_labels_known(self) -> bool:
        """Whether the training labels come with their true labels (CIFAR-100N, a CSV with a clean_label
        column): a run can then measure how well a method detects the wrong ones."""
        return self.train.clean_labels is not None

    def named(self, dataset: str) -> "DatasetSplits":
        """Give every split its dataset and split name, for error messages. Returns self."""
        for part, split in (("train", self.train), ("val", self.val), ("test", self.test),
                            *((f"test_{k}", v) for k, v in self.extra_tests.items())):
            if split is not None:
                split.dataset, split.split = dataset, part
        return self
