"""Tiny fake dataset trees in the real on-disk layouts (docs/datasets.md), for reader and end-to-end tests.

Every `write_<name>(root, ...)` writes below `root` (the *data root*) and returns `root`, so
`read_<name>(write_<name>(tmp_path))` works and `paths.data_dir=<root>` points a run at it. Images are
4x4 pixels (JPEG, some PNG, one grayscale JPEG in Animal-10N), each with its own colour. Split files
list items grouped by ascending label (train, then val, then test), like CoOp's. The layouts are
written from the documented layouts, independently of the readers' constants, so that a wrong path in a reader
fails a test. `WRITERS` maps each data config name to its writer.

`n_train` may be an int (per class) or a list (per class, so classes can differ in size).
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

SIZE = (4, 4)


def _colour(*ids: int) -> tuple[int, int, int]:
    h = 0
    for i in ids:
        h = (h * 131 + i + 7) % 2_147_483_647
    return (h * 37 % 256, h * 101 % 256, h * 59 % 256)


def write_image(path: Path, colour: tuple[int, int, int], mode: str = "RGB") -> Path:
    """A 4x4 image of one colour; the format follows the suffix (.jpg/.JPEG -> JPEG, .png -> PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", SIZE, colour)
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path, format="PNG" if path.suffix.lower() == ".png" else "JPEG")
    return path


def _per_class(n: int | Sequence[int], n_classes: int) -> list[int]:
    counts = [n] * n_classes if isinstance(n, int) else list(n)
    if len(counts) != n_classes:
        raise ValueError(f"got {len(counts)} per-class counts for {n_classes} classes")
    return counts


# ---------------------------------------------------------------------------------------------
# CoOp split_zhou datasets
# ---------------------------------------------------------------------------------------------
RelpathFn = Callable[[str, int, str, int], str]  # (classname, label, part, index) -> relpath


def write_split_tree(
    root: Path,
    dir_name: str,
    image_dir: str,
    split_file: str,
    classnames: Sequence[str],
    relpath: RelpathFn,
    n_train: int | Sequence[int] = 5,
    n_val: int = 2,
    n_test: int = 2,
) -> Path:
    """<root>/<dir_name>/<image_dir>/<relpath> images + <root>/<dir_name>/<split_file>; returns root."""
    root = Path(root)
    ds = root / dir_name
    img_dir = ds / image_dir if image_dir else ds
    counts = {"train": _per_class(n_train, len(classnames)), "val": [n_val] * len(classnames),
              "test": [n_test] * len(classnames)}
    split: dict[str, list] = {}
    for p_i, part in enumerate(("train", "val", "test")):
        rows = []
        for label, name in enumerate(classnames):
            for i in range(counts[part][label]):
                rel = relpath(name, label, part, i)
                write_image(img_dir / rel, _colour(p_i, label, i))
                rows.append([rel, label, name])
        split[part] = rows
    ds.mkdir(parents=True, exist_ok=True)
    (ds / split_file).write_text(json.dumps(split), encoding="utf-8")
    return root


CALTECH_CLASSES = ["accordion", "airplane", "face", "stop_sign"]
PETS_CLASSES = ["abyssinian", "american_bulldog", "great_pyrenees"]
FLOWERS_CLASSES = ["pink primrose", "globe thistle", "hard-leaved pocket orchid"]
FOOD_CLASSES = ["apple_pie", "baby_back_ribs", "beef_tartare"]
DTD_CLASSES = ["banded", "blotchy", "braided"]
UCF_CLASSES = ["Apply_Eye_Makeup", "Apply_Lipstick", "Archery"]
CARS_CLASSES = ["2012 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Acura TL Sedan"]
SUN_CLASSES = ["abbey", "indoor airplane_cabin", "outdoor apartment_building"]
EUROSAT_CLASSES = ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land"]


