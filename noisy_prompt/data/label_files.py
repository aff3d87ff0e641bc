"""The label files of each real dataset, hashed at load time so that a result is never reused for other labels.

Real datasets publish no content digest, and their label files have been replaced upstream under the
same name. Each run hashes the files that hold a dataset's labels (split files, index files, label
arrays; never the image folders) and records them in results.json (`label_files`: path relative to the
data root -> sha256) and folded into `data_digest`; `cell.check_digests` refuses to reuse a finished
cell (or resume a checkpoint) whose label files changed, naming the file. For files with a published
sha256 (`KNOWN_SHA256`) a mismatch is logged with both hashes.

Datasets whose labels are folder or file names (ImageNet's wnid folders, Food-101N's class folders,
Animal-10N's file-name prefixes) have only their class-name index hashed here; their images are keyed
by path, size and mtime in the feature cache.

A user's own dataset (`data=csv`, `data=folder`) has its label files named by the reader's options, not
found under the data root (`READER_LABEL_FILES`): the CSV files and the class names file, recorded by
absolute path. Their `data_digest` stays the one the reader publishes (readers.DIGESTS: the CSV bytes;
a folder's file list, since there the folder names are the labels); the record of the files is what lets
a refusal name the one that changed.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

from noisy_prompt.data.readers import coop, fulldata, generic

log = logging.getLogger(__name__)

# File name -> the sha256 its publisher gives. Empty: neither CIFAR-N's repository nor CoOp's split files
# publish one that could be checked here, and a hash copied from a local download would pin whatever that
# download held. A maintainer who verifies a published digest adds it here; a mismatch then warns.
KNOWN_SHA256: dict[str, str] = {}


def _split_files(name: str) -> Callable[[Path], list[Path]]:
    dir_name, _, split_file, _ = coop.SPLIT_DATASETS[name]
    return lambda root: [root / dir_name / split_file]


def _cifar(root: Path) -> list[Path]:
    # The python pickles hold the images and their fine_labels together (about 160 MB, well under a second).
    return [root / fulldata.CIFAR_DIR / n for n in ("train", "test", "meta")]


def _cifar100n(root: Path) -> list[Path]:
    human = [root / fulldata.CIFAR100N_FILE, root / fulldata.CIFAR_DIR / fulldata.CIFAR100N_FILE]
    return _cifar(root) + [next((p for p in human if p.exists()), human[0])]


# dataset (reader) name -> the files below the data root that hold its labels
LABEL_FILES: dict[str, Callable[[Path], list[Path]]] = {
    **{n: _split_files(n) for n in coop.SPLIT_DATASETS},
    "fgvc_aircraft": lambda r: [r / "fgvc_aircraft" / f for f in ("variants.txt", "images_variant_train.txt",
                                                                   "images_variant_val.txt", "images_variant_test.txt")],
    "imagenet": lambda r: [r / "imagenet" / "classnames.txt"],
    "cifar100": _cifar,
    "cifar100n": _cifar100n,
    "webvision": lambda r: [r / "webvision" / "info" / f for f in ("train_filelist_google.txt", "val_filelist.txt")],
    "food101n": lambda r: [r / "food-101" / "split_zhou_Food101.json"],
    "clothing1m": lambda r: [r / "clothing1m" / f"{n}.txt" for n in ("noisy_label_kv", "clean_label_kv",
                                                                     "noisy_train_key_list", "clean_test_key_list")],
}


# reader name -> the label files named by its options (the reader kwargs), those that exist
READER_LABEL_FILES: dict[str, Callable[..., list[Path]]] = {
    "csv": generic.csv_label_files,
    "folder": generic.folder_label_files,
}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def label_file_hashes(name: str, root: str | Path | None, **reader_kwargs) -> dict[str, str] | None:
    """{path relative to the data root: sha256} of dataset `name`'s label files; None when the dataset has
    none listed here or one is missing (the reader reports a missing file; nothing to pin then). For the
    readers of READER_LABEL_FILES: {absolute path: sha256} of the files its options (`reader_kwargs`) name."""
    if name in READER_LABEL_FILES:
        files = READER_LABEL_FILES[name](**reader_kwargs)
        return {str(f.absolute()): sha256_file(f) for f in files} or None
    if name not in LABEL_FILES:
        return None
    from noisy_prompt.data.readers import default_data_root

    data_root = coop.as_data_root(root if root else default_data_root())
    files = LABEL_FILES[name](data_root)
    if not all(f.is_file() for f in files):
        return None
    out = {}
    for f in files:
        out[coop.root_key(data_root, f)] = sha = sha256_file(f)
        known = KNOWN_SHA256.get(f.name)
        if known is not None and known != sha:
            log.warning("%s differs from the published file: sha256 %s, published %s. The labels may have been "
                        "replaced (upstream or locally); results made with it are not comparable to the paper's.",
                        f, sha, known)
    return out


def fold(hashes: dict[str, str]) -> str:
    """The one digest (16 hex) of a set of label files, for `data_digest`."""
    text = "\n".join(f"{k}\0{v}" for k, v in sorted(hashes.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
