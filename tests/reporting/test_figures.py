"""Figures are written as real PNG files, for few and for many classes."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from noisy_prompt.reporting import figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000


@pytest.fixture(params=[4, 100], ids=["C4", "C100"])
def num_classes(request):
    return request.param


def names(c):
    return [f"class_{i}" for i in range(c)]


def test_confusion_matrix(tmp_path, num_classes):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 20, size=(num_classes, num_classes))
    cm[0] = 0  # a class without test samples must not break normalisation
    out = figures.save_confusion_matrix(cm, names(num_classes), tmp_path / "sub" / "cm.png")
    assert out == tmp_path / "sub" / "cm.png"
    assert_png(out)
    assert_png(figures.save_confusion_matrix(torch.as_tensor(cm), None, tmp_path / "raw.png", normalize=False))


def test_per_class_accuracy(tmp_path, num_classes):
    acc = torch.rand(num_classes) * 100
    assert_png(figures.save_per_class_accuracy(acc, names(num_classes), tmp_path / "acc.png"))


def test_transition_matrix(tmp_path, num_classes):
    t = torch.softmax(torch.randn(num_classes, num_classes), dim=1)
    assert_png(figures.save_transition_matrix(t, names(num_classes), tmp_path / "T.png"))


def test_feature_embedding(tmp_path, num_classes):
    n = 3 * num_classes
    feats = torch.randn(n, 32)
    labels = torch.arange(n) % num_classes
    assert_png(figures.save_feature_embedding(feats, labels, tmp_path / "emb.png", method="pca"))


def test_curves(tmp_path):
    history = {"train/loss": [2.0, 1.5, 1.0], "val/loss": [2.1, 1.7, float("nan")], "val/acc": [10.0, 40.0, 55.0]}
    assert_png(figures.save_curves(history, tmp_path / "curves.png"))


def test_pca_fallback_names_itself_and_finds_the_main_axis(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "umap" else real_find_spec(name, *a))
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(200, 8)) * np.array([10.0, 3.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    coords, how = figures._project_2d(feats, "auto")
    assert how.startswith("PCA")
    assert coords.shape == (200, 2)
    # The first coordinate is the high-variance input axis (up to sign), the second the next one.
    assert abs(np.corrcoef(coords[:, 0], feats[:, 0])[0, 1]) > 0.99
    assert abs(np.corrcoef(coords[:, 1], feats[:, 1])[0, 1]) > 0.95
    with pytest.raises(ImportError, match="umap"):
        figures._project_2d(feats, "umap")


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="3 class names for 4 classes"):
        figures.save_confusion_matrix(np.eye(4), ["a", "b", "c"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="square"):
        figures.save_transition_matrix(np.ones((3, 4)), None, tmp_path / "x.png")
    with pytest.raises(ValueError, match="labels"):
        figures.save_feature_embedding(np.zeros((5, 3)), [0, 1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="method"):
        figures.save_feature_embedding(np.random.rand(5, 3), [0, 1, 0, 1, 0], tmp_path / "x.png", method="tsne")
    with pytest.raises(ValueError, match="empty"):
        figures.save_curves({}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
