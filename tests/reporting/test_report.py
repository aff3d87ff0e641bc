"""The label-issue report of every method that trains (one schema, metrics in results.json) on tiny synthetic
cells run in-process, and `python -m noisy_prompt.report`: the HTML page's content parsed, its errors, and the
same gallery as a W&B Table."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf

import noisy_prompt.config  # noqa: F401  (resolvers)
from noisy_prompt.methods.base import TEST_PREDICTIONS_FILE
from noisy_prompt.methods.selection import (
    LABEL_ISSUE_COLUMNS,
    LABEL_ISSUES_FILE,
    LabelIssueReport,
    Verdicts,
    label_issue_metrics,
    write_label_issues_csv,
)
from noisy_prompt.reporting import report_page
from noisy_prompt.reporting.report_page import ReportError, build_page, main, render, write_report
from report_html import parse
from paths import CONF


# One preset per module class that trains (the variants of a class share its report code), with what keeps
# the run to seconds. Verdicts: whether the method decides clean/noisy itself.
RUNS = {
    "coop": (["model.n_ctx=4"], False),
    "ptnl": (["model.n_ctx=4"], False),
    "dpsep": (["model.n_ctx=4"], False),
    "ft_ce": ([], False),
    "tango": (["model.anchors.k=2", "model.k=5"], True),
    "ssr": (["model.k=5"], True),
    "lsl": (["model.k=5", "model.k_st=2"], True),
    "dividemix": ([], True),
    "deft": (["model.max_epochs=2", "model.phase1.epochs=1", "model.phase1.n_ctx=4", "model.phase1.vpt_tokens=2"], True),
}


def _cfg(model: str, extra: list[str], backbone: dict, root: Path, logger: str = "none"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="run", overrides=[
            f"model={model}", "data=synthetic", "noise=sym50", f"backbone.model={backbone['model']}",
            "backbone.name=tiny", f"logger={logger}", "callbacks=none", "figures=false", "model.max_epochs=1",
            f"paths.log_dir={root}", f"paths.cache_dir={root / 'cache'}", "data.reader_kwargs.num_classes=6",
            "data.reader_kwargs.num_train_per_class=6", "data.reader_kwargs.num_val_per_class=2",
            "data.reader_kwargs.num_test_per_class=3", "data.shots=5", *extra])


def _target(preset: str) -> str:
    """A model preset's `_target_`, following its `defaults:` chain (presets extend one another)."""
    node = OmegaConf.load(CONF / "model" / f"{preset}.yaml")
    if "_target_" in node:
        return node["_target_"]
    parents = [d for d in node.get("defaults", []) if isinstance(d, str) and d != "_self_"]
    assert parents, f"model preset {preset} has no _target_ and no parent"
    return _target(parents[0])


def test_every_training_preset_is_covered():
    """A method class added later must join RUNS: every preset whose module trains maps to a covered class."""
    covered = [get_class(_target(model)) for model in RUNS]
    presets = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
    assert len(presets) > len(RUNS)
    for preset in presets:
        cls = get_class(_target(preset))
        if cls.trains:
            assert any(issubclass(cls, c) for c in covered), f"{preset} ({cls.__name__}) is not covered"
        else:
            assert preset in ("zeroshot", "crossdata_eval")


@pytest.fixture(scope="module")
def runs(tiny_backbone, tmp_path_factory):
    from noisy_prompt.task import run_cell

    root = tmp_path_factory.mktemp("report_runs")
    out = {}
    for model, (extra, _) in RUNS.items():
        cfg = _cfg(model, extra, tiny_backbone, root)
        run_dir = Path(cfg.run_dir)
        run_cell(cfg, run_dir)
        out[model] = run_dir
    return out


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / LABEL_ISSUES_FILE).open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == LABEL_ISSUE_COLUMNS
        return list(reader)


