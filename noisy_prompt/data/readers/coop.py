"""Readers for the CoOp few-shot datasets, in the layout of CoOp's DATASETS.md.

Every reader takes the *data root* (the dataset folder lies below it) and returns train/val/test
with items = absolute image paths (str), keys = the image path relative to the data root (posix, e.g.
"oxford_pets/images/Abyssinian_1.jpg"; the same image gets the same key in every run and dataset),
and `loader = open_rgb`. Before reading anything, a reader checks all the paths it needs and raises
one DatasetLayoutError listing every missing one. It only checks folders and index files; the
individual images are checked by `python -m noisy_prompt.data verify` (statting 100k files on every
run would be slow, and a missing image still fails at load time with its path).

Split files (`split_zhou_*.json`): {"train"|"val"|"test": [[relpath, label, classname], ...]},
relpath below the dataset's image folder. Class names: `_` -> space; label i's name comes from the
split entries (all entries of a label must agree, labels must be 0..C-1).

ImageNet has no split file and no val split: labels follow the sorted wnid folders of
images/train (as CoOp), names come from classnames.txt, images/val is the test set, and `val` is
None: the caller draws its few-shot val from train (see fewshot.sample_fewshot_train_val).
File lists from folders are sorted by name (CoOp uses os.listdir order, which is not portable).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from noisy_prompt.data.base import DatasetLayoutError, DatasetSplits, ImageSplit, open_rgb
from noisy_prompt.data.readers.templates import clean_classname, description_aliases_for, templates_for  # noqa: F401

COOP_DATASETS_MD = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"


# ---------------------------------------------------------------------------------------------
# helpers shared with fulldata.py
# ---------------------------------------------------------------------------------------------
def require_paths(
    dataset: str, root: Path, required: Iterable[Path | Sequence[Path]], layout: str, source: str
) -> None:
    """Raise one DatasetLayoutError naming every required path that does not exist.

    An entry may be a tuple of alternatives (any one of them is enough); it is reported as
    "a (or b)".
    """
    missing: list[str] = []
    for entry in required:
        alternatives = [entry] if isinstance(entry, Path) else list(entry)
        if not any(p.exists() for p in alternatives):
            first, *others = (str(p) for p in alternatives)
            missing.append(first + (f" (or {', or '.join(others)})" if others else ""))
    if missing:
        raise DatasetLayoutError(dataset, root, missing, layout, source)


def as_data_root(root: Path | str) -> Path:
    """Absolute (not symlink-resolved) data root, so items do not depend on the cwd."""
    return Path(root).expanduser().absolute()


def root_key(data_root: Path, path: Path) -> str:
    """The stable key of a file: its path relative to the data root, with '/' separators."""
    return path.relative_to(data_root).as_posix()



def list_files(folder: Path) -> list[Path]:
    """Non-hidden files directly in `folder`, sorted by name (deterministic across machines)."""
    return [
        folder / e.name
        for e in sorted(os.scandir(folder), key=lambda e: e.name)
        if not e.name.startswith(".") and e.is_file()
    ]


def list_subdirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def file_split(
    data_root: Path, paths: Sequence[Path], labels: Sequence[int], classnames: list[str]
) -> ImageSplit:
    return ImageSplit(
        items=[str(p) for p in paths],
        labels=[int(y) for y in labels],
        classnames=classnames,
        loader=open_rgb,
        keys=[root_key(data_root, p) for p in paths],
    )


# ---------------------------------------------------------------------------------------------
# split_zhou_*.json datasets
# ---------------------------------------------------------------------------------------------
def _layout(dir_name: str, image_dir: str, split_file: str) -> str:
    return f"""
<data root>/{dir_name}/
  {image_dir + '/' if image_dir else '<image folders named in the split file>'}   (images; paths in the split file are relative to it)
  {split_file}   ({{"train"|"val"|"test": [[relpath, label, classname], ...]}})
