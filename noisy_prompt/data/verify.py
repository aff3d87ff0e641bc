"""`python -m noisy_prompt.data verify data=<name> [paths.data_dir=<root>] [--quick] [check_images=false]`,
`python -m noisy_prompt.data verify --all [paths.data_dir=<root>] [--quick]`, and for a user's own images
`python -m noisy_prompt.data verify data=folder data.root=PATH` or `... data=csv data.train=FILE [data.test=FILE]`.

Runs a dataset's reader on the data root and prints, per split, its number of images and classes
(exit 0), or every problem found (exit 1): missing paths with the expected layout and where the data
comes from, classes without images, and image files that are missing, empty or do not open. By
default every image the reader lists is opened and decoded (the same code path as a run: a truncated
JPEG fails here as it would in training), with a progress bar; `--quick` only checks that each file
exists and is not empty; `check_images=false` skips the images. Data root: `paths.data_dir`, else
$NOISY_PROMPT_DATA, else ./data. Reads only; never writes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence, TextIO

from noisy_prompt.data.base import (DatasetLayoutError, DatasetSplits, EmptyClassError, ImageReadError, ImageSplit,
                                    is_file_item)
from noisy_prompt.data.readers import READERS as REGISTRY
from noisy_prompt.data.readers import coop, default_data_root, fulldata, get_reader

# name -> (layout, source) of every dataset that lives on disk (not the built-in synthetic one);
# also used for messages about image files that the reader listed but that are missing
LAYOUTS: dict[str, tuple[str, str]] = {
    **{n: (coop.split_layout(n), coop.SPLIT_DATASETS[n][3]) for n in coop.SPLIT_DATASETS},
    "imagenet": (coop.IMAGENET_LAYOUT, coop.IMAGENET_SOURCE),
    "fgvc_aircraft": (coop.FGVC_LAYOUT, coop.FGVC_SOURCE),
    "cifar100": (fulldata.CIFAR100_LAYOUT, fulldata.CIFAR100_SOURCE),
    "cifar100n": (fulldata.CIFAR100N_LAYOUT, fulldata.CIFAR100N_SOURCE),
    "animal10n": (fulldata.ANIMAL10N_LAYOUT, fulldata.ANIMAL10N_SOURCE),
    "webvision": (fulldata.WEBVISION_LAYOUT, fulldata.WEBVISION_SOURCE),
    "food101n": (fulldata.FOOD101N_LAYOUT, fulldata.FOOD101N_SOURCE),
    "clothing1m": (fulldata.CLOTHING1M_LAYOUT, fulldata.CLOTHING1M_SOURCE),
}

# the datasets `verify` knows: the project's reader table, minus those that need no download
DATASETS: list[str] = [n for n in REGISTRY if n in LAYOUTS]
# a user's own images (generic.py): command-line option -> reader argument; not part of --all
GENERIC: dict[str, dict[str, str]] = {
    "folder": {"data.root": "folder", "data.classnames": "classnames", "data.split.test": "test_fraction",
               "data.split.val": "val_fraction", "data.split.seed": "split_seed"},
    "csv": {"data.train": "train", "data.val": "val", "data.test": "test", "data.classnames": "classnames",
            "data.split.test": "test_fraction", "data.split.val": "val_fraction", "data.split.seed": "split_seed"},
}
_FRACTIONS = {"test_fraction", "val_fraction"}

USAGE = """usage: python -m noisy_prompt.data verify data=<name> [paths.data_dir=<root>] [--quick] [check_images=true|false]
       python -m noisy_prompt.data verify --all [paths.data_dir=<root>] [--quick] [check_images=true|false]
       python -m noisy_prompt.data verify data=folder data.root=PATH [data.classnames=FILE] [--quick]
       python -m noisy_prompt.data verify data=csv data.train=FILE [data.test=FILE] [data.val=FILE] [--quick]
  (default: open every listed image; --quick: only check each file exists and is not empty)