@pytest.mark.slow
@pytest.mark.parametrize("model", list(RUNS))
def test_report_schema_for_every_method_that_trains(runs, model):
    run_dir = runs[model]
    res = json.loads((run_dir / "results.json").read_text())
    rows = _rows(run_dir)
    n = res["noise"]["num_train"]
    assert len(rows) == n == 30 and [int(r["index"]) for r in rows] == list(range(n))
    noisy = [r["given_label"] != r["true_label"] for r in rows]
    assert all(r["true_label"] != "" for r in rows) and sum(noisy) == round(res["noise"]["realised_rate"] * n)
    assert sorted(int(r["rank"]) for r in rows) == list(range(1, n + 1))
    for r in rows:
        score, sprob = float(r["score"]), float(r["suggested_prob"])
        assert 0.0 <= score <= sprob + 1e-6 <= 1.0 + 1e-6
        if r["suggested_label"] == r["given_label"]:
            assert score == pytest.approx(sprob, rel=1e-5)
    has_verdicts = RUNS[model][1]
    assert {r["verdict"] for r in rows} <= ({"clean", "noisy"} if has_verdicts else {""})
    assert res["label_issues"] == {"file": LABEL_ISSUES_FILE, "num_train": n, "verdict": has_verdicts,
                                   "true_labels": True, "paths": False, "score": "self_confidence"}
    # results.json's metrics are those of the file
    m = res["metrics"]
    score = torch.tensor([float(r["score"]) for r in rows])
    given = torch.tensor([int(r["given_label"]) for r in rows])
    true = torch.tensor([int(r["true_label"]) for r in rows])
    verdict = torch.tensor([r["verdict"] == "noisy" for r in rows]) if has_verdicts else None
    suggested = torch.tensor([int(r["suggested_label"]) for r in rows])
    want = label_issue_metrics(score, given, true, verdict, suggested)
    assert {k: v for k, v in m.items() if k.startswith("label_issues/")} == pytest.approx(want, rel=1e-4)
    assert ("label_issues/verdict_recall" in m) == has_verdicts
    # the test predictions load with weights_only=True and give the reported accuracy
    blob = torch.load(run_dir / TEST_PREDICTIONS_FILE, map_location="cpu", weights_only=True)
    test = blob["sets"]["test"]
    names = {int(r["given_label"]): r["given_class"] for r in rows}
    assert all(blob["classnames"][c] == name for c, name in names.items())
    assert test["index"].tolist() == list(range(len(test["label"])))
    assert float((test["topk"][:, 0] == test["label"]).float().mean()) * 100 == pytest.approx(m["test/acc"])
    assert torch.all(test["topk_prob"][:, :-1] >= test["topk_prob"][:, 1:])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tango", "coop"])
def test_report_page_of_a_run(runs, model, capsys):
    run_dir = runs[model]
    assert main([str(run_dir), "--top", "12"]) == 0
    out = Path(capsys.readouterr().out.strip())
    assert out == run_dir / "report.html"
    text = out.read_text()
    page = parse(text)
    res = json.loads((run_dir / "results.json").read_text())
    rows = _rows(run_dir)
    body = " ".join(page.text)
    assert f"{res['metrics']['test/acc']:.4g}" in body and "precision_at_noisy" in body
    # the gallery: the 12 lowest-ranked rows, in order, each with an embedded thumbnail
    top = sorted(rows, key=lambda r: int(r["rank"]))[:12]
    assert [c["data-index"] for c in page.cards] == [r["index"] for r in top]
    assert page.options == ["*", *sorted({r["given_class"] for r in top})]
    assert len(page.images) == 12 + 2  # 12 thumbnails (re-rendered synthetic images) + 2 matrices
    assert all(s.startswith("data:image/png;base64,") for s in page.images)
    assert all(u.startswith("data:") for u in page.urls) and "http://" not in text and "https://" not in text
    # wrong labels are marked where the truth is known
    assert sum("wrong" in c["class"] for c in page.cards) == sum(r["given_label"] != r["true_label"] for r in top)
    if model == "tango":
        assert "judged noisy by the method" in body


