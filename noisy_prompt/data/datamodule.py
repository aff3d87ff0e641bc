"""One LightningDataModule for every dataset, method and noise protocol.

Order of operations (docs/datasets.md, docs/noise.md): read the dataset, draw the few-shot set with Dassl's
procedure (or let a few-shot-constructing noise protocol build it), corrupt the training labels with
the noise protocol, then serve either transformed images or cached frozen-encoder features. Every step
is a function of (config, seed) only, so every DDP rank and every rerun sees the same noisy labels.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from noisy_prompt.data.base import DatasetSplits, ImageSplit
from noisy_prompt.data.facts import DataFacts
from noisy_prompt.data.fewshot import sample_fewshot, sample_fewshot_train_val
from noisy_prompt.data.image_cache import cache_split, resolve_cache_mode, resolve_num_workers
from noisy_prompt.data.readers import read_dataset
from noisy_prompt.data.transforms import describe, test_transform, train_transform

log = logging.getLogger(__name__)


class UnpaddedDistributedSampler(torch.utils.data.DistributedSampler):
    """Rank r takes items r, r+W, r+2W, ...: every item exactly once across ranks (no padding), so
    metrics summed over ranks equal the single-process numbers. For evaluation only: ranks may get
    one batch more or less, which evaluation tolerates and training would not."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.indices = list(range(rank, len(dataset), num_replicas))
        self.num_samples = len(self.indices)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A permutation that is a function of (seed, epoch) alone.

    A DataLoader with shuffle=True draws each epoch's order from one generator stream, so a run
    resumed at epoch e (a fresh stream) would see other batches than the uninterrupted run; here the
    order of epoch e is the same whether or not the process restarted in between."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:  # also called by Lightning before every training epoch
        self.epoch = int(epoch)

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


def _eval_sampler(ds: Dataset):
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        return UnpaddedDistributedSampler(ds, torch.distributed.get_world_size(), torch.distributed.get_rank())
    return None


class LabeledImages(Dataset):
    """Images through `transform`. With `memo`, the transform is deterministic (evaluation) and its output
    is kept per item: a small evaluation set is transformed once per process, not once per pass."""

    def __init__(self, split: ImageSplit, transform, labels: np.ndarray, clean: np.ndarray, memo: bool = False):
        self.split, self.transform, self.labels, self.clean = split, transform, labels, clean
        self.memo: dict[int, torch.Tensor] | None = {} if memo else None

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.memo is None:
            x = self.transform(self.split.load(i))
        else:
            x = self.memo.get(i)
            if x is None:
                x = self.memo[i] = self.transform(self.split.load(i))
        return {"x": x, "label": int(self.labels[i]), "clean_label": int(self.clean[i]), "index": i}


class LabeledFeatures(Dataset):
    """Cached features, one view per epoch: `views` is (V, N, D); `view` is set at each epoch start."""

    def __init__(self, views: torch.Tensor, labels: np.ndarray, clean: np.ndarray):
        self.views, self.labels, self.clean = views, torch.as_tensor(labels), torch.as_tensor(clean)
        self.view = 0

    def set_epoch(self, epoch: int) -> None:
        self.view = epoch % self.views.shape[0]

    def __len__(self) -> int:
        return self.views.shape[1]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.views[self.view, i], "label": self.labels[i], "clean_label": self.clean[i], "index": i}

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        """A whole batch by one tensor index (the DataLoader calls this instead of __getitem__ per item and
        then `collate_batch`): the same tensors default_collate builds from the items, without a Python
        dict per item (on the world's DP-SEP cells that per-item work took ~12% of the wall time)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {"x": self.views[self.view, idx], "label": self.labels[idx], "clean_label": self.clean[idx],
                "index": idx}


def collate_batch(batch):
    """collate_fn of loaders over LabeledFeatures: its __getitems__ already returns the batch."""
    return batch if isinstance(batch, dict) else torch.utils.data.default_collate(batch)


def pixels32(split: ImageSplit) -> np.ndarray:
    """Flattened 32x32 RGB raw pixels (float) per item: the features of Xia et al.'s instance noise."""
    direct = split.loader.pixels32(split.items)  # CIFAR: its in-memory array, read directly
    if direct is not None:
        return direct
    out = np.empty((len(split), 32 * 32 * 3), dtype=np.float32)
    for i in range(len(split)):
        im = split.load(i)
        if im.size != (32, 32):
            im = im.resize((32, 32))
        out[i] = np.asarray(im, dtype=np.float32).reshape(-1)
    return out


