"""`python -m noisy_prompt.report RUN_DIR`: one self-contained HTML page a person looks at.

The page holds the run's metrics, the noise transition matrix (given vs true labels of the training set,
where the true labels are known), the confusion matrix on the test set, and a gallery of the top suspected
label issues of `label_issues.csv` (thumbnail, given -> suggested, score), filterable by class. Everything
is inline (CSS, a few lines of JS, images as base64 PNG data URIs): the file opens without a network and
can be mailed as it is.

The training images come through the data seam: a file path where label_issues.csv has one, else the
run's own `config.yaml` rebuilds the label side of its datamodule (read, few-shot draw, noise; no CLIP,
no features) and loads image i of the training set the run trained on (the synthetic world re-renders it).
The same gallery goes to W&B as a table with images (`log_wandb_gallery`) when a run logs there.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from noisy_prompt.cell import FAILED as FAILED_FILE
from noisy_prompt.cell import RESULTS as RESULTS_FILE
from noisy_prompt.methods.base import REPORT_FILE as MODULE_REPORT_FILE
from noisy_prompt.methods.base import TEST_PREDICTIONS_FILE
from noisy_prompt.methods.selection import LABEL_ISSUES_FILE, LabelIssuesFileError, read_label_issues_csv

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
DEFAULT_TOP = 48
THUMB_PX = 96


class ReportError(RuntimeError):
    """The run dir cannot give a report (missing, unfinished, failed, or without a label-issue report)."""


# ------------------------------------------------------------------------------------ reading a run


def read_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """(results.json, the label_issues.csv rows) of a finished run, or a ReportError saying what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run dir (give the directory that holds results.json)")
    results = run_dir / RESULTS_FILE
    if not results.is_file():
        failed = run_dir / FAILED_FILE
        if failed.is_file():
            err = json.loads(failed.read_text()).get("error", "?")
            raise ReportError(f"{run_dir}: the run failed ({failed}): {str(err).splitlines()[0]}")
        raise ReportError(f"{run_dir}: the run has not finished (no {RESULTS_FILE}); rerun the same command to "
                          "resume it, then make the report")
    payload = json.loads(results.read_text())
    if payload.get("status") != "ok":
        raise ReportError(f"{results}: status {payload.get('status')!r}, not 'ok'")
    try:
        rows = read_label_issues_csv(run_dir / LABEL_ISSUES_FILE)
    except LabelIssuesFileError as err:
        model = (payload.get("cell") or {}).get("model", "?")
        raise ReportError(f"{err}; model {model} wrote none (zero-shot and cross-dataset evaluation train "
                          "nothing, so they have no report)") from None
    return payload, rows


def top_suspects(rows: Sequence[dict[str, str]], top: int) -> list[dict[str, str]]:
    """The `top` most suspect rows (rank 1 first)."""
    return sorted(rows, key=lambda r: int(r["rank"]))[:max(0, int(top))]


def transition_counts(rows: Sequence[dict[str, str]], num_classes: int) -> np.ndarray | None:
    """(C, C) counts of [true, given] over the training set; None where the true labels are unknown."""
    if not rows or any(r["true_label"] == "" for r in rows):
        return None
    out = np.zeros((num_classes, num_classes), dtype=np.int64)
    for r in rows:
        out[int(r["true_label"]), int(r["given_label"])] += 1
    return out


def test_confusion(run_dir: Path, num_classes: int) -> np.ndarray | None:
    """(C, C) counts of [true, predicted] on the test set, from test_predictions.pt (or module_report.json)."""
    path = Path(run_dir) / TEST_PREDICTIONS_FILE
    if path.is_file():
        import torch

        blob = torch.load(path, map_location="cpu", weights_only=True)
        test = blob.get("sets", {}).get("test")
        if test is not None:
            label, pred = test["label"].long(), test["topk"][:, 0].long()
            return torch.bincount(label * num_classes + pred, minlength=num_classes ** 2).view(
                num_classes, num_classes).numpy()
    report = Path(run_dir) / MODULE_REPORT_FILE
    if report.is_file():
        conf = json.loads(report.read_text()).get("test_report", {}).get("test", {}).get("confusion")
        if conf is not None:
            return np.asarray(conf, dtype=np.int64)
    return None


def classnames_of(rows: Sequence[dict[str, str]]) -> dict[int, str]:
    names: dict[int, str] = {}
    for r in rows:
        for label, name in (("given_label", "given_class"), ("suggested_label", "suggested_class"),
                            ("true_label", "true_class")):
            if r[label] != "":
                names[int(r[label])] = r[name]
    return names


# ----------------------------------------------------------------------------------- training images