def test_gallery_images_follow_the_rows_and_the_page_is_offline(tmp_path):
    """A hand-made run dir whose report has file paths: the thumbnails are those files, the filter lists the
    gallery's given classes, the matrices come from the csv and test_predictions.pt."""
    from PIL import Image

    names = ["cat", "dog", "owl"]
    colours = {0: (255, 0, 0), 1: (0, 255, 0), 2: (0, 0, 255)}
    paths = []
    for i in range(8):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.new("RGB", (40, 30), colours[i % 3]).save(p)
        paths.append(str(p))
    given = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    true = torch.tensor([0, 1, 0, 0, 1, 1, 0, 2])
    score = torch.tensor([0.30, 0.90, 0.20, 0.80, 0.95, 0.10, 0.70, 0.40])
    report = LabelIssueReport(given=given, suggested=torch.tensor([0, 1, 0, 0, 1, 2, 0, 2]),
                              suggested_prob=torch.full((8,), 0.95), score=score, true=true, paths=paths,
                              verdicts=Verdicts(0, given, true, score > 0.25, score, given, score))
    run = tmp_path / "run"
    write_label_issues_csv(run / LABEL_ISSUES_FILE, names, report)
    metrics = {"test/acc": 61.5, **label_issue_metrics(score, given, true)}
    (run / "results.json").write_text(json.dumps({"status": "ok", "metrics": metrics, "noise": {"rate": 0.4},
                                                  "cell": {"model": "m", "data": "d", "noise": "sym40", "seed": 1}}))
    torch.save({"classnames": names, "sets": {"test": {"index": torch.arange(4), "label": torch.tensor([0, 1, 2, 2]),
                                                       "topk": torch.tensor([[0], [1], [1], [2]]),
                                                       "topk_prob": torch.ones(4, 1)}}}, run / TEST_PREDICTIONS_FILE)
    page = build_page(run, top=5)
    assert [it.row["index"] for it in page.items] == ["5", "2", "0", "7", "6"]
    assert list(page.matrices.values())[0] and list(page.matrices.values())[1]
    parsed = parse(render(page))
    assert len(parsed.cards) == 5 and parsed.options == ["*", "cat", "dog", "owl"]
    assert sorted(c["data-given"] for c in parsed.cards) == ["cat", "cat", "dog", "owl", "owl"]
    import base64
    import io

    thumb = Image.open(io.BytesIO(base64.b64decode(parsed.images[2].split(",", 1)[1])))  # the first card: row 5
    assert thumb.convert("RGB").getpixel((10, 10)) == colours[5 % 3] and max(thumb.size) == report_page.THUMB_PX
    assert "61.5" in " ".join(parsed.text) and "noisy" in " ".join(parsed.text)
    assert "http" not in render(page)
    # the confusion matrix counts test_predictions.pt's top-1
    assert report_page.test_confusion(run, 3).tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert report_page.transition_counts(_rows(run), 3).tolist() == [[3, 0, 1], [0, 2, 1], [0, 1, 0]]
    # --out and a missing image: the page is still written, saying which image is missing
    Path(paths[5]).unlink()
    out = write_report(run, tmp_path / "elsewhere" / "r.html", top=3)
    assert out.is_file() and "no image" in out.read_text() and not (run / "report.html").exists()


def test_errors_name_what_is_missing(tmp_path, capsys):
    with pytest.raises(ReportError, match="no such run dir"):
        build_page(tmp_path / "nope")
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ReportError, match="has not finished"):
        build_page(run)
    (run / "failed.json").write_text(json.dumps({"status": "failed", "error": "ValueError: boom\ntrace"}))
    with pytest.raises(ReportError, match="the run failed .*boom"):
        build_page(run)
    (run / "results.json").write_text(json.dumps({"status": "ok", "metrics": {}, "cell": {"model": "zeroshot"}}))
    with pytest.raises(ReportError, match="no label-issue report.*model zeroshot wrote none"):
        build_page(run)
    assert main([str(run)]) == 2 and "error:" in capsys.readouterr().err
    assert main([str(run), "--top", "0"]) == 2


def test_wandb_gallery_table_through_the_logger_seam(tmp_path):
    """With a W&B logger the run logs the report's gallery as a Table with images (stub logger, no network)."""
    import wandb
    from PIL import Image

    from noisy_prompt.reporting.artifacts import _log_to_wandb

    names = ["cat", "dog"]
    n = 6
    given, score = torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([0.5, 0.1, 0.9, 0.3, 0.2, 0.8])
    report = LabelIssueReport(given=given, suggested=1 - given, suggested_prob=torch.ones(n), score=score)
    write_label_issues_csv(tmp_path / LABEL_ISSUES_FILE, names, report)
    logged = []

    class WandbLogger:  # the seam matches the logger's class name
        class experiment:
            log = staticmethod(logged.append)

    class Split:
        def load(self, i):
            return Image.new("RGB", (32, 32), (i * 40, 0, 0))

    class DM:
        train_split = Split()

    module = type("M", (), {"test_report": {}})()
    _log_to_wandb([WandbLogger()], {}, module, names, {}, run_dir=tmp_path, dm=DM())
    tables = [p[report_page.WANDB_GALLERY_KEY] for p in logged if report_page.WANDB_GALLERY_KEY in p]
    assert len(tables) == 1
    table = tables[0]
    assert isinstance(table, wandb.Table) and table.columns == report_page.WANDB_COLUMNS
    assert [row[1] for row in table.data] == [1, 4, 3, 0, 5, 2]  # ascending score
    assert all(isinstance(row[2], wandb.Image) for row in table.data)
    assert [row[3] for row in table.data][:2] == ["dog", "cat"]