"""


# config name -> (dir under root, image dir under it ("" = the dataset dir), split file, where from)
SPLIT_DATASETS: dict[str, tuple[str, str, str, str]] = {
    "caltech101": (
        "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
        "101_ObjectCategories.tar.gz from https://data.caltech.edu/records/mzrjq-6wc02 ; "
        f"split_zhou_Caltech101.json from CoOp's DATASETS.md ({COOP_DATASETS_MD}#caltech101)",
    ),
    "oxford_pets": (
        "oxford_pets", "images", "split_zhou_OxfordPets.json",
        "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz (and annotations.tar.gz) ; "
        f"split_zhou_OxfordPets.json from CoOp's DATASETS.md ({COOP_DATASETS_MD}#oxfordpets)",
    ),
    "oxford_flowers": (
        "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
        "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz ; split_zhou_OxfordFlowers.json "
        f"(and cat_to_name.json) from CoOp's DATASETS.md ({COOP_DATASETS_MD}#flowers102)",
    ),
    "food101": (
        "food-101", "images", "split_zhou_Food101.json",
        "food-101.tar.gz from https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/ ; "
        f"split_zhou_Food101.json from CoOp's DATASETS.md ({COOP_DATASETS_MD}#food101)",
    ),
    "dtd": (
        "dtd", "images", "split_zhou_DescribableTextures.json",
        "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz ; "
        f"split_zhou_DescribableTextures.json from CoOp's DATASETS.md ({COOP_DATASETS_MD}#dtd)",
    ),
    "ucf101": (
        "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
        "UCF-101-midframes.zip and split_zhou_UCF101.json, both linked from CoOp's DATASETS.md "
        f"({COOP_DATASETS_MD}#ucf101)",
    ),
    "stanford_cars": (
        "stanford_cars", "", "split_zhou_StanfordCars.json",
        "cars_train/, cars_test/ (Stanford Cars, see CoOp's DATASETS.md) ; split_zhou_StanfordCars.json "
        f"from CoOp's DATASETS.md ({COOP_DATASETS_MD}#stanfordcars)",
    ),
    "sun397": (
        "sun397", "SUN397", "split_zhou_SUN397.json",
        "http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz ; split_zhou_SUN397.json from "
        f"CoOp's DATASETS.md ({COOP_DATASETS_MD}#sun397)",
    ),
    "eurosat": (
        "eurosat", "2750", "split_zhou_EuroSAT.json",
        "EuroSAT.zip (RGB, folder 2750/) from https://github.com/phelber/EuroSAT ; split_zhou_EuroSAT.json "
        f"from CoOp's DATASETS.md ({COOP_DATASETS_MD}#eurosat)",
    ),
}


def split_layout(name: str) -> str:
    dir_name, image_dir, split_file, _ = SPLIT_DATASETS[name]
    return _layout(dir_name, image_dir, split_file)


def split_classnames(path: Path, split: dict[str, list]) -> list[str]:
    """Class names in label order from the (label, classname) pairs of all three splits."""
    names: dict[int, str] = {}
    for part in ("train", "val", "test"):
        for relpath, label, classname in split[part]:
            name = clean_classname(classname)
            if names.setdefault(label, name) != name:
                raise ValueError(
                    f"{path}: label {label} is named both '{names[label]}' and '{name}' "
                    f"(e.g. at {part} entry {relpath!r}); expected one class name per label"
                )
    expected = list(range(len(names)))
    if sorted(names) != expected:
        absent = sorted(set(range(max(names) + 1)) - set(names)) if names else []
        raise ValueError(f"{path}: labels must be 0..C-1 with every label used; missing labels {absent[:20]}")
    return [names[i] for i in expected]


def read_split_file(path: Path) -> dict[str, list[tuple[str, int, str]]]:
    """Parse and validate a split_zhou JSON file; errors name the file, the key and the entry."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict) or any(k not in raw for k in ("train", "val", "test")):
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{path}: expected a JSON object with keys 'train', 'val', 'test'; got {got}")
    out: dict[str, list[tuple[str, int, str]]] = {}
    for part in ("train", "val", "test"):
        rows = []
        for i, entry in enumerate(raw[part]):
            ok = (
                isinstance(entry, (list, tuple)) and len(entry) == 3 and isinstance(entry[0], str)
                and isinstance(entry[1], int) and not isinstance(entry[1], bool) and entry[1] >= 0
                and isinstance(entry[2], str)
            )
            if not ok:
                raise ValueError(
                    f"{path}: {part}[{i}] = {entry!r}; expected [relpath: str, label: int >= 0, classname: str]"
                )
            rows.append((entry[0], entry[1], entry[2]))
        out[part] = rows
    return out


def read_split_dataset(name: str, root: Path | str) -> DatasetSplits:
    """Any dataset of SPLIT_DATASETS: images + split_zhou file."""
    data_root = as_data_root(root)
    dir_name, image_dir, split_file, source = SPLIT_DATASETS[name]
    ds_dir = data_root / dir_name
    img_dir = ds_dir / image_dir if image_dir else ds_dir
    split_path = ds_dir / split_file
    require_paths(name, data_root, [img_dir, split_path], split_layout(name), source)

    split = read_split_file(split_path)
    classnames = split_classnames(split_path, split)

    def part(rows: list[tuple[str, int, str]]) -> ImageSplit:
        return file_split(data_root, [img_dir / r for r, _, _ in rows], [y for _, y, _ in rows], classnames)

    return DatasetSplits(
        name=name, train=part(split["train"]), val=part(split["val"]), test=part(split["test"]),
        templates=templates_for(name), description_aliases=description_aliases_for(name),
    )


def read_caltech101(root: Path | str) -> DatasetSplits:
    return read_split_dataset("caltech101", root)


def read_oxford_pets(root: Path | str) -> DatasetSplits:
    return read_split_dataset("oxford_pets", root)


def read_oxford_flowers(root: Path | str) -> DatasetSplits:
    return read_split_dataset("oxford_flowers", root)


def read_food101(root: Path | str) -> DatasetSplits:
    return read_split_dataset("food101", root)


def read_dtd(root: Path | str) -> DatasetSplits:
    return read_split_dataset("dtd", root)


def read_ucf101(root: Path | str) -> DatasetSplits:
    return read_split_dataset("ucf101", root)


def read_stanford_cars(root: Path | str) -> DatasetSplits:
    return read_split_dataset("stanford_cars", root)