ImageOf = Callable[[int], Any]  # training-set index -> PIL image


def training_images(run_dir: Path, rows: Sequence[dict[str, str]], data_dir: str | None = None) -> ImageOf:
    """A loader of the run's training images: by path where the report has paths, else through the data
    seam from the run's config.yaml (the label side only: no CLIP is built)."""
    if rows and all(r["path"] for r in rows):
        from noisy_prompt.data.base import open_rgb

        by_index = {int(r["index"]): r["path"] for r in rows}
        return lambda i: open_rgb(by_index[i])
    from omegaconf import OmegaConf

    import noisy_prompt.config  # noqa: F401  (the resolvers config.yaml names)
    from noisy_prompt.build import build_datamodule

    cfg_path = Path(run_dir) / "config.yaml"
    if not cfg_path.is_file():
        raise ReportError(f"{cfg_path}: missing; the report rebuilds the training images from the run's config")
    cfg = OmegaConf.load(cfg_path)
    if data_dir is not None:
        cfg.data.data_dir = data_dir
    dm = build_datamodule(cfg)
    dm.setup_labels()
    given = [int(r["given_label"]) for r in sorted(rows, key=lambda r: int(r["index"]))]
    if len(given) != len(dm.train_labels) or given != [int(v) for v in dm.train_labels]:
        raise ReportError(f"the training set rebuilt from {cfg_path} ({len(dm.train_labels)} samples) does not match "
                          f"{LABEL_ISSUES_FILE} ({len(given)} samples, or other labels): has the data changed?")
    return dm.train_split.load


def thumbnail_png(image, size: int = THUMB_PX) -> bytes:
    """A square-ish PNG thumbnail; small images (the synthetic world's 32 px) are enlarged without smoothing."""
    from PIL import Image

    im = image.convert("RGB")
    scale = size / max(im.size)
    resample = Image.NEAREST if scale > 1 else Image.BICUBIC
    im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))), resample)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# ------------------------------------------------------------------------------------------- the page


@dataclass
class GalleryItem:
    row: dict[str, str]
    image: str | None  # data URI, None when the image could not be loaded


@dataclass
class Page:
    title: str
    run_dir: Path
    results: dict[str, Any]
    rows: list[dict[str, str]]
    items: list[GalleryItem]
    matrices: dict[str, str | None] = field(default_factory=dict)  # title -> data URI (None: not available)
    notes: list[str] = field(default_factory=list)