datasets: """ + ", ".join(DATASETS)

MAX_LISTED = 20  # missing images printed per dataset; the count is always complete


def named_splits(splits: DatasetSplits, *, keep_none: bool = False) -> list[tuple[str, ImageSplit | None]]:
    parts = [("train", splits.train), ("val", splits.val), ("test", splits.test)]
    parts += [(f"test[{k}]", v) for k, v in splits.extra_tests.items()]
    return [(n, s) for n, s in parts if keep_none or s is not None]


def broken_images(splits: DatasetSplits, *, quick: bool = False, progress: bool = True) -> list[str]:
    """One line per listed image file that is missing, empty, or (unless quick) does not decode."""
    from tqdm.auto import tqdm

    problems: list[str] = []
    seen: set[str] = set()
    todo = [(split, i) for _, split in named_splits(splits) for i, item in enumerate(split.items)
            if is_file_item(item) and not (str(item) in seen or seen.add(str(item)))]
    for split, i in tqdm(todo, desc=f"verify {splits.name}: {'sizes' if quick else 'opening images'}",
                         disable=not progress or len(todo) < 50, leave=False):
        item = split.items[i]
        try:
            size = os.path.getsize(item)
        except OSError:
            problems.append(f"missing: {item}")
            continue
        if size == 0:
            problems.append(f"empty file: {item}")
        elif not quick:
            try:
                split.load(i)
            except ImageReadError as err:
                problems.append(f"{err.item}: {err.problem}")
    return problems


def empty_classes(splits: DatasetSplits) -> list[str]:
    out = []
    for part, split in (("train", splits.train), ("test", splits.test)):
        try:
            split.check_classes()
        except EmptyClassError as err:
            out.append(str(err).splitlines()[0])
    return out


def missing_images(splits: DatasetSplits) -> list[str]:
    """Image files listed by the reader that do not exist (in-memory items are skipped)."""
    missing: list[str] = []
    seen: set[str] = set()
    for _, split in named_splits(splits):
        for item in split.items:
            if isinstance(item, (str, Path)) and str(item) not in seen:
                seen.add(str(item))
                if not os.path.isfile(item):
                    missing.append(str(item))
    return missing


def verify(name: str, data_root: Path, *, check_images: bool = True, quick: bool = False,
           out: TextIO = sys.stdout, reader_kwargs: dict | None = None, where: str | None = None) -> bool:
    """Check one dataset and report to `out`; True if it is complete."""
    from noisy_prompt.data.readers.generic import DatasetContentError

    try:
        splits = get_reader(name)(data_root, **(reader_kwargs or {})).named(name)
    except (DatasetLayoutError, DatasetContentError) as e:
        print(f"[FAIL] {name}: {e}", file=out)
        return False
    except Exception as e:  # a malformed index file, an unreadable pickle: report it, check the rest
        print(f"[FAIL] {name}: {type(e).__name__}: {e}", file=out)
        return False
    empty = empty_classes(splits)
    if empty:
        print(f"[FAIL] {name}: " + "\n  ".join(empty), file=out)
        return False
    if check_images:
        missing = missing_images(splits)
        if missing:
            layout, source = LAYOUTS.get(name, ("(see the reader's documentation)", "your own images"))
            error = DatasetLayoutError(name, data_root, missing[:MAX_LISTED], layout, source)
            more = f" ({len(missing)} image files missing, first {MAX_LISTED} listed)" if len(missing) > MAX_LISTED else ""
            print(f"[FAIL] {name}{more}: {error}", file=out)
            return False
        broken = broken_images(splits, quick=quick, progress=out is sys.stdout)
        if broken:
            more = f", first {MAX_LISTED} listed" if len(broken) > MAX_LISTED else ""
            print(f"[FAIL] {name}: {len(broken)} image file(s) are empty or do not open{more}:", file=out)
            for line in broken[:MAX_LISTED]:
                print(f"  - {line}", file=out)
            return False
    where = where or f"under {data_root}"
    print(f"[ok] {name} {where}: {len(splits.classnames)} classes", file=out)
    for part, split in named_splits(splits, keep_none=True):
        if split is None:
            print(f"  {part}: none (a few-shot val is drawn from train)", file=out)
        else:
            print(f"  {part}: {len(split)} images, {len(set(split.labels))} classes", file=out)
    return True


def parse_args(argv: Sequence[str]) -> tuple[str, dict[str, str], set[str]]:
    """`verify key=value ... --flag ...` -> (command, options, flags); no Hydra needed."""
    if not argv:
        raise ValueError("no command given")
    command, options, flags = argv[0], {}, set()
    for arg in argv[1:]:
        if arg.startswith("--"):
            flags.add(arg[2:])
        elif "=" in arg:
            key, value = arg.split("=", 1)
            options[key.lstrip("+")] = value
        else:
            raise ValueError(f"unexpected argument {arg!r}; expected key=value or --flag")
    return command, options, flags


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, file=out)
        return 0 if argv else 2
    try:
        command, options, flags = parse_args(argv)
    except ValueError as e:
        print(f"{e}\n{USAGE}", file=out)
        return 2
    generic = GENERIC.get(options.get("data", ""), {})
    unknown = (set(options) - {"data", "paths.data_dir", "data_dir", "check_images", *generic}) | (flags - {"all", "help", "quick"})
    if command != "verify" or unknown:
        what = f"unknown command {command!r}" if command != "verify" else f"unknown option(s) {sorted(unknown)}"
        print(f"{what}\n{USAGE}", file=out)
        return 2
    if "help" in flags:
        print(USAGE, file=out)
        return 0
    root_value = options.get("paths.data_dir") or options.get("data_dir")
    data_root = Path(root_value).expanduser() if root_value else default_data_root()
    check_images = options.get("check_images", "true").lower() not in ("false", "0", "no")

    reader_kwargs, where = None, None
    if "all" in flags:
        names = list(DATASETS)
    elif generic:
        names = [options["data"]]
        reader_kwargs = {arg: (float(options[opt]) if arg in _FRACTIONS else int(options[opt]) if arg == "split_seed"
                               else options[opt]) for opt, arg in generic.items() if opt in options}
        where = " ".join(f"{opt}={options[opt]}" for opt in generic if opt in options)
    elif "data" in options:
        if options["data"] not in DATASETS:
            print(f"unknown dataset {options['data']!r}; known: {', '.join([*DATASETS, *GENERIC])}", file=out)
            return 2
        names = [options["data"]]
    else:
        print(f"give data=<name> or --all\n{USAGE}", file=out)
        return 2

    ok = {n: verify(n, data_root, check_images=check_images, quick="quick" in flags, out=out, reader_kwargs=reader_kwargs,
                    where=where)
          for n in names}
    if len(names) > 1:
        print(f"\nsummary for {data_root}:", file=out)
        for n, good in ok.items():
            print(f"  {'ok     ' if good else 'MISSING'} {n}", file=out)
    return 0 if all(ok.values()) else 1