def write_caltech101(root: Path, n_train: int | Sequence[int] = 5, n_val: int = 2, n_test: int = 2) -> Path:
    """caltech-101/101_ObjectCategories/<class>/image_XXXX.jpg + split_zhou_Caltech101.json."""
    return write_split_tree(
        root, "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", CALTECH_CLASSES,
        lambda c, y, p, i: f"{c}/image_{p}{i:04d}.jpg", n_train, n_val, n_test,
    )


def write_oxford_pets(root: Path, n_train: int | Sequence[int] = 5, n_val: int = 2, n_test: int = 2) -> Path:
    """oxford_pets/images/<Breed>_<n>.jpg (flat) + annotations/ + split_zhou_OxfordPets.json."""
    out = write_split_tree(
        root, "oxford_pets", "images", "split_zhou_OxfordPets.json", PETS_CLASSES,
        lambda c, y, p, i: f"{c}_{p}{i}.jpg", n_train, n_val, n_test,
    )
    (Path(root) / "oxford_pets" / "annotations").mkdir(exist_ok=True)
    return out


def write_oxford_flowers(root: Path, n_train: int | Sequence[int] = 5, n_val: int = 2, n_test: int = 2) -> Path:
    """oxford_flowers/jpg/image_XXXXX.jpg (flat) + split_zhou_OxfordFlowers.json (+ cat_to_name.json)."""
    out = write_split_tree(
        root, "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", FLOWERS_CLASSES,
        lambda c, y, p, i: f"image_{y}{p}{i:04d}.jpg", n_train, n_val, n_test,
    )
    names = {str(i + 1): n for i, n in enumerate(FLOWERS_CLASSES)}
    (Path(root) / "oxford_flowers" / "cat_to_name.json").write_text(json.dumps(names), encoding="utf-8")
    return out


def write_food101(root: Path, n_train: int | Sequence[int] = 5, n_val: int = 2, n_test: int = 2) -> Path:
    """food-101/images/<class>/<n>.jpg + split_zhou_Food101.json."""
    return write_split_tree(
        root, "food-101", "images", "split_zhou_Food101.json", FOOD_CLASSES,
        lambda c, y, p, i: f"{c}/{p}{i}.jpg", n_train, n_val, n_test,
    )


def write_dtd(root: Path, n_train: int | Sequence[int] = 5, n_val: int = 2, n_test: int = 2) -> Path:
    """dtd/images/<class>/<class>_XXXX.jpg + split_zhou_DescribableTextures.json."""
    return write_split_tree(
        root, "dtd", "images", "split_zhou_DescribableTextures.json", DTD_CLASSES,
        lambda c, y, p, i: f"{c}/{c}_{p}{i:04d}.jpg", n_train, n_val, n_test,
    )


def write_ucf101(root: Path, n_train: int | Sequence[int] = 5, n_val: int = 2, n_test: int = 2) -> Path:
    """ucf101/UCF-101-midframes/<Class>/v_<Class>_gXX_cXX.jpg + split_zhou_UCF101.json."""
    return write_split_tree(
        root, "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", UCF_CLASSES,
        lambda c, y, p, i: f"{c}/v_{c.replace('_', '')}_{p}_c{i:02d}.jpg", n_train, n_val, n_test,
    )


def write_stanford_cars(root: Path, n_train: int | Sequence[int] = 5, n_val: int = 2, n_test: int = 2) -> Path:
    """stanford_cars/cars_train|cars_test/XXXXX.jpg (paths relative to stanford_cars/) + split file."""
    return write_split_tree(
        root, "stanford_cars", "", "split_zhou_StanfordCars.json", CARS_CLASSES,
        lambda c, y, p, i: f"{'cars_test' if p == 'test' else 'cars_train'}/{y}{p}{i:05d}.jpg", n_train, n_val, n_test,
    )


def write_sun397(root: Path, n_train: int | Sequence[int] = 5, n_val: int = 2, n_test: int = 2) -> Path:
    """sun397/SUN397/<l>/<class path>/sun_X.jpg + split_zhou_SUN397.json."""
    return write_split_tree(
        root, "sun397", "SUN397", "split_zhou_SUN397.json", SUN_CLASSES,
        lambda c, y, p, i: f"a/{'/'.join(reversed(c.split(' ')))}/sun_{p}{i}.jpg", n_train, n_val, n_test,
    )


