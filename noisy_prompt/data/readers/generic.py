"""Readers for a user's own images: a folder tree (`data=folder`) or CSV files (`data=csv`).

Both return the same DatasetSplits as the papers' readers, so every method, noise protocol, few-shot
sampler and cache treats them alike; nothing here is specific to a method.

Folder (`read_folder`, `data.root=PATH`):
    PATH/<class folder>/**/<image>          one sub-folder per class (images may sit in sub-folders)
    PATH/{train,val,test}/<class folder>/   or split folders; `train/` alone (or no split folders)
                                            gets a seeded, per-class split with the configured fractions
    PATH/classnames.txt                     optional: `<folder name> <class name>` per line; its line
                                            order is the label order, a line with only the folder name
                                            keeps the folder's name
Labels follow the sorted folder names unless classnames.txt orders them; class names are folder names
with `_` -> space (as for the CoOp datasets).

CSV (`read_csv_dataset`, `data.train=FILE [data.val=FILE] [data.test=FILE]`):
    a header with `path` and `label` columns, optionally `clean_label`; other columns are ignored.
    `path` is relative to the CSV's folder (or absolute); `label` is a class name or an integer index
    into the class list. The class list comes from a classnames file (`data.classnames=FILE`, else a
    `classnames.txt` beside the train CSV; format as above with the label as written in the CSV as
    the key), else it is the sorted set of label names of all the CSV files. `clean_label` holds the
    true label: a training set with it publishes its clean labels (detection precision/recall can be
    measured); in a val/test CSV it is the label the set is scored against. Without a test CSV the
    train CSV is split like a folder without split folders.

Every problem with the input that is cheap to find (a listed image that does not exist or is empty, an
unknown label, a class without images, a duplicate path, an empty CSV, a missing column) is collected
and raised as one DatasetContentError naming each file and line (or folder). Whether an image decodes
is checked by `python -m noisy_prompt.data verify` (opening every image on each run would be slow); a
broken image met during a run raises ImageReadError naming the file and the CSV line it came from.
"""
from __future__ import annotations

import csv
import hashlib
import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from noisy_prompt.data.base import DatasetSplits, ImageSplit, open_rgb
from noisy_prompt.data.readers.coop import as_data_root, clean_classname
from noisy_prompt.data.readers.templates import templates_for
from noisy_prompt.errors import ConfigError, UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_DIRS = ("train", "val", "test")
CLASSNAMES_FILE = "classnames.txt"
CSV_COLUMNS = ("path", "label")
MAX_LISTED = 20  # problems printed per error; the count is always complete

FOLDER_LAYOUT = """
<root>/<class folder>/**/*.jpg        one folder per class (any of .jpg .jpeg .png .bmp .gif .webp .tif .tiff)
  or <root>/train/<class folder>/..., <root>/test/<class folder>/... (and optionally val/)
<root>/classnames.txt                 optional: `<folder name> <class name>` per line (line order = label order)
"""
CSV_LAYOUT = """
a CSV file with a header: path,label[,clean_label]
  path: image file, relative to the CSV's folder (or absolute)
  label: class name, or integer index into the class list (classnames.txt beside the CSV, or data.classnames=FILE)
  clean_label (optional): the true label, same forms as label
"""


class DatasetContentError(UserError, ValueError):
    """A user's dataset (folder tree or CSV) has problems; the message lists every one found, each with
    the file and line (CSV) or the folder it concerns. A UserError: a run prints the message alone."""

    def __init__(self, dataset: str, where: str, problems: Sequence[str], hint: str = ""):
        self.dataset, self.where, self.problems = dataset, where, list(problems)
        lines = [f"data={dataset}: {len(self.problems)} problem(s) in {where}:"]
        lines += [f"  - {p}" for p in self.problems[:MAX_LISTED]]
        if len(self.problems) > MAX_LISTED:
            lines.append(f"  ... and {len(self.problems) - MAX_LISTED} more")
        if hint:
            lines.append(hint.strip())
        super().__init__("\n".join(lines))


def _verify_hint(dataset: str, args: str) -> str:
    return (f"Check the whole dataset, images included, with `python -m noisy_prompt.data verify data={dataset} "
            f"{args}`.")


