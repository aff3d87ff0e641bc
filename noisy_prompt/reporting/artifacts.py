"""Files a finished run leaves beside results.json (rank 0): figures as PNG, per-class accuracy, and the
same figures on W&B when a W&B logger is active."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch

from noisy_prompt.loggers import is_wandb
from noisy_prompt.methods.selection import LABEL_ISSUES_FILE

log = logging.getLogger(__name__)


def _test_embedding(module, dm, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray] | None:
    ds = dm.test_sets.get("test")
    if ds is None or not hasattr(ds, "views"):
        return None
    feats = ds.views[0][:max_points]
    return torch.nn.functional.normalize(feats.float(), dim=-1).numpy(), ds.labels[:max_points].numpy()


def write_test_predictions(module, dm, run_dir: Path) -> list[Path]:
    """predictions_<set>.csv per test set: each item's path (or key), its label, and the run's top-k classes with
    softmax probabilities, in the columns `python -m noisy_prompt.predict` writes (after index, path, label)."""
    written = []
    names = dm.classnames
    for set_name, pred in (getattr(module, "test_predictions", None) or {}).items():
        split = dm.test_splits.get(set_name)
        if split is None or not pred.get("index"):
            continue
        k = len(pred["topk"][0])
        path = Path(run_dir) / f"predictions_{set_name}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["index", "path", "label"] + [f"rank{r}_{c}" for r in range(1, k + 1) for c in ("label", "prob")])
            for i, y, top, prob in zip(pred["index"], pred["label"], pred["topk"], pred["prob"]):
                item = split.items[i]
                row = [i, str(item) if isinstance(item, (str, Path)) else split.keys[i], names[y]]
                for c, p in zip(top, prob):
                    row += [names[c], f"{p:.6f}"]
                w.writerow(row)
        written.append(path)
    return written


def save_run_artifacts(cfg, module, dm, run_dir: Path, loggers: list, noise: dict | None = None) -> dict[str, Path]:
    from noisy_prompt.cell import write_json
    from noisy_prompt.reporting import figures

    run_dir = Path(run_dir)
    names = dm.classnames
    saved: dict[str, Path] = {}
    for set_name, report in module.test_report.items():
        with open(run_dir / f"per_class_{set_name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["class_index", "class_name", "accuracy"])
            for i, (n, a) in enumerate(zip(names, report["per_class"])):
                w.writerow([i, n, f"{a:.4f}"])
    write_test_predictions(module, dm, run_dir)
    noise = dm.noise_summary() if noise is None else noise
    write_json(run_dir / "noise.json", noise)  # the full summary, with the C x C transition matrix
    if not cfg.get("figures", True):
        return saved
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    try:
        rep = module.test_report.get("test")
        if rep:
            saved["confusion"] = fig_dir / "confusion_test.png"
            figures.save_confusion_matrix(np.asarray(rep["confusion"]), names, saved["confusion"])
            saved["per_class"] = fig_dir / "per_class_test.png"
            figures.save_per_class_accuracy(np.asarray(rep["per_class"]), names, saved["per_class"])
        if noise.get("transition") is not None:
            saved["transition"] = fig_dir / "noise_transition.png"
            figures.save_transition_matrix(np.asarray(noise["transition"]), names, saved["transition"])
        emb = _test_embedding(module, dm)
        if emb is not None:
            saved["embedding"] = fig_dir / "image_features_test.png"
            figures.save_feature_embedding(emb[0], emb[1], saved["embedding"])
        history = getattr(module, "history", None)
        if history:
            saved["curves"] = fig_dir / "curves.png"
            figures.save_curves(history, saved["curves"])
    except Exception:  # a plotting problem must not lose the run's numbers
        log.exception("saving figures failed")
    _log_to_wandb(loggers, saved, module, names, noise, run_dir=run_dir, dm=dm)
    return saved


def _log_to_wandb(loggers, saved, module, names, noise, run_dir: Path | None = None, dm=None) -> None:
    wandb_loggers = [lg for lg in loggers if is_wandb(lg)]
    if not wandb_loggers:
        return
    import wandb

    run = wandb_loggers[0].experiment
    issues = Path(run_dir) / LABEL_ISSUES_FILE if run_dir is not None else None
    if issues is not None and issues.is_file():
        try:  # the report page's gallery, as a W&B Table with images (training images through the data seam)
            from noisy_prompt.methods.selection import read_label_issues_csv
            from noisy_prompt.reporting.report_page import log_wandb_gallery

            split = getattr(dm, "train_split", None)
            log_wandb_gallery(run, read_label_issues_csv(issues), split.load if split is not None else None)
        except Exception:  # a gallery problem must not lose the run's numbers
            log.exception("logging the label-issue gallery to W&B failed")
    payload = {f"figures/{k}": wandb.Image(str(p)) for k, p in saved.items() if Path(p).is_file()}
    rep = module.test_report.get("test")
    if rep:
        payload["test/per_class"] = wandb.Table(columns=["class", "accuracy"], data=[[n, a] for n, a in zip(names, rep["per_class"])])
    if noise.get("transition") is not None:
        payload["noise/transition"] = wandb.Table(columns=["clean"] + list(names),
                                                  data=[[n] + list(r) for n, r in zip(names, noise["transition"])])
    run.log(payload)