def write_eurosat(root: Path, n_train: int | Sequence[int] = 5, n_val: int = 2, n_test: int = 2) -> Path:
    """eurosat/2750/<Folder>/<Folder>_<n>.jpg + split_zhou_EuroSAT.json."""
    return write_split_tree(
        root, "eurosat", "2750", "split_zhou_EuroSAT.json", EUROSAT_CLASSES,
        lambda c, y, p, i: f"C{y}/C{y}_{p}{i}.jpg", n_train, n_val, n_test,
    )


FGVC_VARIANTS = ["707-320", "A300B4", "F/A-18"]


def write_fgvc_aircraft(root: Path, n_train: int | Sequence[int] = 5, n_val: int = 2, n_test: int = 2) -> Path:
    """fgvc_aircraft/images/<id>.jpg, variants.txt, images_variant_{train,val,test}.txt (`<id> <variant>`)."""
    root = Path(root)
    ds = root / "fgvc_aircraft"
    (ds / "images").mkdir(parents=True, exist_ok=True)
    (ds / "variants.txt").write_text("\n".join(FGVC_VARIANTS) + "\n", encoding="utf-8")
    counts = {"train": _per_class(n_train, len(FGVC_VARIANTS)), "val": [n_val] * 3, "test": [n_test] * 3}
    for p_i, part in enumerate(("train", "val", "test")):
        lines = []
        for y, variant in enumerate(FGVC_VARIANTS):
            for i in range(counts[part][y]):
                image_id = f"{p_i}{y}{i:05d}"
                write_image(ds / "images" / f"{image_id}.jpg", _colour(p_i, y, i))
                lines.append(f"{image_id} {variant}")
        (ds / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


IMAGENET_NAMES = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}


