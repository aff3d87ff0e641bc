"""Calibrate the built-in world against real CLIP: targets T1-T10 of docs/synthetic-world.md.

    python -m noisy_prompt.tools.calibrate [--seeds 1 2 3] [--quick] [--jobs 1] [--threads 1] [--log-dir DIR] [--force] [-- overrides]
    python -m noisy_prompt.tools.calibrate --check-only ROOT [--seeds ...] [--quick] [--records-only] [-- overrides]

Two steps. (1) The cells: sweeps/calibration.yaml, run by the sweep command as a subprocess (`python -m
noisy_prompt.sweep calibration --cells seed=... -- paths.log_dir=...`), so reuse, staleness checks, resume
and locks are the run command's: a finished cell is reused only when its config, weights and data digests
match, an edited recipe stops with the keys that differ (`--force` reruns), a killed cell resumes.
`--jobs N` starts N sweep processes on disjoint sets of models. (2) The check: every run record under ROOT
(= <log dir>/calibration; `noisy_prompt.reporting.aggregate.load_runs`) that belongs to the calibration
(backbone `--backbone`, the settings of the extra overrides and nothing else, the weights' current digest)
is read, and T1-T10 are evaluated: T2-T7 from test accuracies, T9-T10 from each prompt-tuning run's
`train/loss_final` and `train_fit/*` (recorded by the TrainFit callback), T1 from the weights, T8 (zero-shot
TAC with the world's class descriptions) and the geometry / purification diagnostics in this process from
the same weights and splits. It prints the target table (✓/✗; a quantity not measured fails its check) and
the held-in seeds' per-seed rows, and writes both to ROOT/calibration[<settings tag>].json. Exit status 0
only when every check holds.

`--quick` is the inner loop, not the calibration: one seed, 8 prompt epochs, 2 fine-tuning epochs (its own
run dirs: the shortened recipes are settings). Extra overrides after `--` go to every cell and select the
records the check reads.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

SWEEP = "calibration"
PLAIN_TEMPLATE = "a photo of a {}."
PROMPT_MODELS = ("coop", "ptnl")
PROMPT_NOISES = ("clean", "sym25", "sym50", "sym80")
FT_NOISES = ("clean", "sym40")
MIN_CLASS_ACC = 15.0
# --quick: every cell's recipe cut (`++`: the few-shot data config has no recipe.tango.max_epochs to override).
QUICK_OVERRIDES = ("++data.recipe.prompt.max_epochs=8", "++data.recipe.tango.max_epochs=2")
SHIFT_KEY = "data.templates"  # the setting that makes the zero-shot cell the shift-template one
NAMES = {"coop": "CoOp", "ptnl": "PTNL", "ft_ce": "ft_ce"}


# ---------------------------------------------------------------------------------------------
# Targets: pure functions of a results set


def _mean(xs: Sequence[float] | None) -> float | None:
    return float(np.mean(xs)) if xs else None


def _std(xs: Sequence[float] | None) -> float | None:
    # Sample standard deviation (ddof=1): the conservative reading of "seed std"; needs 2 seeds.
    return float(np.std(xs, ddof=1)) if xs and len(xs) >= 2 else None


def _runs(res: Mapping[str, Any], model: str, noise: str) -> dict[int, dict[str, Any]]:
    """{seed: run} of one cell in a results set (seeds as ints, sorted)."""
    cell = ((res.get("runs") or {}).get(model) or {}).get(noise) or {}
    return {int(s): dict(r) for s, r in sorted(cell.items(), key=lambda kv: int(kv[0]))}


def _values(res: Mapping[str, Any], model: str, noise: str, key: str) -> list[float | None]:
    """One value per seed that has a run (None where that run lacks `key`)."""
    return [r.get(key) for r in _runs(res, model, noise).values()]


def _all(values: list[float | None]) -> list[float] | None:
    """The values when every seed has one (at least one seed), else None: a seed without it is unmeasured."""
    return [float(v) for v in values] if values and all(v is not None for v in values) else None


def evaluate_targets(res: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows {target, check, measured, threshold, ok} from a results set.

    `res` holds: logit_scale; num_classes; zs, zs_min_class, zs_shift (zero-shot %, plain template / shift
    template); runs: {model: {noise: {seed: {acc, loss, fit_noisy, fit_clean}}}} for coop, ptnl (16 shots)
    and ft_ce (full data; acc only), accuracies in %, fits as fractions; tac, tac_min_class (zero-shot TAC
    on the full-data split). A quantity that was not measured (None, a std from one seed, a seed without
    its train loss or fit) fails its check: exit 0 means every target was measured and holds.
    """
    rows: list[dict[str, Any]] = []

    def row(target: str, check: str, measured: float | None, threshold: str, ok: bool | None) -> None:
        rows.append({"target": target, "check": check, "measured": None if measured is None else round(float(measured), 2),
                     "threshold": threshold, "ok": bool(ok) if measured is not None and ok is not None else False})

    def mean_acc(model: str, noise: str) -> float | None:
        return _mean(_all(_values(res, model, noise, "acc")))

    def ge(a, b, margin=0.0):
        return None if a is None or b is None else a >= b + margin

    zs = res.get("zs")
    coop = {n: mean_acc("coop", n) for n in PROMPT_NOISES}
    ptnl = {n: mean_acc("ptnl", n) for n in PROMPT_NOISES}
    ft = {n: mean_acc("ft_ce", n) for n in FT_NOISES}
    scale = res.get("logit_scale")
    row("T1", "exp(logit_scale)", scale, ">= 80", ge(scale, 80.0))
    row("T2", "ZS (plain template)", zs, "45..75", None if zs is None else 45.0 <= zs <= 75.0)
    row("T2", "ZS worst class", res.get("zs_min_class"), f">= {MIN_CLASS_ACC:g}", ge(res.get("zs_min_class"), MIN_CLASS_ACC))
    zs_shift = res.get("zs_shift")
    row("T2", "ZS, template naming the shift", zs_shift, f">= ZS + 5 = {_fmt(zs, 5)}", ge(zs_shift, zs, 5.0))
    row("T3", "CoOp clean", coop["clean"], f">= ZS + 8 = {_fmt(zs, 8)}", ge(coop["clean"], zs, 8.0))
    row("T3", "PTNL clean", ptnl["clean"], f">= ZS + 8 = {_fmt(zs, 8)}", ge(ptnl["clean"], zs, 8.0))
    sd = _std(_all(_values(res, "coop", "clean", "acc")))
    row("T3", "CoOp clean seed std", sd, "<= 3 (needs >= 2 seeds)", None if sd is None else sd <= 3.0)
    for name, acc in (("CoOp", coop), ("PTNL", ptnl)):
        for hi, lo in zip(PROMPT_NOISES, PROMPT_NOISES[1:]):
            a, b = acc[hi], acc[lo]
            drop = None if a is None or b is None else a - b
            row("T4", f"{name} {hi} - {lo}", drop, ">= 2", None if drop is None else drop >= 2.0)
    row("T5", "PTNL sym50", ptnl["sym50"], f">= ZS = {_fmt(zs, 0)}", ge(ptnl["sym50"], zs))
    c50 = coop["sym50"]
    row("T5", "CoOp sym50", c50, f"ZS - 25 .. ZS = {_fmt(zs, -25)}..{_fmt(zs, 0)}",
        None if c50 is None or zs is None else zs - 25.0 <= c50 <= zs)
    gap = None if ptnl["sym50"] is None or c50 is None else ptnl["sym50"] - c50
    row("T5", "PTNL sym50 - CoOp sym50", gap, ">= 10", None if gap is None else gap >= 10.0)
    row("T6", "PTNL sym80", ptnl["sym80"], f"<= ZS - 3 = {_fmt(zs, -3)}", ge(zs, ptnl["sym80"], 3.0))
    row("T6", "CoOp sym80", coop["sym80"], f"<= ZS - 20 = {_fmt(zs, -20)}", ge(zs, coop["sym80"], 20.0))
    row("T7", "ft_ce clean (full data)", ft["clean"], f">= ZS + 10 = {_fmt(zs, 10)}", ge(ft["clean"], zs, 10.0))
    fdrop = None if ft["clean"] is None or ft["sym40"] is None else ft["clean"] - ft["sym40"]
    row("T7", "ft_ce clean - sym40", fdrop, ">= 8", None if fdrop is None else fdrop >= 8.0)
    row("T8", "zero-shot TAC, class descriptions", res.get("tac"), f">= ZS - 3 = {_fmt(zs, -3)}", ge(res.get("tac"), zs, -3.0))
    row("T8", "zero-shot TAC worst class", res.get("tac_min_class"), f">= {MIN_CLASS_ACC:g}",
        ge(res.get("tac_min_class"), MIN_CLASS_ACC))
    # T9: no collapse on any seed. Loss and test accuracy are read per seed: the worst seed decides.
    C = res.get("num_classes")
    limit = None if not C else math.log(C) - 1.0
    losses = _all(_values(res, "coop", "sym50", "loss"))
    worst_loss = None if losses is None else max(losses)
    row("T9", "CoOp sym50 train loss, worst seed", worst_loss,
        f"<= ln C - 1 = {'?' if limit is None else f'{limit:.2f}'} every seed",
        None if worst_loss is None or limit is None else worst_loss <= limit)
    accs = _all(_values(res, "coop", "sym50", "acc"))
    worst_acc = None if accs is None else min(accs)
    row("T9", "CoOp sym50 test, worst seed", worst_acc, f">= ZS - 25 = {_fmt(zs, -25)} every seed", ge(worst_acc, zs, -25.0))
    sd50 = _std(accs)
    row("T9", "CoOp sym50 seed std", sd50, "<= 5 (needs >= 2 seeds)", None if sd50 is None else sd50 <= 5.0)
    # T10: a partial fit of the wrong labels under CE, almost none under GCE (seed means, in %).
    fit_ce = _mean(_all(_values(res, "coop", "sym50", "fit_noisy")))
    fit_ce = None if fit_ce is None else 100.0 * fit_ce
    row("T10", "CoOp sym50 wrong labels predicted %", fit_ce, "5..40", None if fit_ce is None else 5.0 <= fit_ce <= 40.0)
    fit_gce = _mean(_all(_values(res, "ptnl", "sym50", "fit_noisy")))
    fit_gce = None if fit_gce is None else 100.0 * fit_gce
    row("T10", "PTNL sym50 wrong labels predicted %", fit_gce, "<= 10", None if fit_gce is None else fit_gce <= 10.0)
    return rows


