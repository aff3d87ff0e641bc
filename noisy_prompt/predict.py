"""`python -m noisy_prompt.predict RUN_DIR INPUT... [--top-k 5] [--out FILE] [--device auto] [--batch-size 64]`

Classifies images with what a finished run learned (its `predictor.pt`, see noisy_prompt/predictor.py),
for every method. INPUT: image files, folders (searched recursively for .jpg .jpeg .png .bmp .gif .webp
.tif .tiff), or CSV files with a `path` column (paths relative to the CSV's folder). Writes a CSV with
one row per image: `path, rank1_label, rank1_prob, ..., rankK_label, rankK_prob` (class names and softmax
probabilities of the run's classifier, the same numbers as the run's own `predictions_test.csv`).
Default output: RUN_DIR/predictions.csv (`--out -` prints to stdout). Images go through the run's
evaluation transform in batches, with a progress bar; `--device auto` uses a GPU when there is one.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Sequence, TextIO

import torch
from torch.utils.data import DataLoader, Dataset

from noisy_prompt.data.readers.generic import IMAGE_SUFFIXES, image_files, is_image_file
from noisy_prompt.predictor import PredictorError, eval_transform, load_predictor, predictor_file

MAX_LISTED = 20


class InputError(ValueError):
    """The images to classify cannot be found or read; the message names every offending path."""


def _csv_paths(path: Path) -> list[Path]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "path" not in [f.strip() for f in reader.fieldnames]:
                raise InputError(f"{path}: no `path` column (header: {reader.fieldnames}); a CSV input lists "
                                 "one image per row in a column named path")
            key = next(f for f in reader.fieldnames if f.strip() == "path")
            out = []
            for row in reader:
                value = (row.get(key) or "").strip()
                if value:
                    p = Path(value).expanduser()
                    out.append(p if p.is_absolute() else path.parent / p)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: cannot read as a UTF-8 CSV ({type(err).__name__}: {err})") from None
    if not out:
        raise InputError(f"{path}: the CSV lists no image (its `path` column is empty)")
    return out


def collect_inputs(inputs: Sequence[str]) -> list[Path]:
    """The image files named by `inputs`, in order (folders: sorted, recursive), without duplicates."""
    problems, found = [], []
    for text in inputs:
        p = Path(text).expanduser()
        if p.is_dir():
            files = image_files(p)
            if not files:
                problems.append(f"{p}: folder holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found += files
        elif p.is_file() and p.suffix.lower() == ".csv":
            try:
                found += _csv_paths(p)
            except InputError as err:
                problems.append(str(err))
        elif p.is_file() and is_image_file(p):
            found.append(p)
        elif p.is_file():
            problems.append(f"{p}: not an image or a CSV (by its suffix; images: "
                            f"{', '.join(sorted(IMAGE_SUFFIXES))})")
        else:
            problems.append(f"{p}: not found")
    missing = [f"{f}: image not found" for f in found if not f.is_file()]
    problems += missing
    if problems:
        raise InputError(_listing(f"{len(problems)} problem(s) with the input", problems))
    if not found:
        raise InputError("no input images: give image files, folders or CSV files with a path column")
    seen, out = set(), []
    for f in found:
        key = str(f.absolute())
        if key not in seen:
            seen.add(key)
            out.append(f.absolute())
    return out


def _listing(head: str, problems: list[str]) -> str:
    lines = [f"{head}:"] + [f"  - {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return "\n".join(lines)


class _Images(Dataset):
    """Image i through the run's transform, or an error text for an unreadable file (collected, not raised,
    so that one pass names every broken image)."""

    def __init__(self, paths: list[Path], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from noisy_prompt.data.base import open_rgb

        try:
            return self.transform(open_rgb(self.paths[i])), ""
        except Exception as err:  # PIL: UnidentifiedImageError, OSError (truncated), ...
            return None, f"{self.paths[i]}: unreadable image ({type(err).__name__}: {err})"


def _collate(batch):
    ok = [x for x, e in batch if not e]
    return (torch.stack(ok) if ok else None), [e for _, e in batch]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here (use --device cpu)")
    return torch.device(device)


@torch.no_grad()
def predict(run_dir: str | Path, paths: list[Path], *, top_k: int = 5, device: str = "auto", batch_size: int = 64,
            num_workers: int = 0, skip_unreadable: bool = False, progress: bool = True):
    """(header, rows, skipped): one row per readable image, [path, label1, prob1, ...]."""
    from tqdm.auto import tqdm

    dev = resolve_device(device)
    module, payload = load_predictor(run_dir, dev)
    names = list(payload["classnames"])
    k = max(1, min(int(top_k), len(names)))
    loader = DataLoader(_Images(paths, eval_transform(payload)), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate)
    rows, errors, start = [], [], 0
    for x, errs in tqdm(loader, desc="predict", disable=not progress or len(paths) < 2 * batch_size, leave=False):
        batch_paths = paths[start:start + len(errs)]
        start += len(errs)
        errors += [e for e in errs if e]
        if x is None:
            continue
        prob = torch.softmax(module.predict_logits(x.to(dev)), dim=-1)
        top_p, top_i = prob.topk(k, dim=-1)
        good = [p for p, e in zip(batch_paths, errs) if not e]
        for p, ps, ids in zip(good, top_p.cpu().tolist(), top_i.cpu().tolist()):
            row = [str(p)]
            for pi, ci in zip(ps, ids):
                row += [names[ci], f"{pi:.6f}"]
            rows.append(row)
    if errors and not skip_unreadable:
        raise InputError(_listing(f"{len(errors)} image(s) cannot be read (--skip-unreadable leaves them out)",
                                  errors))
    header = ["path"] + [f"rank{r}_{c}" for r in range(1, k + 1) for c in ("label", "prob")]
    return header, rows, errors


def write_csv(header: list[str], rows: list[list[str]], out: TextIO) -> None:
    w = csv.writer(out)
    w.writerow(header)
    w.writerows(rows)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m noisy_prompt.predict",
                                 description="Classify images with a finished run's classifier (its predictor.pt).")
    ap.add_argument("run_dir", help="the run's folder (holding predictor.pt), or the predictor file itself")
    ap.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or CSVs with a path column")
    ap.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    ap.add_argument("--out", default=None, help="output CSV (default RUN_DIR/predictions.csv; - for stdout)")
    ap.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:1, ...")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--num-workers", type=int, default=0, help="image-loading processes")
    ap.add_argument("--skip-unreadable", action="store_true", help="leave unreadable images out instead of failing")
    args = ap.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        ap.error("--top-k and --batch-size must be >= 1")
    try:
        predictor_file(args.run_dir)  # a wrong run dir is reported before the inputs are searched
        paths = collect_inputs(args.inputs)
        header, rows, skipped = predict(args.run_dir, paths, top_k=args.top_k, device=args.device,
                                        batch_size=args.batch_size, num_workers=args.num_workers,
                                        skip_unreadable=args.skip_unreadable)
    except (PredictorError, InputError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out == "-":
        write_csv(header, rows, sys.stdout)
        return 0
    run = Path(args.run_dir).expanduser()
    out = Path(args.out).expanduser() if args.out else (run.parent if run.is_file() else run) / "predictions.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        write_csv(header, rows, fh)
    for line in skipped:
        print(f"skipped: {line}", file=sys.stderr)
    print(f"wrote {len(rows)} prediction(s) to {out}" + (f" ({len(skipped)} unreadable skipped)" if skipped else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
