"""Readers for the full-data and real-noise datasets (TANGO tables, DP-SEP Table 2).

Same contract as coop.py: `read_<name>(data_root) -> DatasetSplits`, all required paths checked up
front (one DatasetLayoutError naming every missing one), keys = path relative to the data root,
nothing written anywhere. Full-data sets have no val split (`val=None`).

CIFAR-100 lives in memory: items are row indices and the loader is an ArrayImageLoader over the
(N, 32, 32, 3) uint8 array (a plain class, so DataLoader workers can pickle it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from noisy_prompt.data.base import DatasetLayoutError, DatasetSplits, ImageLoader, ImageSplit
from noisy_prompt.errors import SafeUnpickler
from noisy_prompt.data.readers.coop import (
    as_data_root,
    clean_classname,
    file_split,
    list_files,
    list_subdirs,
    read_split_file,
    require_paths,
    split_classnames,
    split_layout,
)
from noisy_prompt.data.readers.templates import templates_for

# ---------------------------------------------------------------------------------------------
# CIFAR-100 / CIFAR-100N
# ---------------------------------------------------------------------------------------------
CIFAR_DIR = "cifar-100-python"
CIFAR100N_FILE = "CIFAR-100_human.pt"
CIFAR100_LAYOUT = f"""
<data root>/{CIFAR_DIR}/
  train   (python pickle: 'data' uint8 (50000, 3072), 'fine_labels', 'coarse_labels')
  test    (python pickle: 'data' uint8 (10000, 3072), 'fine_labels', 'coarse_labels')
  meta    (python pickle: 'fine_label_names')
"""
CIFAR100_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (the torchvision download, extracted)"
CIFAR100N_LAYOUT = CIFAR100_LAYOUT + f"""<data root>/{CIFAR100N_FILE}   (or <data root>/{CIFAR_DIR}/{CIFAR100N_FILE})
  torch.save'd dict with 'clean_label' and 'noisy_label' (50000 each, CIFAR-100 train order)