def write_imagenet(root: Path, n_train: int | Sequence[int] = 5, n_val: int = 2) -> Path:
    """imagenet/images/{train,val}/<wnid>/<wnid>_<n>.JPEG for 3 wnids + classnames.txt.

    classnames.txt also names one wnid without image folders (the real file names 1000), and the
    train folders are written in reverse wnid order so a reader that does not sort would fail.
    """
    root = Path(root)
    ds = root / "imagenet"
    wnids = sorted(IMAGENET_NAMES)
    counts = _per_class(n_train, len(wnids))
    for y in reversed(range(len(wnids))):
        for i in range(counts[y]):
            write_image(ds / "images" / "train" / wnids[y] / f"{wnids[y]}_{i}.JPEG", _colour(0, y, i))
        for i in range(n_val):
            write_image(ds / "images" / "val" / wnids[y] / f"ILSVRC2012_val_{y}{i:04d}.JPEG", _colour(1, y, i))
    lines = [f"{w} {n}" for w, n in IMAGENET_NAMES.items()] + ["n99999999 not a folder"]
    (ds / "classnames.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


# ---------------------------------------------------------------------------------------------
# CIFAR-100 / CIFAR-100N
# ---------------------------------------------------------------------------------------------
CIFAR_NAMES = ["apple", "aquarium_fish", "baby", "maple_tree", "zebra_like"]


def cifar_arrays(n: int, n_classes: int, offset: int) -> tuple[np.ndarray, list[int]]:
    """(N, 3072) uint8 rows in CIFAR's channel-first order and labels cycling through the classes."""
    rng = np.random.default_rng(offset)
    data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
    labels = [(i + offset) % n_classes for i in range(n)]
    return data, labels


def write_cifar100(root: Path, n_train: int = 20, n_test: int = 10) -> Path:
    """cifar-100-python/{train,test,meta}: latin1-loadable pickles with torchvision's keys, 5 classes."""
    root = Path(root)
    d = root / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    for name, n, offset in (("train", n_train, 0), ("test", n_test, 3)):
        data, labels = cifar_arrays(n, len(CIFAR_NAMES), offset)
        obj = {
            "filenames": [f"img_{name}_{i}.png" for i in range(n)], "batch_label": f"{name} batch",
            "fine_labels": labels, "coarse_labels": [y // 2 for y in labels], "data": data,
        }
        with open(d / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": CIFAR_NAMES, "coarse_label_names": ["a", "b", "c"]}, f, protocol=2)
    return root


def cifar_train_labels(root: Path) -> list[int]:
    with open(Path(root) / "cifar-100-python" / "train", "rb") as f:
        return list(pickle.load(f, encoding="latin1")["fine_labels"])


def write_cifar100n(
    root: Path,
    n_train: int = 20,
    n_test: int = 10,
    *,
    as_tensors: bool = False,
    in_cifar_dir: bool = False,
    clean_label: Sequence[int] | None = None,
    noisy_label: Sequence[int] | None = None,
) -> Path:
    """write_cifar100 + CIFAR-100_human.pt (torch.save of {'clean_label', 'noisy_label'}).

    Defaults: clean = the train fine labels, noisy = clean shifted by one class on every third row,
    numpy int64 arrays (as in CIFAR-N's file), saved at <root>/CIFAR-100_human.pt
    (`in_cifar_dir`: inside cifar-100-python/). Pass clean_label/noisy_label to write broken files.
    """
    import torch

    root = write_cifar100(root, n_train, n_test)
    clean = np.asarray(cifar_train_labels(root) if clean_label is None else clean_label, dtype=np.int64)
    if noisy_label is None:
        noisy = clean.copy()
        noisy[::3] = (noisy[::3] + 1) % len(CIFAR_NAMES)
    else:
        noisy = np.asarray(noisy_label, dtype=np.int64)
    obj = {"clean_label": clean, "noisy_label": noisy}
    if as_tensors:
        obj = {k: torch.from_numpy(v) for k, v in obj.items()}
    path = (root / "cifar-100-python" if in_cifar_dir else root) / "CIFAR-100_human.pt"
    torch.save(obj, path)
    return root


# ---------------------------------------------------------------------------------------------
# Animal-10N, WebVision, Food-101N, Clothing1M
# ---------------------------------------------------------------------------------------------
def write_animal10n(root: Path, n_train: int = 2, n_test: int = 1) -> Path:
    """animal10n/{training,testing}/<label>_<id>.jpg for labels 0..9; the first image is grayscale,
    and a stray Thumbs.db sits in training/ (not an image, must be ignored)."""
    root = Path(root)
    ds = root / "animal10n"
    for p_i, (part, n) in enumerate((("training", n_train), ("testing", n_test))):
        for y in range(10):
            for i in range(n):
                mode = "L" if (p_i, y, i) == (0, 0, 0) else "RGB"
                write_image(ds / part / f"{y}_{p_i}{y}{i:04d}.jpg", _colour(p_i, y, i), mode)
    (ds / "training" / "Thumbs.db").write_bytes(b"\0")
    return root


def write_webvision(root: Path, n_train: int = 2, n_val: int = 1, n_ilsvrc: int = 1) -> Path:
    """webvision/: info/train_filelist_google.txt + google/qXXXX/*.jpg, info/val_filelist.txt +
    val_images_256/, imagenet/val/<0..49>/. Train/val lists use labels 0, 1, 49 (kept) and 50, 999
    (dropped: mini-WebVision keeps labels < 50); only listed images are written."""
    root = Path(root)
    ds = root / "webvision"
    train_lines, val_lines = [], []
    for y in (0, 1, 49, 50, 999):
        for i in range(n_train):
            rel = f"google/q{y + 1:04d}/{i:08d}.jpg"
            write_image(ds / rel, _colour(0, y, i))
            train_lines.append(f"{rel} {y}")
        for i in range(n_val):
            name = f"val{y:04d}{i:02d}.jpg"
            write_image(ds / "val_images_256" / name, _colour(1, y, i))
            val_lines.append(f"{name} {y}")
    (ds / "info").mkdir(parents=True, exist_ok=True)
    (ds / "info" / "train_filelist_google.txt").write_text("\n".join(train_lines) + "\n", encoding="utf-8")
    (ds / "info" / "val_filelist.txt").write_text("\n".join(val_lines) + "\n", encoding="utf-8")
    for c in range(50):
        for i in range(n_ilsvrc):
            write_image(ds / "imagenet" / "val" / str(c) / f"ILSVRC2012_val_{c:03d}{i:02d}.JPEG", _colour(2, c, i))
    return root


def write_food101n(root: Path, n_train: int = 2, *, dir_name: str = "food-101n", n_test: int = 2) -> Path:
    """write_food101 + <dir_name>/images/<food class>/<hash>.jpg (folders in reverse order of
    creation, n_train per class). `dir_name` may be 'Food-101N' (the other accepted spelling)."""
    root = write_food101(root, n_test=n_test)
    for y in reversed(range(len(FOOD_CLASSES))):
        for i in range(n_train):
            write_image(root / dir_name / "images" / FOOD_CLASSES[y] / f"{y:02x}{i:030x}.jpg", _colour(3, y, i))
    return root


def write_clothing1m(root: Path, n_train: int = 2, n_test: int = 1) -> Path:
    """clothing1m/images/<a>/<bc>/*.jpg, noisy_label_kv.txt, clean_label_kv.txt (keys 'images/...'),
    noisy_train_key_list.txt, clean_test_key_list.txt, for the 14 classes. Noisy labels are the
    clean class + 1 for the first image of each class; the test keys also appear in noisy_label_kv."""
    root = Path(root)
    ds = root / "clothing1m"
    noisy_kv, clean_kv, train_keys, test_keys = [], [], [], []
    for y in range(14):
        for i in range(n_train):
            key = f"images/{y % 10}/{y:02d}/{y}_{i}.jpg"
            write_image(ds / key, _colour(0, y, i))
            noisy_kv.append(f"{key} {(y + 1) % 14 if i == 0 else y}")
            train_keys.append(key)
        for i in range(n_test):
            key = f"images/{y % 10}/{y:02d}/test_{y}_{i}.jpg"
            write_image(ds / key, _colour(1, y, i))
            clean_kv.append(f"{key} {y}")
            noisy_kv.append(f"{key} {(y + 3) % 14}")
            test_keys.append(key)
    for name, lines in (("noisy_label_kv", noisy_kv), ("clean_label_kv", clean_kv),
                        ("noisy_train_key_list", train_keys), ("clean_test_key_list", test_keys)):
        (ds / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


WRITERS: dict[str, Callable[..., Path]] = {
    "imagenet": write_imagenet,
    "caltech101": write_caltech101,
    "oxford_pets": write_oxford_pets,
    "oxford_flowers": write_oxford_flowers,
    "food101": write_food101,
    "dtd": write_dtd,
    "ucf101": write_ucf101,
    "stanford_cars": write_stanford_cars,
    "fgvc_aircraft": write_fgvc_aircraft,
    "sun397": write_sun397,
    "eurosat": write_eurosat,
    "cifar100": write_cifar100,
    "cifar100n": write_cifar100n,
    "animal10n": write_animal10n,
    "webvision": write_webvision,
    "food101n": write_food101n,
    "clothing1m": write_clothing1m,
}


def save_tiny_clip(folder: Path, model_cfg: dict, seed: int = 0) -> dict:
    """A randomly initialised open_clip CLIP saved in `local-dir:` format; returns its backbone config.
    Module tests build one per file (the architecture differs) instead of each repeating the recipe."""
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = CLIP(**model_cfg)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {"size": 32}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return {"model": f"local-dir:{folder}", "pretrained": None, "allow_random": False, "name": "tiny"}