def _fmt(base: float | None, delta: float) -> str:
    return "?" if base is None else f"{base + delta:.1f}"


def all_hold(rows: list[dict[str, Any]]) -> bool:
    return bool(rows) and all(r["ok"] for r in rows)


def format_table(rows: list[dict[str, Any]], diagnostics: Mapping[str, Any] | None = None) -> str:
    lines = [f"{'target':6} {'check':36} {'measured':>9}  {'threshold':30} ok", "-" * 88]
    for r in rows:
        m = "n/a" if r["measured"] is None else f"{r['measured']:.2f}"
        lines.append(f"{r['target']:6} {r['check']:36} {m:>9}  {r['threshold']:30} {'✓' if r['ok'] else '✗'}")
    held = sum(r["ok"] for r in rows)
    lines.append(f"{held}/{len(rows)} checks hold")
    if diagnostics:
        lines.append("")
        lines.append("diagnostics (not targets):")
        for k, v in diagnostics.items():
            lines.append(f"  {k}: {v}")
    return "\n".join(lines)


def seeds_of(res: Mapping[str, Any]) -> list[int]:
    return sorted({int(s) for cells in (res.get("runs") or {}).values() for runs in cells.values() for s in runs})


def per_seed_rows(res: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per held-in seed: {seed, column label: value or None} (accuracies and losses as recorded,
    fits in %), so that a seed on which a cell collapses stands out beside the others."""
    out = []
    for seed in seeds_of(res):
        r: dict[str, Any] = {"seed": seed, "ZS*": res.get("zs")}
        for model in PROMPT_MODELS:
            for n in PROMPT_NOISES:
                r[f"{NAMES[model]} {n}"] = _runs(res, model, n).get(seed, {}).get("acc")
        for model in PROMPT_MODELS:
            run = _runs(res, model, "sym50").get(seed, {})
            r[f"{NAMES[model]} sym50 loss"] = run.get("loss")
            fit = run.get("fit_noisy")
            r[f"{NAMES[model]} sym50 wrong fit %"] = None if fit is None else 100.0 * fit
        for n in FT_NOISES:
            r[f"ft_ce {n}"] = _runs(res, "ft_ce", n).get(seed, {}).get("acc")
        out.append(r)
    return out


def format_per_seed(res: Mapping[str, Any]) -> str:
    rows = per_seed_rows(res)
    if not rows:
        return "per seed: no runs"
    cols = [k for k in rows[0] if k != "seed"]
    # two header lines: the group (model and noise or quantity) split at its first space
    heads = [(c.split(" ", 1)[0], c.split(" ", 1)[1] if " " in c else "") for c in cols]
    width = [max(6, len(a), len(b)) for a, b in heads]
    lines = ["per seed (held-in seeds): test acc % (last epoch); loss = last-epoch train loss"
             + (f" (ln C = {math.log(res['num_classes']):.2f})" if res.get("num_classes") else "")
             + "; wrong fit = wrong training labels predicted, %; ZS* = zero-shot, seed-free (one run)"]
    lines.append("seed  " + " ".join(f"{a:>{w}}" for (a, _), w in zip(heads, width)))
    lines.append("      " + " ".join(f"{b:>{w}}" for (_, b), w in zip(heads, width)))
    for r in rows:
        cells = ["n/a" if r[c] is None else f"{r[c]:.2f}" for c in cols]
        lines.append(f"{r['seed']:<5} " + " ".join(f"{v:>{w}}" for v, w in zip(cells, width)))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The records: which runs under ROOT are the calibration's


def expected_settings(extra: Sequence[str]) -> dict[str, str]:
    """The settings (result-determining overrides, as run records store them) the extra overrides give."""
    from noisy_prompt.cell import parse_settings

    return parse_settings(list(extra))


def _payload(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def select_runs(root: str | Path, backbone: str = "synthetic", extra: Sequence[str] = (),
                seeds: Sequence[int] | None = None) -> tuple[dict[str, Any], list[str]]:
    """({role: record}, notes) of the calibration's runs under `root`: roles 'zs', 'zs_shift' and
    (model, noise, seed) for coop / ptnl / ft_ce. A run belongs when its backbone is `backbone`, its
    settings are exactly those of `extra` (plus the shift template for 'zs_shift') and its weights are
    the ones its backbone names now, on the data its dataset holds now (build.record_staleness); failed, stale
    and foreign runs are listed in the notes."""
    from noisy_prompt.build import record_staleness
    from noisy_prompt.reporting.aggregate import load_runs
    from noisy_prompt.synthetic.captions import SHIFT_TEMPLATE

    want = expected_settings(extra)
    loaded = load_runs(root)
    notes = list(loaded.warnings)
    chosen: dict[Any, Any] = {}
    other = 0
    for rec in loaded.runs:
        key = rec.key
        settings = dict(key.settings)
        shift = settings.pop(SHIFT_KEY, None)
        if key.backbone != backbone or settings != want or key.train_data != key.data:
            other += 1
            continue
        if seeds is not None and rec.seed not in seeds and key.model != "zeroshot":
            continue
        if not rec.ok:
            notes.append(f"failed: {key.label()} seed {rec.seed}: {rec.error} ({rec.path})")
            continue
        payload = _payload(rec.path)
        stale = record_staleness(payload)
        if stale:
            notes.append(f"stale, not read: {key.label()} seed {rec.seed}: {'; '.join(stale)} ({rec.path}); "
                         "rerun the calibration")
            continue
        if key.model == "zeroshot" and key.data == "synthetic" and key.noise == "clean":
            if shift is None:
                chosen["zs"] = rec
            else:
                templates = ((rec.config.get("data") or {}).get("templates"))
                if templates != [SHIFT_TEMPLATE]:
                    notes.append(f"not read: {rec.path} is a zero-shot run with templates {templates}; T2 needs the "
                                 f"world's shift template [{SHIFT_TEMPLATE!r}] (sweeps/calibration.yaml stage 2)")
                    continue
                chosen["zs_shift"] = rec
        elif shift is None and ((key.model in PROMPT_MODELS and key.data == "synthetic" and key.noise in PROMPT_NOISES)
                                or (key.model == "ft_ce" and key.data == "synthetic_full" and key.noise in FT_NOISES)):
            chosen[(key.model, key.noise, rec.seed)] = rec
        else:
            other += 1
    if other:
        notes.append(f"{other} other run(s) under {root} are not the calibration's (another backbone, model, "
                     f"split or settings than {want or 'none'}): not read")
    return chosen, notes


def _per_class(record) -> list[float] | None:
    report = _payload(Path(record.path).parent / "module_report.json")
    return ((report.get("test_report") or {}).get("test") or {}).get("per_class")


def gather(chosen: Mapping[Any, Any]) -> dict[str, Any]:
    """The results set `evaluate_targets` reads, from the selected records."""
    def acc(rec) -> float | None:
        value = rec.metrics.get("test/acc")
        return None if value is None else float(value)

    res: dict[str, Any] = {"runs": {m: {} for m in (*PROMPT_MODELS, "ft_ce")}}
    if "zs" in chosen:
        res["zs"] = acc(chosen["zs"])
        per_class = _per_class(chosen["zs"])
        res["zs_min_class"] = min(per_class) if per_class else None
        res["num_classes"] = len(per_class) if per_class else None
    if "zs_shift" in chosen:
        res["zs_shift"] = acc(chosen["zs_shift"])
    for role, rec in chosen.items():
        if not isinstance(role, tuple):
            continue
        model, noise, seed = role
        m = rec.metrics
        run = {"acc": acc(rec), "run_dir": str(Path(rec.path).parent)}
        for name, key in (("loss", "train/loss_final"), ("fit_noisy", "train_fit/noisy"), ("fit_clean", "train_fit/clean"),
                          ("fit_true_of_noisy", "train_fit/true_of_noisy")):
            if key in m:
                run[name] = float(m[key])
        res["runs"][model].setdefault(noise, {})[int(seed)] = run
        if not res.get("num_classes"):
            per_class = _per_class(rec)
            res["num_classes"] = len(per_class) if per_class else None
    return res


# ---------------------------------------------------------------------------------------------
# In-process measurements (T1, T8, diagnostics) on the records' weights and splits


def _encode_split(bundle, split, chunk: int = 512):
    import torch

    from noisy_prompt.data.transforms import test_transform

    tf = test_transform(bundle.image_size, bundle.mean, bundle.std)  # what the datamodule evaluates with
    feats = []
    with torch.no_grad():
        for i in range(0, len(split), chunk):
            x = torch.stack([tf(split.load(j)) for j in range(i, min(len(split), i + chunk))])
            feats.append(bundle.model.encode_image(x, normalize=True))
    return torch.cat(feats)


def _text(bundle, sentences: list[str]):
    import torch

    with torch.no_grad():
        return torch.cat([bundle.model.encode_text(bundle.tokenizer(sentences[i:i + 256]), normalize=True)
                          for i in range(0, len(sentences), 256)])


def _offdiag(feats) -> float:
    import torch

    f = torch.nn.functional.normalize(feats.float(), dim=-1)
    s = f @ f.T
    n = s.shape[0]
    return float((s.sum() - s.diagonal().sum()) / (n * (n - 1)))


def weights_scale(backbone: Mapping[str, Any]) -> tuple[Any, float]:
    """(the CLIP bundle the records' backbone config builds, its exp(logit_scale)): T1."""
    from noisy_prompt.clip.factory import create_clip

    bundle = create_clip(**dict(backbone))
    bundle.model.eval()
    return bundle, bundle.logit_scale


def in_process(bundle, reader: str, reader_kwargs: Mapping[str, Any], seed: int = 1, purify_k: int | str = 60) -> dict[str, Any]:
    """T8 and the geometry / purification diagnostics on the full-data split the ft_ce cells read."""
    import torch

    from noisy_prompt.data.readers import read_dataset
    from noisy_prompt.methods.tango.purification import purify
    from noisy_prompt.methods.tango.tac import tac_log_probs
    from noisy_prompt.noise import NoiseSpec, dataset_identity

    torch.manual_seed(0)
    ds = read_dataset(reader, None, **dict(reader_kwargs))
    names = ds.classnames
    C = len(names)
    test = _encode_split(bundle, ds.test)
    y = torch.tensor(ds.test.labels)
    txt = _text(bundle, [PLAIN_TEMPLATE.format(c) for c in names])
    sims = test @ txt.T
    true = sims[torch.arange(len(y)), y]
    out: dict[str, Any] = {}
    diag: dict[str, Any] = {
        "median_true_class_cosine": round(float(true.median()), 4),
        "median_row_spread_of_cosines": round(float((sims.max(1).values - sims.min(1).values).median()), 4),
        "mean_offdiag_text_cosine_plain_template": round(_offdiag(txt), 4),
    }
    # T8: zero-shot TAC over the world's class descriptions (the anchors TANGO reads from the dataset).
    sentences = [ds.class_descriptions[c] for c in names]
    anchors = _text(bundle, [s for per in sentences for s in per])
    alabels = torch.tensor([c for c, per in enumerate(sentences) for _ in per])
    pred = tac_log_probs(test, anchors, alabels, C, bundle.logit_scale).argmax(1)
    per_class = [float((pred[y == c] == c).float().mean()) * 100 for c in range(C)]
    out["tac"] = float((pred == y).float().mean()) * 100
    out["tac_min_class"] = min(per_class)
    # Diagnostic: one zero-shot purification at sym40 on the full-data split (corrected vs noisy labels).
    train = _encode_split(bundle, ds.train)
    clean = np.asarray(ds.train.labels)
    spec = NoiseSpec(name="sym40", protocol="sym", rate=0.4, exclude_true=False)
    noisy = np.asarray(spec.apply(clean, C, seed, dataset_identity(reader, names)).noisy_labels)
    res = purify(train, torch.as_tensor(noisy), anchors, alabels, C, beta=0.5, k=purify_k,
                 clean_labels=torch.as_tensor(clean))
    diag["purification_sym40_corrected_label_acc"] = round(res.stats["soft_label_accuracy"] * 100, 2)
    diag["purification_sym40_noisy_label_acc"] = round(res.stats["noisy_label_accuracy"] * 100, 2)
    return {"res": out, "diag": diag, "names": names}


def coop_context_cosine(bundle, names: list[str], run_dir: str | Path) -> float | None:
    """Mean off-diagonal cosine of class text features under the context a CoOp run learned (its last.ckpt)."""
    import torch

    from noisy_prompt.clip.prompt_encoder import PromptTextEncoder
    from noisy_prompt.errors import safe_torch_load

    ckpts = sorted(Path(run_dir).rglob("*.ckpt"))
    if not ckpts:
        return None
    state = safe_torch_load(ckpts[-1], what="checkpoint", remedy=f"Delete {ckpts[-1]} and rerun that cell.")["state_dict"]
    ctx = state.get("ctx")
    if ctx is None:
        return None
    enc = PromptTextEncoder(bundle.model, bundle.tokenizer, names, ctx.shape[0])
    with torch.no_grad():
        return _offdiag(enc(ctx.float()))


# ---------------------------------------------------------------------------------------------
# The check and the command


def _full_split(chosen: Mapping[Any, Any]) -> tuple[str, dict, Any]:
    """(reader, reader kwargs, purification k) of the full-data split, from an ft_ce record's config or,
    without one, from conf/data/synthetic_full.yaml."""
    for role, rec in chosen.items():
        if isinstance(role, tuple) and role[0] == "ft_ce":
            data = rec.config.get("data") or {}
            return str(data.get("reader") or data.get("name")), dict(data.get("reader_kwargs") or {}), \
                ((data.get("recipe") or {}).get("tango") or {}).get("k", 60)
    import yaml

    conf = Path(__file__).resolve().parents[2] / "conf" / "data" / "synthetic_full.yaml"
    raw = yaml.safe_load(conf.read_text())
    return str(raw.get("reader", "synthetic")), dict(raw["reader_kwargs"]), raw["recipe"]["tango"].get("k", 60)


def check(root: str | Path, backbone: str = "synthetic", extra: Sequence[str] = (), seeds: Sequence[int] | None = None,
          images: bool = True) -> dict[str, Any]:
    """The calibration record of the runs under `root`: targets, diagnostics, results set, per-seed rows."""
    chosen, notes = select_runs(root, backbone, extra, seeds)
    res = gather(chosen)
    diag: dict[str, Any] = {}
    any_rec = next(iter(chosen.values()), None)
    if any_rec is not None:
        bb = dict(any_rec.config.get("backbone") or {})
        bundle, res["logit_scale"] = weights_scale(bb)
        if images:
            reader, kwargs, k = _full_split(chosen)
            ip = in_process(bundle, reader, kwargs, purify_k=int(k) if str(k).isdigit() else "auto")
            res.update(ip["res"])
            diag.update(ip["diag"])
            seed = seeds_of(res)[0] if seeds_of(res) else None
            run = _runs(res, "coop", "sym50").get(seed) if seed is not None else None
            if run:
                after = coop_context_cosine(bundle, ip["names"], run["run_dir"])
                diag[f"mean_offdiag_text_cosine_after_coop_sym50_seed{seed}"] = None if after is None else round(after, 4)
        else:
            notes.append("--records-only: T8 and the diagnostics were not measured")
    rows = evaluate_targets(res)
    return {"root": str(root), "backbone": backbone, "settings": expected_settings(extra), "all_hold": all_hold(rows),
            "targets": rows, "per_seed": per_seed_rows(res), "diagnostics": diag, "notes": notes, "results": res}


def sweep_commands(seeds: Sequence[int], jobs: int, log_dir: str | Path, extra: Sequence[str] = (),
                   force: bool = False, python: str | None = None) -> list[list[str]]:
    """The sweep command(s) that run the calibration's cells: one, or `jobs` on disjoint sets of models
    (every grid of the sweep file has a `model` axis, so the sets split the cells exactly)."""
    models = ["zeroshot", "coop", "ptnl", "ft_ce"]
    jobs = max(1, min(int(jobs), len(models)))
    parts = [models[i::jobs] for i in range(jobs)] if jobs > 1 else [None]
    cmds = []
    for part in parts:
        cmd = [python or sys.executable, "-m", "noisy_prompt.sweep", SWEEP, "--cells", "seed=" + ",".join(map(str, seeds))]
        if part:
            cmd += ["model=" + ",".join(part)]
        cmd += [*(["--force"] if force else []), "--", *extra, f"paths.log_dir={log_dir}"]
        cmds.append(cmd)
    return cmds


def run_sweep(cmds: Sequence[Sequence[str]], threads: int) -> list[int]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "WANDB_MODE": "disabled"}
    for cmd in cmds:
        print("calibration: " + shlex.join(cmd), file=sys.stderr, flush=True)
    procs = [subprocess.Popen(list(cmd), env=env) for cmd in cmds]
    return [p.wait() for p in procs]


def _report(record: Mapping[str, Any]) -> str:
    parts = [format_table(record["targets"], record["diagnostics"]), "", format_per_seed(record["results"])]
    if record["notes"]:
        parts += ["", "notes:", *(f"  {n}" for n in record["notes"])]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(prog="python -m noisy_prompt.tools.calibrate", description=__doc__.split("\n\n")[0],
                                epilog="Arguments after `--` are Hydra overrides for every cell (and select the records checked).")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="held-in seeds (default: the sweep file's 1 2 3)")
    p.add_argument("--quick", action="store_true", help="one seed (the first), fewer epochs: the inner loop")
    p.add_argument("--jobs", type=int, default=1, help="sweep processes at once, on disjoint sets of models")
    p.add_argument("--threads", type=int, default=1, help="OMP threads per cell")
    p.add_argument("--log-dir", default=None,
                   help="paths.log_dir of the cells (default: $NOISY_PROMPT_LOGS or ~/noisy_prompt/runs); "
                        "the records are checked under LOG_DIR/calibration")
    p.add_argument("--force", action="store_true", help="rerun cells whose results exist")
    p.add_argument("--check-only", metavar="ROOT", default=None, help="run nothing: check the records under ROOT")
    p.add_argument("--backbone", default="synthetic", help="the backbone name of the records checked")
    p.add_argument("--records-only", action="store_true",
                   help="skip the in-process part on the full-data images (T8 and diagnostics then n/a)")
    p.add_argument("--out", default=None, help="JSON output (default: ROOT/calibration[<settings tag>].json)")
    a = p.parse_args(own)
    seeds = list(a.seeds or [1, 2, 3])
    if a.quick:
        seeds = seeds[:1]
        extra = [*QUICK_OVERRIDES, *extra]
    t0 = time.time()
    if a.check_only:
        root = Path(a.check_only).expanduser()
        if not root.is_dir():
            print(f"error: --check-only {root}: not a directory of run records", file=sys.stderr)
            return 2
        codes: list[int] = []
    else:
        log_dir = Path(a.log_dir or os.environ.get("NOISY_PROMPT_LOGS") or Path.home() / "noisy_prompt" / "runs").expanduser()
        root = log_dir / SWEEP
        codes = run_sweep(sweep_commands(seeds, a.jobs, log_dir, extra, a.force), a.threads)
        if any(c == 2 for c in codes):  # the sweep refused its arguments or a cell does not compose
            print("error: the sweep command stopped before running (exit 2); see its message above", file=sys.stderr)
            return 2
        if not root.is_dir():
            print(f"error: no run records under {root}", file=sys.stderr)
            return 1
    record = check(root, a.backbone, extra, seeds, images=not a.records_only)
    print(_report(record))
    ok = record["all_hold"] and not any(codes)
    from noisy_prompt.cell import settings_tag

    dest = Path(a.out) if a.out else root / f"calibration{settings_tag(record['settings'])}.json"
    out = {"command": "python -m noisy_prompt.tools.calibrate " + shlex.join(argv), "seeds": seeds,
           "threads_per_cell": a.threads, "sweep_exit_codes": codes, "wall_s": round(time.time() - t0, 1), **record,
           "all_hold": ok}
    dest.parent.mkdir(parents=True, exist_ok=True)
    from noisy_prompt.cell import write_json

    write_json(dest, out)
    print(f"written {dest}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
