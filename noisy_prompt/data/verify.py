"""`python -m noisy_prompt.data verify data=<name> [paths.data_dir=<root>] [check_images=false]`
and `python -m noisy_prompt.data verify --all [paths.data_dir=<root>]`.

Runs a dataset's reader on the data root and prints, per split, its number of images and classes
(exit 0), or every missing path, the expected layout and where the data comes from (exit 1). With
check_images (the default) it also checks that every image file the reader lists exists, which the
readers themselves skip for speed. Data root: `paths.data_dir`, else $NOISY_PROMPT_DATA, else ./data.
Reads only; never writes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence, TextIO

from noisy_prompt.data.base import DatasetLayoutError, DatasetSplits, ImageSplit
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

USAGE = """usage: python -m noisy_prompt.data verify data=<name> [paths.data_dir=<root>] [check_images=true|false]
       python -m noisy_prompt.data verify --all [paths.data_dir=<root>] [check_images=true|false]
datasets: """ + ", ".join(DATASETS)

MAX_LISTED = 20  # missing images printed per dataset; the count is always complete


def named_splits(splits: DatasetSplits, *, keep_none: bool = False) -> list[tuple[str, ImageSplit | None]]:
    parts = [("train", splits.train), ("val", splits.val), ("test", splits.test)]
    parts += [(f"test[{k}]", v) for k, v in splits.extra_tests.items()]
    return [(n, s) for n, s in parts if keep_none or s is not None]


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


def verify(name: str, data_root: Path, *, check_images: bool = True, out: TextIO = sys.stdout) -> bool:
    """Check one dataset and report to `out`; True if it is complete."""
    try:
        splits = get_reader(name)(data_root)
    except DatasetLayoutError as e:
        print(f"[FAIL] {name}: {e}", file=out)
        return False
    except Exception as e:  # a malformed index file, an unreadable pickle: report it, check the rest
        print(f"[FAIL] {name}: {type(e).__name__}: {e}", file=out)
        return False
    if check_images:
        missing = missing_images(splits)
        if missing:
            layout, source = LAYOUTS[name]
            error = DatasetLayoutError(name, data_root, missing[:MAX_LISTED], layout, source)
            more = f" ({len(missing)} image files missing, first {MAX_LISTED} listed)" if len(missing) > MAX_LISTED else ""
            print(f"[FAIL] {name}{more}: {error}", file=out)
            return False
    print(f"[ok] {name} under {data_root}: {len(splits.classnames)} classes", file=out)
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
    unknown = (set(options) - {"data", "paths.data_dir", "data_dir", "check_images"}) | (flags - {"all", "help"})
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

    if "all" in flags:
        names = list(DATASETS)
    elif "data" in options:
        if options["data"] not in DATASETS:
            print(f"unknown dataset {options['data']!r}; known: {', '.join(DATASETS)}", file=out)
            return 2
        names = [options["data"]]
    else:
        print(f"give data=<name> or --all\n{USAGE}", file=out)
        return 2

    ok = {n: verify(n, data_root, check_images=check_images, out=out) for n in names}
    if len(names) > 1:
        print(f"\nsummary for {data_root}:", file=out)
        for n, good in ok.items():
            print(f"  {'ok     ' if good else 'MISSING'} {n}", file=out)
    return 0 if all(ok.values()) else 1