def _matrix_png(kind: str, matrix: np.ndarray, names: list[str]) -> str:
    from noisy_prompt.reporting import figures

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{kind}.png"
        if kind == "transition":
            rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
            figures.save_transition_matrix(rates, names, path)
        else:
            figures.save_confusion_matrix(matrix, names, path)
        return data_uri(path.read_bytes())


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330;background:#fafbfc}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde1e7;padding-bottom:4px}
.sub{color:#5b6474;font-size:13px}.grid{display:flex;flex-wrap:wrap;gap:10px}.lead{font-size:15px;margin:12px 0}
table.m{border-collapse:collapse;font-size:13px}table.m td,table.m th{padding:3px 10px;border-bottom:1px solid #e6e9ee;text-align:left}
table.m td.v{text-align:right;font-variant-numeric:tabular-nums}.cols{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
.mat img{max-width:430px;width:100%;border:1px solid #dde1e7;background:#fff}
.card{width:150px;background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:6px;font-size:12px}
.card img{width:136px;height:136px;object-fit:contain;image-rendering:pixelated;background:#eef0f3;display:block;margin:0 auto 4px}
.card .lab{font-weight:600;word-break:break-word}.card .arrow{color:#9aa3b2}.card .meta{color:#5b6474}
.card.wrong{border-color:#d9534f}.card.right{border-color:#5cb85c}.tag{display:inline-block;padding:0 4px;border-radius:3px;font-size:11px}
.tag.noisy{background:#fbe3e2;color:#a33}.tag.clean{background:#e2f3e2;color:#2d6a2d}.noimg{width:136px;height:136px;
display:flex;align-items:center;justify-content:center;background:#eef0f3;color:#8a93a3;margin:0 auto 4px}
select{font-size:14px;padding:2px 6px}.note{color:#8a5a00;font-size:13px}
"""

# The class filter; report.html#class=NAME opens the page filtered (a link to one class's suspects).
JS = """
function filt(){var c=document.getElementById('cls').value,n=0;
document.querySelectorAll('#gallery .card').forEach(function(e){var s=(c==='*'||e.dataset.given===c);
e.style.display=s?'':'none';if(s)n++;});document.getElementById('shown').textContent=n;}
document.addEventListener('DOMContentLoaded',function(){var h=decodeURIComponent(location.hash);
if(h.indexOf('#class=')===0){var sel=document.getElementById('cls');sel.value=h.slice(7);
if(sel.value!==h.slice(7))sel.value='*';filt();}});
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def summary(rows: Sequence[dict[str, str]], metrics: dict[str, Any]) -> str:
    """One sentence: how many samples, flagged, truly wrong, and how well the ranking finds them."""
    n = len(rows)
    parts = [f"{n} training samples"]
    flagged = sum(r["verdict"] == "noisy" for r in rows)
    if any(r["verdict"] for r in rows):
        parts.append(f"{flagged} judged noisy by the method")
    if all(r["true_label"] != "" for r in rows):
        wrong = sum(r["true_label"] != r["given_label"] for r in rows)
        parts.append(f"{wrong} truly mislabelled")
        p = metrics.get("label_issues/precision_at_noisy")
        if wrong and isinstance(p, (int, float)):
            parts.append(f"{100 * p:.1f}% of the {wrong} lowest-scored samples are mislabelled")
    return "; ".join(parts) + "."


def render(page: Page) -> str:
    e = html.escape
    res = page.results
    cell = res.get("cell") or {}
    metrics = res.get("metrics") or {}
    noise = res.get("noise") or {}
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           f"<title>{e(page.title)}</title><style>{CSS}</style><script>{JS}</script></head><body>",
           f"<h1>{e(page.title)}</h1>",
           "<div class='sub'>" + " · ".join(e(f"{k}={cell[k]}") for k in ("model", "data", "noise", "backbone", "seed")
                                            if k in cell) + f" · {e(str(page.run_dir))}</div>"]
    out.append(f"<p class='lead' id='summary'>{e(summary(page.rows, metrics))}</p>")
    for note in page.notes:
        out.append(f"<p class='note'>{e(note)}</p>")
    # metrics
    out.append("<h2>Metrics</h2><div class='cols'>")
    groups: dict[str, list[tuple[str, Any]]] = {}
    for k, v in metrics.items():
        groups.setdefault(k.split("/")[0] if "/" in k else "other", []).append((k, v))
    for name, items in groups.items():
        out.append(f"<table class='m' id='metrics-{e(name)}'><tr><th>{e(name)}</th><th></th></tr>")
        out += [f"<tr><td title='{e(k)}'>{e(k.split('/', 1)[-1])}</td><td class='v'>{_fmt(v)}</td></tr>"
                for k, v in items]
        out.append("</table>")
    out.append("<table class='m' id='noise'><tr><th>noise</th><th></th></tr>")
    out += [f"<tr><td>{e(k)}</td><td class='v'>{_fmt(v)}</td></tr>" for k, v in noise.items()
            if not isinstance(v, (list, dict))]
    out.append("</table></div>")
    # matrices
    out.append("<h2>Matrices</h2><div class='cols'>")
    for title, uri in page.matrices.items():
        body = f"<img alt='{e(title)}' src='{uri}'>" if uri else "<p class='sub'>not available for this run</p>"
        out.append(f"<div class='mat'><div class='sub'>{e(title)}</div>{body}</div>")
    out.append("</div>")
    # gallery
    given_classes = sorted({it.row["given_class"] for it in page.items})
    out.append(f"<h2>Top {len(page.items)} suspected label issues</h2>")
    out.append("<p class='sub'>Ranked by the score: the final classifier's probability of the given label (lowest "
               "first). Border: red = the given label is wrong, green = right (where the true labels are known).</p>")
    out.append("<label>given class <select id='cls' onchange='filt()'><option value='*'>all classes</option>"
               + "".join(f"<option value='{e(c)}'>{e(c)}</option>" for c in given_classes)
               + f"</select></label> <span class='sub'><span id='shown'>{len(page.items)}</span> shown</span>")
    out.append("<div class='grid' id='gallery'>")
    for it in page.items:
        r = it.row
        truth = ""
        cls = "card"
        if r["true_label"] != "":
            wrong = r["true_label"] != r["given_label"]
            cls += " wrong" if wrong else " right"
            truth = f"<div class='meta'>true: {e(r['true_class'])}</div>"
        verdict = f" <span class='tag {e(r['verdict'])}'>{e(r['verdict'])}</span>" if r["verdict"] else ""
        img = f"<img alt='training image {e(r['index'])}' src='{it.image}'>" if it.image else "<div class='noimg'>no image</div>"
        out.append(f"<div class='{cls}' data-given='{e(r['given_class'])}' data-index='{e(r['index'])}'>{img}"
                   f"<div class='lab'>{e(r['given_class'])} <span class='arrow'>→</span> {e(r['suggested_class'])}</div>"
                   f"<div class='meta'>#{e(r['rank'])} · score {float(r['score']):.3g}{verdict}</div>{truth}"
                   f"<div class='meta'>index {e(r['index'])}</div></div>")
    out.append("</div></body></html>")
    return "\n".join(out)


def build_page(run_dir: Path, top: int = DEFAULT_TOP, data_dir: str | None = None) -> Page:
    run_dir = Path(run_dir)
    results, rows = read_run(run_dir)
    names_by_index = classnames_of(rows)
    num_classes = max(names_by_index) + 1
    names = [names_by_index.get(i, str(i)) for i in range(num_classes)]
    notes: list[str] = []
    cell = results.get("cell") or {}
    title = f"Label issues: {cell.get('model', '?')} on {cell.get('data', '?')} ({cell.get('noise', '?')})"
    matrices: dict[str, str | None] = {}
    trans = transition_counts(rows, num_classes)
    conf = test_confusion(run_dir, num_classes)
    if trans is None:
        notes.append("The true training labels are unknown for this run: no noise transition matrix, and the "
                     "gallery cannot say which suspects are really wrong.")
    matrices["noise transition (training set): rows = true label, columns = given label"] = (
        _matrix_png("transition", trans, names) if trans is not None else None)
    matrices["confusion (test set): rows = true label, columns = predicted"] = (
        _matrix_png("confusion", conf, names) if conf is not None else None)
    suspects = top_suspects(rows, top)
    try:
        image_of = training_images(run_dir, rows, data_dir)
    except Exception as err:  # the numbers are still worth a page: say why the pictures are missing
        notes.append(f"Training images unavailable ({type(err).__name__}: {err}); pass --data-dir if the data moved.")
        image_of = None
    items = []
    for r in suspects:
        uri = None
        if image_of is not None:
            try:
                uri = data_uri(thumbnail_png(image_of(int(r["index"]))))
            except Exception as err:
                notes.append(f"image {r['index']}: {type(err).__name__}: {err}")
        items.append(GalleryItem(r, uri))
    return Page(title, run_dir, results, rows, items, matrices, notes)


def write_report(run_dir: Path, out: Path | None = None, top: int = DEFAULT_TOP, data_dir: str | None = None) -> Path:
    page = build_page(run_dir, top, data_dir)
    out = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(page), encoding="utf-8")
    tmp.replace(out)
    for note in page.notes:
        print(f"note: {note}", file=sys.stderr)
    return out


# ------------------------------------------------------------------------------------------------ W&B

WANDB_GALLERY_KEY = "label_issues/gallery"
WANDB_COLUMNS = ["rank", "index", "image", "given", "suggested", "score", "verdict", "true"]


def log_wandb_gallery(run, rows: Sequence[dict[str, str]], image_of: ImageOf | None, top: int = DEFAULT_TOP):
    """Log the report's gallery (same rows, same order) as a W&B Table with images on `run`; returns the table."""
    import wandb

    data = []
    for r in top_suspects(rows, top):
        image = None
        if image_of is not None:
            try:
                image = wandb.Image(image_of(int(r["index"])),
                                    caption=f"{r['given_class']} -> {r['suggested_class']}")
            except Exception as err:  # a missing picture must not lose the rest of the table
                log.warning("W&B gallery: image %s: %s", r["index"], err)
        data.append([int(r["rank"]), int(r["index"]), image, r["given_class"], r["suggested_class"],
                     float(r["score"]), r["verdict"], r["true_class"]])
    table = wandb.Table(columns=WANDB_COLUMNS, data=data)
    run.log({WANDB_GALLERY_KEY: table})
    return table


# ------------------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m noisy_prompt.report",
                                description="Write a self-contained report.html of a finished run: metrics, noise "
                                            "and confusion matrices, and a gallery of the top suspected label issues.")
    p.add_argument("run_dir", type=Path, help="the run dir (holds results.json and label_issues.csv)")
    p.add_argument("--out", type=Path, default=None, help=f"where to write (default RUN_DIR/{REPORT_FILE})")
    p.add_argument("--top", type=int, default=DEFAULT_TOP, help=f"gallery size (default {DEFAULT_TOP})")
    p.add_argument("--data-dir", default=None, help="the dataset root, if it moved since the run (data.data_dir)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top < 1:
        print(f"error: --top must be >= 1, got {args.top}", file=sys.stderr)
        return 2
    try:
        out = write_report(args.run_dir, args.out, args.top, args.data_dir)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0