"""
CIFAR100N_SOURCE = (
    CIFAR100_SOURCE + " ; CIFAR-100_human.pt from https://github.com/UCSC-REAL/cifar-10-100n (data/)"
)


class ArrayImageLoader(ImageLoader):
    """Image i of an in-memory uint8 array (N, H, W, 3) as an RGB PIL image.

    A small plain class rather than a closure so that DataLoader workers can pickle it. Pixel-based
    noise generators read 32x32 arrays directly (`pixels32`).
    """

    def __init__(self, images: np.ndarray, source: str | Path | None = None):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"ArrayImageLoader: expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        self.images = images
        # The file the array was read from: part of each item's feature-cache identity, so a pickle
        # replaced in place is re-encoded (ImageSplit.identity).
        self.source = None if source is None else str(source)

    def __call__(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[int(index)]).convert("RGB")

    def pixels32(self, items: Sequence[Any]) -> np.ndarray | None:
        if self.images.shape[1:] != (32, 32, 3):
            return None
        return self.images[np.asarray(items, dtype=np.int64)].reshape(len(items), -1).astype(np.float32)


def _unpickle(path: Path, keys: Sequence[str]) -> dict[str, Any]:
    # Arrays, lists and strings only: a replaced pickle cannot run code (errors.SafeUnpickler).
    obj = SafeUnpickler.load(path, encoding="latin1")
    absent = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if absent:
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: missing key(s) {absent} (has {got}); expected the CIFAR-100 python pickle")
    return obj


def _cifar_part(data_root: Path, name: str, classnames: list[str]) -> tuple[ImageSplit, list[int] | None]:
    """The split and its coarse (superclass) labels, None when the pickle has none."""
    path = data_root / CIFAR_DIR / name
    obj = _unpickle(path, ["data", "fine_labels"])
    data = np.asarray(obj["data"], dtype=np.uint8)
    labels = [int(y) for y in obj["fine_labels"]]
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != data.shape[0]:
        raise ValueError(
            f"{path}: 'data' has shape {data.shape} and 'fine_labels' {len(labels)} entries; expected "
            "(N, 3072) and N labels"
        )
    bad = [y for y in labels if not 0 <= y < len(classnames)]
    if bad:
        raise ValueError(f"{path}: fine_labels outside 0..{len(classnames) - 1}: {sorted(set(bad))[:10]}")
    coarse = None
    if "coarse_labels" in obj:
        coarse = [int(c) for c in obj["coarse_labels"]]
        if len(coarse) != len(labels):
            raise ValueError(f"{path}: 'coarse_labels' has {len(coarse)} entries for {len(labels)} images")
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    split = ImageSplit(
        items=list(range(len(labels))),
        labels=labels,
        classnames=classnames,
        loader=ArrayImageLoader(images, source=path),
        keys=[f"{CIFAR_DIR}/{name}/{i}" for i in range(len(labels))],
    )
    return split, coarse


def cifar_superclass_of(parts: Sequence[tuple[Path, list[int], list[int] | None]], classnames: list[str]) -> list[int] | None:
    """Fine class -> superclass, from the pickles' `coarse_labels` ((file, fine labels, coarse labels) per
    pickle). Every fine class must sit in one superclass; a class no image shows has none to read.

    A pickle without coarse labels: CIFAR-100's published class/superclass listing, when the class names
    are CIFAR-100's own (else None: the classes have no superclasses). Where the pickles have them and the
    names are CIFAR-100's, they must agree with that listing (a reordered or edited file is an error).
    """
    from noisy_prompt.data.readers.cifar100_classes import CIFAR100_FINE_NAMES, CIFAR100_SUPERCLASS

    standard = [clean_classname(n) for n in CIFAR100_FINE_NAMES] == list(classnames)
    if any(coarse is None for _, _, coarse in parts):
        return list(CIFAR100_SUPERCLASS) if standard else None
    found: dict[int, int] = {}
    for path, fine, coarse in parts:
        for y, c in zip(fine, coarse):
            if found.setdefault(y, c) != c:
                raise ValueError(f"{path}: class {y} ({classnames[y]}) has coarse labels {found[y]} and {c}; "
                                 "expected one superclass per fine class")
    if len(found) < len(classnames):
        return None  # a class no image shows (the reader's caller rejects empty classes): no map to publish
    superclass_of = [found[c] for c in range(len(classnames))]
    if standard and superclass_of != list(CIFAR100_SUPERCLASS):
        wrong = [classnames[c] for c in range(len(classnames)) if superclass_of[c] != CIFAR100_SUPERCLASS[c]]
        raise ValueError(f"{parts[0][0]}: coarse_labels disagree with CIFAR-100's class/superclass listing for "
                         f"{len(wrong)} classes ({', '.join(wrong[:5])}); expected the official pickles")
    return superclass_of


def _read_cifar(data_root: Path) -> tuple[ImageSplit, ImageSplit, list[int] | None]:
    """(train, test, fine class -> superclass)."""
    meta = _unpickle(data_root / CIFAR_DIR / "meta", ["fine_label_names"])
    classnames = [clean_classname(str(n)) for n in meta["fine_label_names"]]
    (train, coarse_train), (test, coarse_test) = (_cifar_part(data_root, n, classnames) for n in ("train", "test"))
    superclass_of = cifar_superclass_of([(data_root / CIFAR_DIR / "train", train.labels, coarse_train),
                                         (data_root / CIFAR_DIR / "test", test.labels, coarse_test)], classnames)
    return train, test, superclass_of


def _cifar_required(data_root: Path) -> list[Path]:
    return [data_root / CIFAR_DIR / n for n in ("train", "test", "meta")]


def read_cifar100(root: Path | str) -> DatasetSplits:
    data_root = as_data_root(root)
    require_paths("cifar100", data_root, _cifar_required(data_root), CIFAR100_LAYOUT, CIFAR100_SOURCE)
    train, test, superclass_of = _read_cifar(data_root)
    return DatasetSplits(name="cifar100", train=train, val=None, test=test, templates=templates_for("cifar100"),
                         superclass_of=superclass_of)


def _numpy_safe_globals() -> list[Any]:
    """What torch's weights_only unpickler must allow to rebuild plain numpy arrays.

    CIFAR-100_human.pt stores numpy arrays, pickled under numpy 1's module name
    (numpy.core.multiarray._reconstruct); numpy 2 calls it numpy._core, so both names are listed.
    """
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    dtype_classes = [type(np.dtype(t)) for t in ("bool", "int8", "int16", "int32", "int64", "uint8",
                                                 "uint16", "uint32", "uint64", "float32", "float64")]
    return [
        _reconstruct,
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        (_reconstruct, "numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        *dtype_classes,
    ]


def load_cifar100n_labels(path: Path) -> tuple[list[int], list[int]]:
    """(clean_label, noisy_label) of CIFAR-100_human.pt, loaded with weights_only=True."""
    import torch

    with torch.serialization.safe_globals(_numpy_safe_globals()):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    absent = [k for k in ("clean_label", "noisy_label") if not isinstance(obj, dict) or k not in obj]
    if absent:
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: missing key(s) {absent} (has {got}); expected CIFAR-N's dict of label arrays")

    def as_list(key: str) -> list[int]:
        value = obj[key]
        arr = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        return [int(v) for v in arr.reshape(-1)]

    return as_list("clean_label"), as_list("noisy_label")


def read_cifar100n(root: Path | str) -> DatasetSplits:
    data_root = as_data_root(root)
    human_paths = (data_root / CIFAR100N_FILE, data_root / CIFAR_DIR / CIFAR100N_FILE)
    require_paths(
        "cifar100n", data_root, [*_cifar_required(data_root), human_paths], CIFAR100N_LAYOUT, CIFAR100N_SOURCE
    )
    human = next(p for p in human_paths if p.exists())
    train, test, superclass_of = _read_cifar(data_root)
    clean, noisy = load_cifar100n_labels(human)
    train_file = data_root / CIFAR_DIR / "train"
    for key, values in (("clean_label", clean), ("noisy_label", noisy)):
        if len(values) != len(train):
            raise ValueError(
                f"{human}: '{key}' has {len(values)} entries but {train_file} has {len(train)} images; "
                "the file must be aligned with the CIFAR-100 train order"
            )
    diff = [i for i, (a, b) in enumerate(zip(clean, train.labels)) if a != b]
    if diff:
        i = diff[0]
        raise ValueError(
            f"{human}: 'clean_label' differs from the fine_labels of {train_file} at {len(diff)} positions "
            f"(first at index {i}: {clean[i]} vs {train.labels[i]}); the file must be aligned with the "
            "CIFAR-100 train order"
        )
    bad = sorted({y for y in noisy if not 0 <= y < len(train.classnames)})
    if bad:
        raise ValueError(f"{human}: 'noisy_label' has values outside 0..{len(train.classnames) - 1}: {bad[:10]}")
    noisy_train = ImageSplit(
        items=train.items, labels=noisy, classnames=train.classnames, loader=train.loader,
        clean_labels=clean, keys=train.keys,
    )
    return DatasetSplits(
        name="cifar100n", train=noisy_train, val=None, test=test, templates=templates_for("cifar100n"),
        superclass_of=superclass_of,
    )


# ---------------------------------------------------------------------------------------------
# Animal-10N
# ---------------------------------------------------------------------------------------------
# Label order 0..9 as listed by the dataset's authors (Song et al., SELFIE, ICML 2019). One public
# CLIP repo claims the files actually use 4 = jaguar, 5 = cheetah; unverified here, so the listed
# order is kept (it only matters for zero-shot / text-based classifiers).
ANIMAL10N_CLASSNAMES = [
    "cat", "lynx", "wolf", "coyote", "cheetah", "jaguar", "chimpanzee", "orangutan", "hamster", "guinea pig",
]
ANIMAL10N_LAYOUT = """
<data root>/animal10n/
  training/<label>_<id>.jpg   (label = integer prefix, 0..9; ~8% noisy)
  testing/<label>_<id>.jpg
