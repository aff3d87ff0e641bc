"""`python -m noisy_prompt.tools.export OUT [--classes 10] [--per-class 30] [--test-per-class 10] [--flip 0.3]`

Writes images of the built-in synthetic world as a user's dataset would look, for trying the generic
readers (docs/own-data.md) without any download:

    OUT/train/<class_folder>/<index>.png   the training images, in their true class folders
    OUT/test/<class_folder>/<index>.png    the test images          (`data=folder data.root=OUT` reads both)
    OUT/test.csv                           path,label of the test images
    OUT/train_noisy.csv                    path,label,clean_label of the training images, where `label` is
                                           wrong for exactly round(flip x N) of them (uniformly to another
                                           class, DP-SEP's symmetric protocol, seeded) and `clean_label` is
                                           the truth: `data=csv data.train=OUT/train_noisy.csv
                                           data.test=OUT/test.csv` trains on the flipped labels and
                                           measures how well a method finds them

Same world, classes and images as `data=synthetic` with the same sizes (`read_synthetic`); PNG keeps the
pixels exact. OUT must not exist or be empty: nothing else is ever written or overwritten.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Sequence

import numpy as np


def folder_name(classname: str) -> str:
    """The folder of a class: its name with spaces as underscores (the folder reader turns them back)."""
    return classname.replace(" ", "_")


def export_world(out: str | Path, *, classes: int = 10, per_class: int = 30, test_per_class: int = 10,
                 flip: float = 0.3, seed: int = 0, world_seed: int = 0, progress: bool = True) -> dict:
    """Write the dataset described in the module docstring; returns a summary (counts, flipped indices)."""
    from tqdm.auto import tqdm

    from noisy_prompt.noise.protocols import dataset_identity, sym_noise
    from noisy_prompt.synthetic.dataset import read_synthetic

    out = Path(out).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; export writes only into a new or empty one")
    if per_class < 1 or test_per_class < 1:
        raise ValueError(f"--per-class and --test-per-class must be >= 1, got {per_class} and {test_per_class}")
    splits = read_synthetic(num_train_per_class=per_class, num_val_per_class=0, num_test_per_class=test_per_class,
                            num_classes=classes, world_seed=world_seed)
    names = splits.classnames
    rows: dict[str, list[tuple[str, int]]] = {}
    todo = [("train", splits.train), ("test", splits.test)]
    bar = tqdm(total=sum(len(s) for _, s in todo), desc=f"export to {out}", disable=not progress, leave=False)
    for part, split in todo:
        rows[part] = []
        for i in range(len(split)):
            y = int(split.labels[i])
            rel = f"{part}/{folder_name(names[y])}/{i:05d}.png"
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            split.load(i).save(path, format="PNG")
            rows[part].append((rel, y))
            bar.update()
    bar.close()

    true = np.asarray([y for _, y in rows["train"]], dtype=np.int64)
    result = sym_noise(true, len(names), float(flip), int(seed), dataset_identity("synthetic-export", names))
    noisy = np.asarray(result.noisy_labels, dtype=np.int64)
    with open(out / "train_noisy.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "clean_label"])
        for (rel, y), z in zip(rows["train"], noisy.tolist()):
            w.writerow([rel, names[z], names[y]])
    with open(out / "test.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        for rel, y in rows["test"]:
            w.writerow([rel, names[y]])
    flipped = np.flatnonzero(noisy != true).tolist()
    return {"out": str(out), "classes": len(names), "train": len(rows["train"]), "test": len(rows["test"]),
            "flipped": len(flipped), "flipped_indices": flipped}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m noisy_prompt.tools.export",
                                 description="Write synthetic-world images as a folder tree and CSV files.")
    ap.add_argument("out", help="a new (or empty) folder")
    ap.add_argument("--classes", type=int, default=10, help="number of classes (2..256; default 10)")
    ap.add_argument("--per-class", type=int, default=30, help="training images per class (default 30)")
    ap.add_argument("--test-per-class", type=int, default=10, help="test images per class (default 10)")
    ap.add_argument("--flip", type=float, default=0.3, help="share of training labels made wrong in train_noisy.csv")
    ap.add_argument("--seed", type=int, default=0, help="seed of the flipped labels")
    args = ap.parse_args(argv)
    try:
        s = export_world(args.out, classes=args.classes, per_class=args.per_class, test_per_class=args.test_per_class,
                         flip=args.flip, seed=args.seed)
    except (FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {s['train']} training and {s['test']} test images of {s['classes']} classes to {s['out']}; "
          f"{s['flipped']} training labels flipped in train_noisy.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
