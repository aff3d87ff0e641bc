"""Figures saved as PNG: confusion and transition matrices, per-class accuracy, feature embeddings,
training curves.

Figures are drawn on `matplotlib.figure.Figure` with an explicit Agg canvas instead of pyplot: no
global backend switch, nothing left open between calls, safe in headless jobs. Every function
accepts numpy arrays, torch tensors or nested lists, creates the parent directory, and returns the
path written. Past `MAX_TICK_LABELS` classes the class-name ticks are dropped (unreadable anyway),
so C = 100 or 1000 still renders.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

MAX_TICK_LABELS = 50  # above this many classes, class names are not drawn
MAX_ANNOTATED = 15  # above this many classes, matrix entries are not written in the cells
MAX_LEGEND = 20  # above this many classes, the embedding plot has a colour bar instead of a legend
DPI = 120


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.size and not np.all(np.isfinite(arr) | np.isnan(arr)):
        raise ValueError(f"{name} contains infinite values")
    return arr


def _as_list(x: Any) -> list[float]:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return [float(v) for v in np.asarray(x, dtype=np.float64).reshape(-1)]


def _classnames(classnames: Sequence[str] | None, num_classes: int, name: str) -> list[str]:
    if classnames is None:
        return [str(i) for i in range(num_classes)]
    names = [str(c) for c in classnames]
    if len(names) != num_classes:
        raise ValueError(f"{name}: {len(names)} class names for {num_classes} classes")
    return names


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def _matrix_side(num_classes: int) -> float:
    # Grows with C while names are drawn; without names a fixed size shows the structure.
    if num_classes > MAX_TICK_LABELS:
        return 10.0
    return float(max(4.0, 0.28 * num_classes + 2.5))


def _heatmap(m: np.ndarray, names: list[str], title: str, xlabel: str, ylabel: str,
             path: str | Path, vmin: float | None, vmax: float | None, fmt: str) -> Path:
    c = m.shape[0]
    side = _matrix_side(c)
    fig = _new_figure(side + 1.2, side)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest", aspect="equal")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if c <= MAX_TICK_LABELS:
        ticks = np.arange(c)
        fontsize = 8 if c <= 20 else 5
        ax.set_xticks(ticks, labels=names, rotation=90, fontsize=fontsize)
        ax.set_yticks(ticks, labels=names, fontsize=fontsize)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
        title += f" ({c} classes; names omitted)"
    if c <= MAX_ANNOTATED:
        finite = m[np.isfinite(m)]
        mid = (np.nanmax(finite) + np.nanmin(finite)) / 2 if finite.size else 0.0
        for i in range(c):
            for j in range(c):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, format(m[i, j], fmt), ha="center", va="center", fontsize=7,
                            color="black" if m[i, j] > mid else "white")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def _square(m: np.ndarray, name: str) -> np.ndarray:
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square (C, C) matrix, got shape {m.shape}")
    return m


def save_confusion_matrix(cm: Any, classnames: Sequence[str] | None, path: str | Path, *,
                          normalize: bool = True, title: str = "Confusion matrix") -> Path:
    """Confusion matrix (rows = true class, columns = predicted). With `normalize`, each row is
    divided by its count, so the diagonal is per-class recall (rows with no samples stay empty)."""
    m = _square(_to_numpy(cm, "confusion matrix"), "confusion matrix")
    names = _classnames(classnames, m.shape[0], "save_confusion_matrix")
    if normalize:
        totals = m.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            m = np.where(totals > 0, m / np.where(totals > 0, totals, 1.0), np.nan)
        return _heatmap(m, names, f"{title} (row-normalised)", "predicted", "true", path, 0.0, 1.0, ".2f")
    return _heatmap(m, names, title, "predicted", "true", path, None, None, ".0f")


def save_transition_matrix(T: Any, classnames: Sequence[str] | None, path: str | Path, *,
                           title: str = "Noise transition matrix") -> Path:
    """T[i, j] = P(noisy label j | clean label i); drawn on a fixed [0, 1] scale so matrices of
    different noise settings compare by eye."""
    m = _square(_to_numpy(T, "transition matrix"), "transition matrix")
    names = _classnames(classnames, m.shape[0], "save_transition_matrix")
    return _heatmap(m, names, title, "noisy label", "clean label", path, 0.0, 1.0, ".2f")


def save_per_class_accuracy(acc: Any, classnames: Sequence[str] | None, path: str | Path, *,
                            title: str = "Per-class accuracy") -> Path:
    """Bar per class, with the mean as a dashed line. Values in [0, 1] or in percent are both fine."""
    values = _to_numpy(acc, "per-class accuracy")
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"per-class accuracy must be a non-empty 1-D vector, got shape {values.shape}")
    c = values.size
    names = _classnames(classnames, c, "save_per_class_accuracy")
    width = float(min(max(5.0, 0.25 * min(c, MAX_TICK_LABELS) + 2.0), 18.0))
    fig = _new_figure(width, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(c)
    ax.bar(x, np.nan_to_num(values, nan=0.0), width=0.8 if c <= MAX_TICK_LABELS else 1.0, color="tab:blue")
    mean = float(np.nanmean(values)) if np.any(np.isfinite(values)) else math.nan
    if math.isfinite(mean):
        ax.axhline(mean, color="tab:red", linestyle="--", linewidth=1, label=f"mean {mean:.2f}")
        ax.legend(loc="lower right")
    if c <= MAX_TICK_LABELS:
        ax.set_xticks(x, labels=names, rotation=90, fontsize=8 if c <= 20 else 6)
    else:
        ax.set_xticks([])
        title += f" ({c} classes; names omitted)"
    ax.set_xlim(-0.5, c - 0.5)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    return _save(fig, path)


def _project_2d(feats: np.ndarray, method: str) -> tuple[np.ndarray, str]:
    """(N, 2) coordinates and the name of the method actually used."""
    if method not in ("auto", "umap", "pca"):
        raise ValueError(f"method must be 'auto', 'umap' or 'pca', got {method!r}")
    has_umap = importlib.util.find_spec("umap") is not None
    if method == "umap" and not has_umap:
        raise ImportError("method='umap' needs the umap-learn package (pip install noisy_prompt[umap]); "
                          "use method='auto' or 'pca' to fall back to PCA")
    if method in ("auto", "umap") and has_umap and feats.shape[0] > 3:
        import umap  # optional dependency

        n_neighbors = int(min(15, feats.shape[0] - 1))
        coords = umap.UMAP(n_components=2, n_neighbors=n_neighbors, random_state=0).fit_transform(feats)
        return np.asarray(coords, dtype=np.float64), "UMAP"
    centred = feats - feats.mean(axis=0, keepdims=True)
    try:
        import torch

        q = min(2, *centred.shape)
        _, _, v = torch.pca_lowrank(torch.from_numpy(centred), q=q, center=False, niter=4)
        coords = centred @ v.numpy()
        how = "PCA (torch.pca_lowrank)"
    except ImportError:
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        coords = centred @ vt[:2].T
        how = "PCA (SVD)"
    if coords.shape[1] < 2:  # a single feature dimension (or a single point): pad the second axis
        coords = np.concatenate([coords, np.zeros((coords.shape[0], 2 - coords.shape[1]))], axis=1)
    return coords, how


def save_feature_embedding(feats: Any, labels: Any, path: str | Path, method: str = "auto", *,
                           classnames: Sequence[str] | None = None, title: str = "Feature embedding") -> Path:
    """2-D scatter of features coloured by label. method='auto' uses UMAP when `umap` is importable,
    else PCA; the title names the method used."""
    x = _to_numpy(feats, "features")
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {x.shape}")
    if np.isnan(x).any():
        raise ValueError("features contain NaN")
    y = _to_numpy(labels, "labels").astype(np.int64).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{y.shape[0]} labels for {x.shape[0]} feature rows")
    coords, how = _project_2d(x, method)
    classes = np.unique(y)
    fig = _new_figure(7.0, 6.0)
    ax = fig.add_subplot(1, 1, 1)
    size = 12.0 if x.shape[0] <= 2000 else 3.0
    if classes.size <= MAX_LEGEND:
        for k in classes:
            sel = y == k
            name = classnames[int(k)] if classnames is not None and 0 <= k < len(classnames) else str(int(k))
            ax.scatter(coords[sel, 0], coords[sel, 1], s=size, label=name, alpha=0.8)
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    else:
        points = ax.scatter(coords[:, 0], coords[:, 1], c=y, s=size, cmap="nipy_spectral", alpha=0.8)
        fig.colorbar(points, ax=ax, label="class index")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title}: {how}, {x.shape[0]} points, {classes.size} classes")
    return _save(fig, path)


def save_curves(history: Mapping[str, Sequence[float]], path: str | Path, *, title: str = "Training curves") -> Path:
    """One panel per quantity: keys sharing the part after the last '/' (train/loss, val/loss) share
    a panel, so losses and accuracies keep their own scales. NaN points are gaps."""
    if not history:
        raise ValueError("history is empty; expected {name: [value per epoch]}")
    panels: dict[str, list[str]] = {}
    for key in history:
        panels.setdefault(key.rsplit("/", 1)[-1], []).append(key)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = _new_figure(4.5 * ncols, 3.5 * nrows)
    for i, (quantity, keys) in enumerate(panels.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for key in keys:
            values = np.asarray(_as_list(history[key]), dtype=np.float64).reshape(-1)
            values[~np.isfinite(values)] = np.nan  # a diverged epoch is a gap, not a crash
            ax.plot(np.arange(1, values.size + 1), values, marker="o" if values.size <= 30 else None,
                    markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(quantity)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