"""
ANIMAL10N_SOURCE = "Animal-10N, by request from https://dm.kaist.ac.kr/datasets/animal-10n/ (extract both folders)"
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _animal10n_part(data_root: Path, folder: Path) -> ImageSplit:
    paths, labels = [], []
    for p in list_files(folder):
        if p.suffix.lower() not in _IMAGE_SUFFIXES:
            continue  # stray files (Thumbs.db, README) are not images of the set
        prefix = p.name.split("_", 1)[0]
        if not prefix.isdigit() or not 0 <= int(prefix) < len(ANIMAL10N_CLASSNAMES):
            raise ValueError(f"{p}: expected a file name '<label>_<id>.jpg' with label 0..9")
        paths.append(p)
        labels.append(int(prefix))
    return file_split(data_root, paths, labels, list(ANIMAL10N_CLASSNAMES))


def read_animal10n(root: Path | str) -> DatasetSplits:
    data_root = as_data_root(root)
    ds = data_root / "animal10n"
    require_paths("animal10n", data_root, [ds / "training", ds / "testing"], ANIMAL10N_LAYOUT, ANIMAL10N_SOURCE)
    return DatasetSplits(
        name="animal10n", train=_animal10n_part(data_root, ds / "training"), val=None,
        test=_animal10n_part(data_root, ds / "testing"), templates=templates_for("animal10n"),
    )


# ---------------------------------------------------------------------------------------------
# mini-WebVision (Google subset, first 50 classes)
# ---------------------------------------------------------------------------------------------
WEBVISION_NUM_CLASSES = 50
# CLIP's names of ImageNet classes 0..49 (WebVision 1.0 uses the ImageNet-1k class order).
WEBVISION_CLASSNAMES = [
    "tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray",
    "stingray", "rooster", "hen", "ostrich", "brambling", "goldfinch", "house finch", "junco",
    "indigo bunting", "American robin", "bulbul", "jay", "magpie", "chickadee", "American dipper",
    "kite (bird of prey)", "bald eagle", "vulture", "great grey owl", "fire salamander", "smooth newt",
    "newt", "spotted salamander", "axolotl", "American bullfrog", "tree frog", "tailed frog",
    "loggerhead sea turtle", "leatherback sea turtle", "mud turtle", "terrapin", "box turtle",
    "banded gecko", "green iguana", "Carolina anole", "desert grassland whiptail lizard", "agama",
    "frilled-necked lizard", "alligator lizard", "Gila monster", "European green lizard", "chameleon",
    "Komodo dragon", "Nile crocodile",
]
WEBVISION_LAYOUT = """
<data root>/webvision/
  info/train_filelist_google.txt   (`<relpath under webvision/> <label>` per line, e.g. google/q0001/00000000.jpg 0)
  info/val_filelist.txt            (`<file name> <label>` per line)
  google/                          (the Google training images)
  val_images_256/                  (WebVision val images)
  imagenet/val/<0..49>/            (ILSVRC12 val images of classes 0..49, one folder per label)