class CLIPDataModule(L.LightningDataModule):
    def __init__(
        self,
        name: str,
        data_dir: str | None = None,
        *,
        reader: str | None = None,
        reader_kwargs: dict | None = None,
        shots: int | None = None,
        val_shots: int | None = None,
        noise=None,
        seed: int = 1,
        backbone: dict | None = None,
        input: str = "features",
        train_aug: str = "views",
        views: int = 1,
        aug_seed: int = 0,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        batch_size: int = 32,
        eval_batch_size: int = 256,
        num_workers: int | str = 0,
        cache_dir: str | None = None,
        cache_images: str | bool = "auto",
        cache_images_mb: float = 1024.0,
        val_from: str = "val",
        templates: list[str] | None = None,
        device: str = "cpu",
        real_noise: bool = False,
        real_images: bool = False,
        clip_bundle=None,
    ):
        super().__init__()
        if input not in ("features", "images"):
            raise ValueError(f"data.input must be 'features' or 'images', got {input!r}")
        if train_aug not in ("views", "none"):
            raise ValueError(f"data.train_aug must be 'views' or 'none', got {train_aug!r}")
        if val_from not in ("val", "test", "none"):
            raise ValueError(f"data.val_from must be 'val', 'test' or 'none', got {val_from!r}")
        self.name, self.data_dir = name, data_dir
        self.reader = reader or name  # several configs may read one dataset (synthetic, synthetic_full)
        self.reader_kwargs = dict(reader_kwargs or {})
        self.shots, self.val_shots = shots, val_shots
        self.noise, self.seed = noise, int(seed)
        self.backbone = dict(backbone or {})
        self.input, self.train_aug, self.views, self.aug_seed = input, train_aug, max(1, int(views)), int(aug_seed)
        self.crop_scale = tuple(crop_scale)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        resolve_num_workers(num_workers, 1, 1)  # a bad value fails here, naming the key
        self.num_workers_setting = num_workers
        # Small datasets: decoded images (and evaluation tensors) kept in memory and under cache_dir/images.
        self.cache_images, self.cache_images_mb = resolve_cache_mode(cache_images), float(cache_images_mb)
        self.cache_dir, self.val_from, self._templates, self.device = cache_dir, val_from, templates, device
        if real_noise and noise is not None and getattr(noise, "protocol", "real") != "real":
            # Synthetic noise on top of human noise would silently change the benchmark.
            raise ValueError(f"data={name} has real noisy labels; use noise=real (got noise={noise.name}, "
                             f"protocol {noise.protocol})")
        self.real_noise = real_noise
        self.real_images = bool(real_images)  # published by the data config; the task checks the backbone with it
        # The run's CLIP, built once by the task and shared with the method; built here when None (tests).
        self.clip_bundle = clip_bundle
        self.splits: DatasetSplits | None = None
        self.noise_result = None
        self.feature_dtype = "float32"  # the precision of the served frozen features (FeatureCache.stored_dtype)
        self._ready = False

    # ---- label side: pure functions of (config, seed) -------------------------------------------
    def _dataset_id(self, pool: ImageSplit) -> str:
        from noisy_prompt.noise import dataset_identity

        return dataset_identity(self.reader, pool.classnames)

    def _build_train(self, splits: DatasetSplits) -> tuple[ImageSplit, np.ndarray, np.ndarray]:
        pool, C = splits.train, len(splits.classnames)
        noise = self.noise
        self._val_indices = None
        if noise is not None and noise.is_fewshot_constructing:
            if not self.shots:
                raise ValueError(f"noise '{noise.name}' builds a few-shot set; set data.shots (got {self.shots})")
            fs = noise.build_fewshot(np.asarray(pool.labels), C, self.shots, self.seed, self._dataset_id(pool))
            train = pool.subset(fs.indices, labels=fs.labels)
            self.noise_result = fs.result
            return train, np.asarray(fs.labels, dtype=np.int64), np.asarray(fs.true_labels, dtype=np.int64)
        if self.shots:
            # One stream seeded once, train shots then val shots: the exact shots CoOp/Dassl pick.
            val_labels = splits.val.labels if splits.val is not None else None
            train_idx, self._val_indices = sample_fewshot_train_val(pool.labels, val_labels, self.shots, self.seed)
            train = pool.subset(train_idx)
        else:
            train = pool
        given = np.asarray(train.labels, dtype=np.int64)
        clean = np.asarray(train.clean_labels if train.clean_labels is not None else train.labels, dtype=np.int64)
        if noise is None:
            return train, given, clean
        features = pixels32(train) if noise.needs_pixels else None
        res = noise.apply(given, C, self.seed, self._dataset_id(train), features=features,
                          superclass_of=splits.superclass_of, clean_labels=clean)
        self.noise_result = res
        return train, np.asarray(res.noisy_labels, dtype=np.int64), clean

    def _build_val(self, splits: DatasetSplits) -> ImageSplit | None:
        if self.val_from == "none":
            return None
        if self.val_from == "test":
            return splits.test
        if not self.shots:
            return splits.val
        if self.val_shots or self._val_indices is None:
            if splits.val is None:
                return None
            k = self.val_shots or min(self.shots, 4)
            return splits.val.subset(sample_fewshot(splits.val.labels, k, self.seed))
        # val indices point into the train pool where the dataset has no val split (ImageNet)
        return (splits.val if splits.val is not None else splits.train).subset(self._val_indices)

    # ---- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        self.setup_labels()
        self._cache_splits()
        self._build_datasets()
        self.clip_bundle = None  # the datamodule needs no CLIP after caching; the method keeps its own reference
        self._ready = True

    def setup_labels(self) -> None:
        """The label side alone (read, few-shot draw, noise; no CLIP, no features): what the report command
        needs to show a finished run's training images."""
        self.splits = read_dataset(self.reader, self.data_dir, **self.reader_kwargs).named(self.name)
        # A class with no training or test image would silently change the benchmark (C-1 classes scored).
        self.splits.train.check_classes()
        self.splits.test.check_classes()
        self.train_split, labels, clean = self._build_train(self.splits)
        self.train_labels, self.train_clean = labels, clean
        self.val_split = self._build_val(self.splits)
        self.test_splits = {"test": self.splits.test, **{f"test_{k}": v for k, v in self.splits.extra_tests.items()}}

    def _cache_splits(self) -> None:
        """Wrap the splits the run reads in an image cache (data.cache_images): after the noisy labels are
        drawn, so only the images a run uses are decoded. A split used twice (val = test) is cached once."""
        if self.cache_images == "false":
            return
        done: dict[int, ImageSplit] = {}

        def cached(split):
            if split is None:
                return None
            if id(split) not in done:
                done[id(split)] = cache_split(split, self.cache_images, self.cache_images_mb, self.cache_dir)
            return done[id(split)]

        self.train_split = cached(self.train_split)
        self.val_split = cached(self.val_split)
        self.test_splits = {k: cached(v) for k, v in self.test_splits.items()}

    def _memo_eval(self, split: ImageSplit, size: int) -> bool:
        """Keep a split's evaluation tensors in memory when its images are cached and the tensors fit too."""
        from noisy_prompt.data.image_cache import CachedImages

        return (isinstance(split.loader, CachedImages)
                and len(split) * 3 * size * size * 4 / 2**20 <= self.cache_images_mb)

    @property
    def num_workers(self) -> int:
        """data.num_workers resolved: "auto" from the cores per device of this process (see resolve_num_workers)."""
        trainer = getattr(self, "trainer", None)
        devices = int(getattr(trainer, "num_devices", 1) or 1) if trainer is not None else 1
        accel = type(getattr(trainer, "accelerator", None)).__name__ if trainer is not None else "CPUAccelerator"
        return resolve_num_workers(self.num_workers_setting, devices,
                                   accelerator="cpu" if accel == "CPUAccelerator" else "gpu")

    @num_workers.setter
    def num_workers(self, value: int | str) -> None:
        resolve_num_workers(value, 1, 1)
        self.num_workers_setting = value

    def _pin_memory(self) -> bool:
        trainer = getattr(self, "trainer", None)
        accel = type(getattr(trainer, "accelerator", None)).__name__ if trainer is not None else ""
        return accel == "CUDAAccelerator"

    @property
    def classnames(self) -> list[str]:
        return self.splits.classnames

    @property
    def templates(self) -> list[str]:
        return list(self._templates or self.splits.templates)

    @property
    def class_descriptions(self) -> dict[str, list[str]] | None:
        """Class name -> descriptive sentences the dataset itself publishes (the synthetic world's);
        None for datasets without them."""
        return self.splits.class_descriptions

    def facts(self) -> DataFacts:
        """What this data publishes to a method (data/facts.py): the dataset's facts from its reader and the
        run's (noise protocol, validation on the test split). Needs the label side (setup_labels)."""
        if self.splits is None:
            raise RuntimeError("CLIPDataModule.facts() before the dataset was read: call setup() or setup_labels()")
        return DataFacts(clean_labels_known=self.clean_labels_known, val_is_test=self.val_from == "test",
                         noise_protocol=self.noise.protocol if self.noise is not None else "clean",
                         superclass_of=self.splits.superclass_of,
                         description_aliases=self.splits.description_aliases)

    @property
    def clean_labels_known(self) -> bool:
        """Whether the training set's `clean_label` is ground truth, so that a method's clean/noisy verdicts can be
        scored: the dataset publishes true labels (CIFAR-100N, a CSV with a clean_label column), or a synthetic
        protocol corrupted labels taken as clean. Labels with real noise and no annotation (noise=real on
        Animal-10N or a folder of images) are served as their own clean labels: False."""
        if self.splits is not None and self.splits.clean_labels_known:
            return True
        return self.noise is None or self.noise.protocol != "real"

    def train_paths(self) -> list[str | None] | None:
        """The training images' files in training-set order (label_issues.csv's `path`); None when the
        dataset's images are not files (in-memory arrays, the generated synthetic world)."""
        paths = [self.train_split.path(i) for i in range(len(self.train_split))]
        return paths if any(p is not None for p in paths) else None

    def num_train(self) -> int:
        return int(len(self.train_labels))

    @property
    def test_set_names(self) -> list[str]:
        return list(self.test_splits)

    def _transforms(self, size: int, mean, std):
        train = train_transform(size, mean, std, self.crop_scale) if self.train_aug == "views" else test_transform(size, mean, std)
        return train, test_transform(size, mean, std)

    def _build_datasets(self) -> None:
        from noisy_prompt.clip.factory import create_clip

        bundle = self.clip_bundle if self.clip_bundle is not None else create_clip(**self.backbone)
        train_tf, test_tf = self._transforms(bundle.image_size, bundle.mean, bundle.std)
        def clean_of(split):
            return np.asarray(split.clean_labels if split.clean_labels is not None else split.labels)
        if self.input == "images":
            size = bundle.image_size
            memo = {}  # one memoising dataset per split (val = test shares it)

            def eval_set(split, labels, clean):
                if id(split) not in memo:
                    memo[id(split)] = LabeledImages(split, test_tf, labels, clean, memo=self._memo_eval(split, size))
                return memo[id(split)]

            self.train_set = LabeledImages(self.train_split, train_tf, self.train_labels, self.train_clean,
                                           memo=self.train_aug == "none" and self._memo_eval(self.train_split, size))
            self.train_eval_set = LabeledImages(self.train_split, test_tf, self.train_labels, self.train_clean,
                                                memo=self._memo_eval(self.train_split, size))
            self.val_set = None if self.val_split is None else eval_set(self.val_split, np.asarray(self.val_split.labels), clean_of(self.val_split))
            self.test_sets = {k: eval_set(s, np.asarray(s.labels), clean_of(s)) for k, s in self.test_splits.items()}
            return
        from noisy_prompt.data.features import FeatureCache

        visual = bundle.model.visual.to(self.device)
        was_training = visual.training
        visual.eval()
        cache = FeatureCache(self.cache_dir, bundle.identity)
        self.feature_dtype = cache.stored_dtype

        def encode(x):
            return visual(x)

        def feats(split, name, tf, view=0, aug_seed=None):
            return cache.features(split, dataset=self.reader, split_name=name, transform=tf, transform_id=describe(tf),
                                  encode=encode, view=view, aug_seed=aug_seed, batch_size=self.eval_batch_size,
                                  num_workers=self.num_workers, device=self.device)

        if self.train_aug == "views":
            views = torch.stack([feats(self.train_split, "train", train_tf, v, self.aug_seed) for v in range(self.views)])
        else:
            views = feats(self.train_split, "train", test_tf).unsqueeze(0)
        self.train_set = LabeledFeatures(views, self.train_labels, self.train_clean)
        self.train_eval_set = LabeledFeatures(feats(self.train_split, "train", test_tf).unsqueeze(0), self.train_labels, self.train_clean)
        self.val_set = None if self.val_split is None else LabeledFeatures(feats(self.val_split, "val", test_tf).unsqueeze(0), np.asarray(self.val_split.labels), clean_of(self.val_split))
        self.test_sets = {k: LabeledFeatures(feats(s, k, test_tf).unsqueeze(0), np.asarray(s.labels), clean_of(s)) for k, s in self.test_splits.items()}
        visual.train(was_training)
        if self.device != "cpu":
            visual.to("cpu")  # the shared CLIP goes back where the method expects to find it
        del bundle, visual

    def set_epoch(self, epoch: int) -> None:
        if isinstance(self.train_set, LabeledFeatures):
            self.train_set.set_epoch(epoch)
        if getattr(self, "_train_sampler", None) is not None:
            self._train_sampler.set_epoch(epoch)

    @staticmethod
    def _collate(ds):
        return collate_batch if isinstance(ds, LabeledFeatures) else None

    def _workers_for(self, ds) -> int:
        # Cached features are a tensor index, and a memoised evaluation set is faster in this process
        # (workers would each transform it again and ship the tensors back): no workers for either.
        if not isinstance(ds, LabeledImages) or ds.memo is not None:
            return 0
        return self.num_workers

    def _loader(self, ds, shuffle: bool, batch_size: int, drop_last: bool = False, exact: bool = False):
        workers = self._workers_for(ds)
        gen = torch.Generator().manual_seed(self.seed)
        sampler = _eval_sampler(ds) if exact else None
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                          num_workers=workers, generator=gen, drop_last=drop_last, persistent_workers=workers > 0,
                          pin_memory=self._pin_memory(), collate_fn=self._collate(ds))

    def train_dataloader(self):
        # Under DDP Lightning replaces this sampler with a DistributedSampler (itself seeded per epoch).
        self._train_sampler = EpochShuffleSampler(len(self.train_set), self.seed)
        workers = self._workers_for(self.train_set)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=self._train_sampler, num_workers=workers,
                          generator=torch.Generator().manual_seed(self.seed), persistent_workers=workers > 0,
                          pin_memory=self._pin_memory(), collate_fn=self._collate(self.train_set))

    def val_dataloader(self):
        return [] if self.val_set is None else self._loader(self.val_set, False, self.eval_batch_size, exact=True)

    def test_dataloader(self):
        return [self._loader(ds, False, self.eval_batch_size, exact=True) for ds in self.test_sets.values()]

    def train_eval_dataloader(self):
        return self._loader(self.train_eval_set, False, self.eval_batch_size)

    def noise_summary(self, include_transition: bool = True) -> dict:
        out = {"protocol": getattr(self.noise, "protocol", "clean"), "rate": getattr(self.noise, "rate", 0.0),
               "name": getattr(self.noise, "name", "clean"), "num_train": int(len(self.train_labels))}
        out["realised_rate"] = float(np.mean(self.train_labels != self.train_clean))
        if self.noise_result is not None:
            out.update({k: v for k, v in self.noise_result.summary(include_transition).items() if k != "realised_rate"})
        return out