def _with_hint(splits: DatasetSplits, hint: str) -> DatasetSplits:
    """Every split's messages (an image that fails to open during a run) advise the verify command with the
    user's own options."""
    for split in (splits.train, splits.val, splits.test):
        if split is not None:
            split.verify = hint
    return splits


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def image_files(folder: Path) -> list[Path]:
    """Image files below `folder` (recursive), sorted by their relative posix path: the same order on
    every machine. Hidden files and folders are skipped."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out += [Path(dirpath) / f for f in filenames if is_image_file(Path(f))]
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def _subdirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def read_classnames_file(path: Path) -> list[tuple[str, str]]:
    """[(key, class name)] from `<key> <class name>` lines (a lone key names itself, `_` -> space); line order
    is label order. Keys and names must be unique."""
    problems, out, seen_key, seen_name = [], [], {}, {}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetContentError("folder/csv", str(path), [f"cannot read class names file: {err}"]) from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, _, name = line.strip().partition(" ")
        name = name.strip() or clean_classname(key)
        if key in seen_key:
            problems.append(f"{path}:{n}: key {key!r} already on line {seen_key[key]}")
        elif name in seen_name:
            problems.append(f"{path}:{n}: class name {name!r} already on line {seen_name[name]}")
        else:
            seen_key[key], seen_name[name] = n, n
            out.append((key, name))
    if not out and not problems:
        problems.append(f"{path}: no class listed (expected `<key> <class name>` per line)")
    if problems:
        raise DatasetContentError("folder/csv", str(path), problems)
    return out


def _class_seed(split_seed: int, name: str) -> np.random.Generator:
    # Per class, from its name: adding or removing another class leaves this class's split unchanged.
    return np.random.default_rng([int(split_seed), zlib.crc32(name.encode("utf-8"))])


def seeded_split(labels: Sequence[int], classnames: Sequence[str], val_fraction: float, test_fraction: float,
                 split_seed: int, dataset: str, where: str) -> tuple[list[int], list[int], list[int]]:
    """(train, val, test) indices: per class, round(fraction * n) items (at least one when the fraction is
    positive) drawn by a generator seeded from (split_seed, class name), so the split is the same on every
    machine and for every run seed. Each part keeps the input order. A class too small to give every part
    an item is an error naming it."""
    for key, value in (("val", val_fraction), ("test", test_fraction)):
        if not 0.0 <= float(value) < 1.0:
            raise ConfigError(f"data.split.{key} must lie in [0, 1), got {value}")
    if float(val_fraction) + float(test_fraction) >= 1.0:
        raise ConfigError(f"data.split.val + data.split.test must be < 1 (some images must train), got "
                         f"{val_fraction} + {test_fraction}")
    per_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        per_class.setdefault(int(y), []).append(i)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    problems = []

    def count(frac: float, n: int) -> int:
        return 0 if frac <= 0 else max(1, int(np.floor(frac * n + 0.5)))

    for c in sorted(per_class):
        idx = per_class[c]
        n_test, n_val = count(float(test_fraction), len(idx)), count(float(val_fraction), len(idx))
        if n_test + n_val >= len(idx):
            problems.append(f"class {classnames[c]!r} has {len(idx)} image(s): too few to split off "
                            f"{n_test} test and {n_val} val image(s) and keep one for training")
            continue
        perm = _class_seed(split_seed, classnames[c]).permutation(len(idx))
        parts["test"] += [idx[j] for j in perm[:n_test]]
        parts["val"] += [idx[j] for j in perm[n_test:n_test + n_val]]
        parts["train"] += [idx[j] for j in perm[n_test + n_val:]]
    if problems:
        raise DatasetContentError(dataset, where, problems, "Add images, lower data.split.test / data.split.val, "
                                  "or give the split explicitly (split folders, or a test CSV).")
    return sorted(parts["train"]), sorted(parts["val"]), sorted(parts["test"])


def _split_of(base: ImageSplit, idx: list[int]) -> ImageSplit | None:
    return base.subset(idx) if idx else None


# ---------------------------------------------------------------------------------------------
# Folder tree
# ---------------------------------------------------------------------------------------------
def _folder_classes(root: Path, class_dirs: list[str], classnames: str | None) -> tuple[list[str], list[str]]:
    """(folder name per label, class name per label), from classnames.txt when there is one."""
    path = Path(classnames).expanduser() if classnames else root / CLASSNAMES_FILE
    if classnames and not path.is_file():
        raise DatasetContentError("folder", str(path), [f"class names file not found: {path}"])
    if not path.is_file():
        return list(class_dirs), [clean_classname(d) for d in class_dirs]
    entries = read_classnames_file(path)
    listed = {k for k, _ in entries}
    problems = [f"{root}: folder {d!r} is not listed in {path}" for d in class_dirs if d not in listed]
    if problems:
        raise DatasetContentError("folder", str(root), problems,
                                  f"Every class folder needs a line `<folder name> <class name>` in {path}.")
    return [k for k, _ in entries], [n for _, n in entries]


def read_folder(data_root: Path | str | None = None, *, folder: str | None = None, classnames: str | None = None,
                val_fraction: float = 0.0, test_fraction: float = 0.2, split_seed: int = 0) -> DatasetSplits:
    """A folder tree, one sub-folder per class (see the module docstring). `folder` is `data.root`; the data
    root of the papers' datasets (`data_root`) is not used."""
    del data_root
    root = folder
    if not root:
        raise ConfigError("data=folder needs data.root=PATH: a folder with one sub-folder of images per class "
                         "(or train/ and test/ folders, each with one sub-folder per class)")
    base = as_data_root(root)
    if not base.is_dir():
        raise DatasetContentError("folder", str(base), [f"folder not found: {base}"], FOLDER_LAYOUT)
    subdirs = _subdirs(base)
    split_mode = "train" in subdirs and (base / "train").is_dir()
    top = base / "train" if split_mode else base
    class_dirs = _subdirs(top)
    if not class_dirs:
        raise DatasetContentError("folder", str(top), [f"{top}: no class folders (expected one sub-folder of "
                                                       "images per class)"], FOLDER_LAYOUT)
    folders, names = _folder_classes(base, class_dirs, classnames)
    label_of = {f: i for i, f in enumerate(folders)}
    problems: list[str] = []

    def part(folder: Path, required: bool) -> ImageSplit:
        paths, labels = [], []
        present = set(_subdirs(folder))
        for d in sorted(present - set(folders)):
            problems.append(f"{folder / d}: not a class (classes come from "
                            f"{'train/' if split_mode else 'the class folders'} or classnames.txt)")
        for f in folders:
            files = image_files(folder / f) if f in present else []
            if not files and required:
                problems.append(f"{folder / f}: class {names[label_of[f]]!r} has no image"
                                + ("" if f in present else " (folder missing)"))
            paths += files
            labels += [label_of[f]] * len(files)
        # class_sources: a class found empty later (e.g. by the datamodule's check) names its folder
        return ImageSplit(items=[str(p) for p in paths], labels=labels, classnames=list(names), loader=open_rgb,
                          keys=[p.relative_to(base).as_posix() for p in paths],
                          class_sources=[str(folder / f) for f in folders])

    train = part(top, True)
    val = part(base / "val", False) if split_mode and (base / "val").is_dir() else None
    test = part(base / "test", True) if split_mode and (base / "test").is_dir() else None
    empty = [f"{p}: empty file" for s in (train, val, test) if s is not None for p in s.items if os.path.getsize(p) == 0]
    problems += empty
    hint = _verify_hint("folder", f"data.root={root}" + (f" data.classnames={classnames}" if classnames else ""))
    if problems:
        raise DatasetContentError("folder", str(base), problems, hint)
    if test is None:
        tr, va, te = seeded_split(train.labels, names, val_fraction if val is None else 0.0, test_fraction,
                                  split_seed, "folder", str(top))
        train, test, val = train.subset(tr), train.subset(te), (val if val is not None else _split_of(train, va))
    return _with_hint(DatasetSplits(name="folder", train=train, val=val, test=test, templates=templates_for("folder")),
                      hint)