def read_sun397(root: Path | str) -> DatasetSplits:
    return read_split_dataset("sun397", root)


def read_eurosat(root: Path | str) -> DatasetSplits:
    return read_split_dataset("eurosat", root)


# ---------------------------------------------------------------------------------------------
# FGVC-Aircraft: no split_zhou file in CoOp; it reads the dataset's own variant lists
# ---------------------------------------------------------------------------------------------
FGVC_LAYOUT = """
<data root>/fgvc_aircraft/          (the data/ folder of fgvc-aircraft-2013b, renamed)
  images/<id>.jpg
  variants.txt                     (one class name per line; line order = label order)
  images_variant_train.txt         (<id> <variant name> per line)
  images_variant_val.txt
  images_variant_test.txt
"""
FGVC_SOURCE = (
    "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz "
    f"(keep data/, rename it fgvc_aircraft/), as in CoOp's DATASETS.md ({COOP_DATASETS_MD}#fgvcaircraft)"
)


def read_fgvc_aircraft(root: Path | str) -> DatasetSplits:
    data_root = as_data_root(root)
    ds_dir = data_root / "fgvc_aircraft"
    lists = {part: ds_dir / f"images_variant_{part}.txt" for part in ("train", "val", "test")}
    require_paths(
        "fgvc_aircraft", data_root, [ds_dir / "images", ds_dir / "variants.txt", *lists.values()],
        FGVC_LAYOUT, FGVC_SOURCE,
    )
    variants = [ln.strip() for ln in (ds_dir / "variants.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
    label_of = {v: i for i, v in enumerate(variants)}

    def part(path: Path) -> ImageSplit:
        paths, labels = [], []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            image_id, _, variant = line.strip().partition(" ")
            if variant not in label_of:
                raise ValueError(f"{path}:{n}: variant {variant!r} is not in variants.txt")
            paths.append(ds_dir / "images" / f"{image_id}.jpg")
            labels.append(label_of[variant])
        return file_split(data_root, paths, labels, [clean_classname(v) for v in variants])

    return DatasetSplits(
        name="fgvc_aircraft", train=part(lists["train"]), val=part(lists["val"]), test=part(lists["test"]),
        templates=templates_for("fgvc_aircraft"),
    )


# ---------------------------------------------------------------------------------------------
# ImageNet
# ---------------------------------------------------------------------------------------------
IMAGENET_LAYOUT = """
<data root>/imagenet/
  images/train/<wnid>/*.JPEG   (1000 folders n01440764, ...; labels = sorted wnid order)
  images/val/<wnid>/*.JPEG     (the same 1000 folders; used as the test set)
  classnames.txt               (`<wnid> <class name>` per line)
"""
IMAGENET_SOURCE = (
    "train/val images from https://image-net.org (val sorted into wnid folders); classnames.txt "
    f"(CLIP's class names) from CoOp's DATASETS.md ({COOP_DATASETS_MD}#imagenet)"
)


def read_imagenet_classnames(path: Path) -> dict[str, str]:
    names: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, name = line.strip().partition(" ")
        if not name.strip():
            raise ValueError(f"{path}:{n}: expected '<wnid> <class name>', got {line!r}")
        names[wnid] = name.strip()
    return names


def read_imagenet(root: Path | str) -> DatasetSplits:
    data_root = as_data_root(root)
    ds_dir = data_root / "imagenet"
    train_dir, val_dir, names_path = ds_dir / "images" / "train", ds_dir / "images" / "val", ds_dir / "classnames.txt"
    require_paths("imagenet", data_root, [train_dir, val_dir, names_path], IMAGENET_LAYOUT, IMAGENET_SOURCE)

    names = read_imagenet_classnames(names_path)
    wnids = list_subdirs(train_dir)
    if not wnids:
        raise ValueError(f"{train_dir}: no class folders found; expected one folder per wnid")
    unnamed = [w for w in wnids if w not in names]
    if unnamed:
        raise ValueError(f"{names_path}: no class name for wnid(s) {unnamed[:20]} found in {train_dir}")
    val_wnids = list_subdirs(val_dir)
    if val_wnids != wnids:
        only_train = sorted(set(wnids) - set(val_wnids))[:20]
        only_val = sorted(set(val_wnids) - set(wnids))[:20]
        raise ValueError(
            f"{val_dir}: class folders differ from {train_dir} (only in train: {only_train}, only in "
            f"val: {only_val}); the val images must be sorted into the same wnid folders"
        )
    classnames = [clean_classname(names[w]) for w in wnids]

    def part(split_dir: Path) -> ImageSplit:
        paths, labels = [], []
        for label, wnid in enumerate(wnids):
            files = list_files(split_dir / wnid)
            paths += files
            labels += [label] * len(files)
        split = file_split(data_root, paths, labels, classnames)
        split.class_sources = [str(split_dir / w) for w in wnids]  # an empty class names its folder
        return split

    return DatasetSplits(
        name="imagenet", train=part(train_dir), val=None, test=part(val_dir), templates=templates_for("imagenet"),
        description_aliases=description_aliases_for("imagenet"),
    )