only labels < 50 are used (mini-WebVision)
"""
WEBVISION_SOURCE = (
    "WebVision 1.0 (Google images resized, info/, val_images_256) from "
    "https://data.vision.ee.ethz.ch/cvl/webvision/download.html ; ILSVRC12 val from https://image-net.org "
    "sorted into label folders 0..49 (as DivideMix's imagenet/val layout)"
)


def _read_filelist(path: Path, num_classes: int) -> list[tuple[str, int]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"{path}:{n}: expected '<relpath> <label>', got {line!r}")
        if int(parts[1]) < num_classes:
            rows.append((parts[0], int(parts[1])))
    return rows


def read_webvision(root: Path | str) -> DatasetSplits:
    data_root = as_data_root(root)
    ds = data_root / "webvision"
    train_list, val_list = ds / "info" / "train_filelist_google.txt", ds / "info" / "val_filelist.txt"
    ilsvrc_root = ds / "imagenet" / "val"
    ilsvrc_dirs = [ilsvrc_root / str(c) for c in range(WEBVISION_NUM_CLASSES)]
    # a wholly absent ILSVRC12 val is one missing folder, not 50
    ilsvrc_required = ilsvrc_dirs if ilsvrc_root.is_dir() else [ilsvrc_root]
    require_paths(
        "webvision", data_root,
        [train_list, val_list, ds / "google", ds / "val_images_256", *ilsvrc_required],
        WEBVISION_LAYOUT, WEBVISION_SOURCE,
    )
    names = list(WEBVISION_CLASSNAMES)
    train_rows = _read_filelist(train_list, WEBVISION_NUM_CLASSES)
    val_rows = _read_filelist(val_list, WEBVISION_NUM_CLASSES)
    train = file_split(data_root, [ds / r for r, _ in train_rows], [y for _, y in train_rows], names)
    test = file_split(data_root, [ds / "val_images_256" / r for r, _ in val_rows], [y for _, y in val_rows], names)
    paths, labels = [], []
    for c, folder in enumerate(ilsvrc_dirs):
        files = list_files(folder)
        paths += files
        labels += [c] * len(files)
    ilsvrc = file_split(data_root, paths, labels, names)
    ilsvrc.class_sources = [str(d) for d in ilsvrc_dirs]
    return DatasetSplits(
        name="webvision", train=train, val=None, test=test, extra_tests={"ilsvrc12": ilsvrc},
        templates=templates_for("webvision"),
    )


# ---------------------------------------------------------------------------------------------
# Food-101N (train) + Food-101 test
# ---------------------------------------------------------------------------------------------
FOOD101N_DIRS = ("food-101n", "Food-101N")
FOOD101N_LAYOUT = """
<data root>/food-101n/images/<class>/*.jpg    (or <data root>/Food-101N/images/...; folder = noisy label,
                                               class folders named as Food-101's, e.g. apple_pie)
""" + split_layout("food101").lstrip("\n") + "(the Food-101 test split of split_zhou_Food101.json is the test set; class order = Food-101's)\n"
FOOD101N_SOURCE = (
    "Food-101N from https://kuanghuei.github.io/Food-101N/ (extract Food-101N_release/ and rename it "
    "food-101n/) ; Food-101 + split_zhou_Food101.json as for data=food101 "
    "(https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md#food101)"
)


def read_food101n(root: Path | str) -> DatasetSplits:
    data_root = as_data_root(root)
    image_dirs = tuple(data_root / d / "images" for d in FOOD101N_DIRS)
    food_dir = data_root / "food-101"
    split_path = food_dir / "split_zhou_Food101.json"
    require_paths(
        "food101n", data_root, [image_dirs, food_dir / "images", split_path], FOOD101N_LAYOUT, FOOD101N_SOURCE
    )
    noisy_dir = next(p for p in image_dirs if p.exists())
    split = read_split_file(split_path)
    classnames = split_classnames(split_path, split)
    label_of = {name: i for i, name in enumerate(classnames)}

    folders = list_subdirs(noisy_dir)
    unknown = [f for f in folders if clean_classname(f) not in label_of]
    if unknown:
        raise ValueError(f"{noisy_dir}: folder(s) {unknown[:10]} are not Food-101 classes of {split_path}")
    present = {clean_classname(f) for f in folders}
    absent = [n for n in classnames if n not in present]
    if absent:
        raise DatasetLayoutError(
            "food101n", data_root, [str(noisy_dir / n.replace(" ", "_")) for n in absent],
            FOOD101N_LAYOUT, FOOD101N_SOURCE,
        )
    paths, labels = [], []
    for folder in folders:
        files = [p for p in list_files(noisy_dir / folder) if p.suffix.lower() in _IMAGE_SUFFIXES]
        paths += files
        labels += [label_of[clean_classname(folder)]] * len(files)
    train = file_split(data_root, paths, labels, classnames)
    train.class_sources = [str(noisy_dir / folder) for folder in sorted(folders, key=lambda f: label_of[clean_classname(f)])] \
        if len(folders) == len(classnames) else None
    test_rows = split["test"]
    test = file_split(
        data_root, [food_dir / "images" / r for r, _, _ in test_rows], [y for _, y, _ in test_rows], classnames
    )
    return DatasetSplits(name="food101n", train=train, val=None, test=test, templates=templates_for("food101n"))


# ---------------------------------------------------------------------------------------------
# Clothing1M
# ---------------------------------------------------------------------------------------------
CLOTHING1M_CLASSNAMES = [
    "T-shirt", "shirt", "knitwear", "chiffon", "sweater", "hoodie", "windbreaker", "jacket", "down coat",
    "suit", "shawl", "dress", "vest", "underwear",
]
CLOTHING1M_LAYOUT = """
<data root>/clothing1m/
  images/<a>/<bc>/*.jpg          (as extracted from the official archives)
  noisy_label_kv.txt             (`images/<a>/<bc>/<name>.jpg <label 0..13>` per line)
  clean_label_kv.txt             (same format, verified labels)
  noisy_train_key_list.txt       (one image key per line: the training set, labelled by noisy_label_kv)
  clean_test_key_list.txt        (one image key per line: the test set, labelled by clean_label_kv)
keys are paths relative to clothing1m/
"""
CLOTHING1M_SOURCE = "Clothing1M, by request from the authors (Xiao et al., CVPR 2015): https://github.com/Cysu/noisy_label"


def _read_kv(path: Path) -> dict[str, int]:
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) >= len(CLOTHING1M_CLASSNAMES):
            raise ValueError(f"{path}:{n}: expected '<image key> <label 0..13>', got {line!r}")
        out[parts[0]] = int(parts[1])
    return out


def _clothing_part(data_root: Path, ds: Path, key_list: Path, kv: dict[str, int], kv_path: Path) -> ImageSplit:
    keys = [ln.strip() for ln in key_list.read_text(encoding="utf-8").splitlines() if ln.strip()]
    unlabeled = [k for k in keys if k not in kv]
    if unlabeled:
        raise ValueError(f"{key_list}: {len(unlabeled)} key(s) have no label in {kv_path}, e.g. {unlabeled[:3]}")
    return file_split(data_root, [ds / k for k in keys], [kv[k] for k in keys], list(CLOTHING1M_CLASSNAMES))


def read_clothing1m(root: Path | str) -> DatasetSplits:
    data_root = as_data_root(root)
    ds = data_root / "clothing1m"
    files = {n: ds / f"{n}.txt" for n in ("noisy_label_kv", "clean_label_kv", "noisy_train_key_list", "clean_test_key_list")}
    require_paths("clothing1m", data_root, [ds / "images", *files.values()], CLOTHING1M_LAYOUT, CLOTHING1M_SOURCE)
    noisy_kv, clean_kv = _read_kv(files["noisy_label_kv"]), _read_kv(files["clean_label_kv"])
    train = _clothing_part(data_root, ds, files["noisy_train_key_list"], noisy_kv, files["noisy_label_kv"])
    test = _clothing_part(data_root, ds, files["clean_test_key_list"], clean_kv, files["clean_label_kv"])
    return DatasetSplits(name="clothing1m", train=train, val=None, test=test, templates=templates_for("clothing1m"))
