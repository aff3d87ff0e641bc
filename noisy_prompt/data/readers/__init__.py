"""Name -> reader. An explicit table (no registration by import side effects)."""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable

from noisy_prompt.data.base import DatasetSplits

# module:function, imported lazily so a missing optional dependency only affects its own dataset.
READERS: dict[str, str] = {
    "synthetic": "noisy_prompt.synthetic.dataset:read_synthetic",
    "imagenet": "noisy_prompt.data.readers.coop:read_imagenet",
    "caltech101": "noisy_prompt.data.readers.coop:read_caltech101",
    "oxford_pets": "noisy_prompt.data.readers.coop:read_oxford_pets",
    "oxford_flowers": "noisy_prompt.data.readers.coop:read_oxford_flowers",
    "food101": "noisy_prompt.data.readers.coop:read_food101",
    "dtd": "noisy_prompt.data.readers.coop:read_dtd",
    "ucf101": "noisy_prompt.data.readers.coop:read_ucf101",
    "stanford_cars": "noisy_prompt.data.readers.coop:read_stanford_cars",
    "fgvc_aircraft": "noisy_prompt.data.readers.coop:read_fgvc_aircraft",
    "sun397": "noisy_prompt.data.readers.coop:read_sun397",
    "eurosat": "noisy_prompt.data.readers.coop:read_eurosat",
    "cifar100": "noisy_prompt.data.readers.fulldata:read_cifar100",
    "cifar100n": "noisy_prompt.data.readers.fulldata:read_cifar100n",
    "animal10n": "noisy_prompt.data.readers.fulldata:read_animal10n",
    "webvision": "noisy_prompt.data.readers.fulldata:read_webvision",
    "food101n": "noisy_prompt.data.readers.fulldata:read_food101n",
    "clothing1m": "noisy_prompt.data.readers.fulldata:read_clothing1m",
    # a user's own images: a folder tree or CSV files (generic.py)
    "folder": "noisy_prompt.data.readers.generic:read_folder",
    "csv": "noisy_prompt.data.readers.generic:read_csv_dataset",
}

# Datasets that can name their content cheaply publish a digest of it (module:function taking the
# reader's root and kwargs); a run records it and never reuses a result of other content. The built-in
# world hashes its code; a real dataset on disk is named by its label files (data/label_files.py), not
# its images (hashing those would cost a full read).
DIGESTS: dict[str, str] = {
    "synthetic": "noisy_prompt.synthetic.dataset:content_digest",
    "folder": "noisy_prompt.data.readers.generic:folder_digest",  # the file list, not the pixels
    "csv": "noisy_prompt.data.readers.generic:csv_digest",  # the CSV files' bytes (the labels)
}


def get_reader(name: str) -> Callable[..., DatasetSplits]:
    if name not in READERS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(READERS))}")
    module, fn = READERS[name].split(":")
    return getattr(importlib.import_module(module), fn)


def default_data_root() -> Path:
    return Path(os.environ.get("NOISY_PROMPT_DATA", "./data"))


def read_dataset(name: str, root: str | Path | None = None, **kwargs) -> DatasetSplits:
    return get_reader(name)(Path(root) if root else default_data_root(), **kwargs)


def data_digest(name: str, root: str | Path | None = None, **kwargs) -> str | None:
    """The digest dataset `name` publishes of its content (DIGESTS), else the digest of its label files
    (label_files.LABEL_FILES), or None when it has neither (or a label file is missing)."""
    get_reader(name)  # an unknown name fails here, with the list of known ones
    if name not in DIGESTS:
        from noisy_prompt.data.label_files import fold, label_file_hashes

        hashes = label_file_hashes(name, root)
        return None if not hashes else fold(hashes)
    module, fn = DIGESTS[name].split(":")
    return getattr(importlib.import_module(module), fn)(root, **kwargs)