def folder_digest(data_root: Path | str | None = None, *, folder: str | None = None, classnames: str | None = None,
                  **_: object) -> str | None:
    """The data seam's digest of a folder dataset: its file list (relative paths, sizes, modification times)
    and class names file, not the pixels (hashing every image would cost a full read)."""
    if not folder or not Path(folder).is_dir():
        return None
    base = as_data_root(folder)
    h = hashlib.sha256()
    for p in image_files(base):
        st = p.stat()
        h.update(f"{p.relative_to(base).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    for names in folder_label_files(folder=folder, classnames=classnames):
        h.update(names.read_bytes())
    return h.hexdigest()[:16]


def folder_label_files(*, folder: str | None = None, classnames: str | None = None, **_: object) -> list[Path]:
    """The label file of a folder dataset, for the run's record (data/label_files.py): its class names file
    where it has one (`data.classnames`, else classnames.txt in the root). The folder names themselves are
    pinned by `folder_digest`'s file list."""
    if not folder:
        return []
    names = Path(classnames).expanduser() if classnames else as_data_root(folder) / CLASSNAMES_FILE
    return [names] if names.is_file() else []


# ---------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------
def _is_index(value: str) -> bool:
    return value.isdigit()


class _CsvRows:
    """The rows of one CSV: (line, path text, label text, clean label text or None), plus header problems."""

    def __init__(self, path: Path, role: str, problems: list[str]):
        self.path, self.role, self.rows, self.has_clean = path, role, [], False
        if not path.is_file():
            problems.append(f"{path}: file not found (data.{role})")
            return
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.reader(fh)
                header = next(reader, None)
                if header is None or not any(h.strip() for h in header):
                    problems.append(f"{path}: empty CSV (expected a header `path,label[,clean_label]` and one row "
                                    "per image)")
                    return
                cols = [h.strip() for h in header]
                missing = [c for c in CSV_COLUMNS if c not in cols]
                if missing:
                    problems.append(f"{path}:1: missing column(s) {', '.join(repr(m) for m in missing)}; the header "
                                    f"has {cols} (expected path,label[,clean_label])")
                    return
                ip, il = cols.index("path"), cols.index("label")
                ic = cols.index("clean_label") if "clean_label" in cols else None
                self.has_clean = ic is not None
                for row in reader:
                    if not any(v.strip() for v in row):
                        continue
                    line = reader.line_num

                    def cell(i: int | None) -> str | None:
                        return None if i is None else (row[i].strip() if i < len(row) else "")

                    self.rows.append((line, cell(ip), cell(il), cell(ic)))
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            problems.append(f"{path}: cannot read as a UTF-8 CSV ({type(err).__name__}: {err})")
            return
        if not self.rows:
            problems.append(f"{path}: empty CSV (a header but no rows)")


def read_csv_dataset(data_root: Path | str | None = None, *, train: str | None = None, val: str | None = None,
                     test: str | None = None, classnames: str | None = None, val_fraction: float = 0.0,
                     test_fraction: float = 0.2, split_seed: int = 0) -> DatasetSplits:
    """Images listed in CSV files (see the module docstring). `train`/`val`/`test` are `data.train` etc."""
    del data_root
    if not train:
        raise ConfigError("data=csv needs data.train=FILE: a CSV with a header `path,label[,clean_label]` "
                         "(and optionally data.test=FILE)")
    problems: list[str] = []
    files = {role: _CsvRows(as_data_root(p), role, problems) for role, p in (("train", train), ("val", val),
                                                                           ("test", test)) if p}
    where = ", ".join(str(f.path) for f in files.values())
    hint = _verify_hint("csv", " ".join(f"data.{r}={p}" for r, p in (("train", train), ("val", val), ("test", test),
                                                                    ("classnames", classnames)) if p))
    if problems:
        raise DatasetContentError("csv", where, problems, CSV_LAYOUT + hint)

    # ---- the class list
    names_path = Path(classnames).expanduser() if classnames else files["train"].path.parent / CLASSNAMES_FILE
    if classnames and not names_path.is_file():
        raise DatasetContentError("csv", str(names_path), [f"class names file not found: {names_path}"])
    if names_path.is_file():
        entries = read_classnames_file(names_path)
    else:
        values = {v for f in files.values() for _, _, lab, cl in f.rows for v in (lab, cl) if v}
        named = sorted(v for v in values if not _is_index(v))
        if not named:
            raise DatasetContentError("csv", where, [
                f"all labels are integer indices, so the class names are unknown: put {CLASSNAMES_FILE} beside "
                f"{files['train'].path.name} (one line per class in label order: `<label> <class name>`) or "
                "give data.classnames=FILE"])
        entries = [(v, clean_classname(v)) for v in named]
    keys = {k: i for i, (k, _) in enumerate(entries)}
    by_name = {n: i for i, (_, n) in enumerate(entries)}
    names = [n for _, n in entries]

    def resolve(value: str | None) -> int | None:
        if value is None or value == "":
            return None
        if value in keys:
            return keys[value]
        if value in by_name:
            return by_name[value]
        if _is_index(value) and int(value) < len(names):
            return int(value)
        return None

    # ---- rows
    seen: dict[str, str] = {}
    splits: dict[str, ImageSplit] = {}
    rejected: dict[str, int] = {}
    for role, f in files.items():
        items, labels, clean, origins, keys_ = [], [], [], [], []
        rejected[role] = 0
        base = f.path.parent
        for line, ptext, ltext, ctext in f.rows:
            at = f"{f.path}:{line}"
            ok = True
            if not ptext:
                problems.append(f"{at}: empty path")
                continue
            full = Path(ptext).expanduser()
            full = full if full.is_absolute() else base / full
            ident = os.path.normpath(str(full.absolute()))
            if ident in seen:
                problems.append(f"{at}: duplicate path {ptext!r} (also at {seen[ident]})")
                ok = False
            else:
                seen[ident] = at
            try:
                size = os.path.getsize(full)
            except OSError:
                problems.append(f"{at}: image not found: {full}")
                ok = False
            else:
                if size == 0:
                    problems.append(f"{at}: empty image file: {full}")
                    ok = False
            y = resolve(ltext)
            if y is None:
                problems.append(f"{at}: unknown label {ltext!r}" + _known(names))
                ok = False
            yc = None
            if f.has_clean:
                yc = resolve(ctext)
                if yc is None:
                    problems.append(f"{at}: unknown clean_label {ctext!r}" + _known(names))
                    ok = False
            if not ok:
                rejected[role] += 1
                continue
            items.append(str(full.absolute()))
            labels.append(y)
            clean.append(yc)
            origins.append(at)
            keys_.append(Path(os.path.relpath(ident, files["train"].path.parent)).as_posix())
        if role == "train":
            split = ImageSplit(items=items, labels=labels, classnames=names, loader=open_rgb, keys=keys_,
                               origins=origins, clean_labels=clean if f.has_clean else None)
        else:
            # A val/test set is scored against the truth: its clean_label where it has one.
            split = ImageSplit(items=items, labels=clean if f.has_clean else labels, classnames=names,
                               loader=open_rgb, keys=keys_, origins=origins)
        splits[role] = split
    for role, split in splits.items():
        # A class is empty if no valid row names it; not reported for a file whose rows were rejected above
        # (the fix of those rows is the message, not a consequence of them).
        absent = [n for c, n in enumerate(names) if c not in set(split.labels)]
        if absent and role in ("train", "test") and not rejected[role]:
            problems += [f"{files[role].path}: class {n!r} has no image" for n in absent]
    if problems:
        raise DatasetContentError("csv", where, problems, hint)

    train_split = splits["train"]
    val_split, test_split = splits.get("val"), splits.get("test")
    if test_split is None:
        # Stratified by the given label (the only one a user without clean labels has).
        tr, va, te = seeded_split(train_split.labels, names, 0.0 if val_split is not None else val_fraction,
                                  test_fraction, split_seed, "csv", str(files["train"].path))
        whole = train_split
        train_split, test_split = whole.subset(tr), whole.subset(te)
        if whole.clean_labels is not None:  # the held-out part is scored against the truth
            test_split.labels = list(test_split.clean_labels)
            test_split.clean_labels = None
        if val_split is None and va:
            val_split = whole.subset(va)
            if whole.clean_labels is not None:
                val_split.labels, val_split.clean_labels = list(val_split.clean_labels), None
    return _with_hint(DatasetSplits(name="csv", train=train_split, val=val_split, test=test_split,
                                    templates=templates_for("csv")), hint)


def _known(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:10]) + (f", ... ({len(names)} classes)" if len(names) > 10 else "")
    return f" (known classes: {shown}; or an index 0..{len(names) - 1})"


def csv_digest(data_root: Path | str | None = None, *, train: str | None = None, val: str | None = None,
               test: str | None = None, classnames: str | None = None, **_: object) -> str | None:
    """The data seam's digest of a CSV dataset: the bytes of its CSV and class names files (the labels),
    not the images."""
    if not train:
        return None
    h = hashlib.sha256()
    for p in csv_label_files(train=train, val=val, test=test, classnames=classnames):
        h.update(str(p).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def csv_label_files(*, train: str | None = None, val: str | None = None, test: str | None = None,
                    classnames: str | None = None, **_: object) -> list[Path]:
    """The files that hold a CSV dataset's labels, those that exist: its CSV files and its class names file
    (`data.classnames`, else classnames.txt beside the train CSV). `csv_digest` hashes them; the run's
    record lists each (data/label_files.py), so that a changed one is named when a result is refused."""
    if not train:
        return []
    names = Path(classnames).expanduser() if classnames else Path(train).expanduser().parent / CLASSNAMES_FILE
    return [Path(p).expanduser() for p in (train, val, test, names) if p and Path(p).expanduser().is_file()]
