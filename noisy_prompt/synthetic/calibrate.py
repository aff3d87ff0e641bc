"""Calibrate the synthetic world against real CLIP: targets T1-T8 of docs/synthetic-world.md.

    python -m noisy_prompt.synthetic.calibrate [--seeds 1 2 3] [--quick] [--jobs 2] [--threads 1]

Runs exactly the cells the targets need with the project's own run command (`python -m
noisy_prompt.run ... sweep=calibration`, one process per cell, each in its own log folder): zero-shot
with the plain template and with a template that names the downstream conditions, CoOp (CE) and PTNL
(GCE) at clean / sym25 / sym50 / sym80 on the 16-shot split, and plain CE fine-tuning (`model=ft_ce`)
clean and at sym40 on the full-data split, for every seed. Zero-shot TAC with the world's class
descriptions (T8) and the diagnostics are computed here from the same weights and splits. Prints one
table, target by target (measured, threshold, pass/fail), plus the diagnostics, and writes the same as
JSON beside the weights (calibration.json; calibration_quick.json with --quick). Exit status 0 only
when every target holds.

`--quick` is the inner loop: one seed, fewer epochs; its numbers are not the calibration.
Finished cells are reused (their folder name carries the weights' fingerprint) by the run command itself,
which checks the stored config hash: a cell whose preset or recipe changed since stops with a message
instead of handing back its old number; `--force` reruns every cell.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .captions import SHIFT_TEMPLATE

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights" / "synthetic-clip"
PLAIN_TEMPLATE = "a photo of a {}."
PROMPT_NOISES = ("clean", "sym25", "sym50", "sym80")
FT_NOISES = ("clean", "sym40")
MIN_CLASS_ACC = 15.0
# Recipe cuts of --quick, per data config (the calibration itself uses the data configs' recipes
# unchanged). Each data config is cut only in the recipe it has: Hydra refuses an override of a key the
# config lacks (the few-shot split has no recipe.tango.max_epochs), which once failed every quick cell.
QUICK_OVERRIDES: dict[str, tuple[str, ...]] = {
    "synthetic": ("data.recipe.prompt.max_epochs=8",),
    "synthetic_full": ("data.recipe.tango.max_epochs=2",),
}


# ---------------------------------------------------------------------------------------------
# Targets: pure functions of a results set


def _mean(xs: Sequence[float] | None) -> float | None:
    return float(np.mean(xs)) if xs else None


def _std(xs: Sequence[float] | None) -> float | None:
    # Sample standard deviation (ddof=1): the conservative reading of "seed std"; needs 2 seeds.
    return float(np.std(xs, ddof=1)) if xs and len(xs) >= 2 else None


def evaluate_targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows {target, check, measured, threshold, ok} from a results set.

    `res` holds: logit_scale; zs, zs_min_class, zs_shift (zero-shot %, plain template / shift
    template); coop and ptnl: {noise: [acc per seed]}; ft_ce: {noise: [acc per seed]}; tac,
    tac_min_class (zero-shot TAC on the full-data split). A quantity that was not measured (None,
    or a std from one seed) fails its check: exit 0 means every target was measured and holds.
    """
    rows: list[dict[str, Any]] = []

    def row(target: str, check: str, measured: float | None, threshold: str, ok: bool | None) -> None:
        rows.append({"target": target, "check": check, "measured": None if measured is None else round(float(measured), 2),
                     "threshold": threshold, "ok": bool(ok) if measured is not None and ok is not None else False})

    zs = res.get("zs")
    coop = {k: _mean(v) for k, v in (res.get("coop") or {}).items()}
    ptnl = {k: _mean(v) for k, v in (res.get("ptnl") or {}).items()}
    ft = {k: _mean(v) for k, v in (res.get("ft_ce") or {}).items()}

    def ge(a, b, margin=0.0):
        return None if a is None or b is None else a >= b + margin

    scale = res.get("logit_scale")
    row("T1", "exp(logit_scale)", scale, ">= 80", ge(scale, 80.0))
    row("T2", "ZS (plain template)", zs, "45..75", None if zs is None else 45.0 <= zs <= 75.0)
    row("T2", "ZS worst class", res.get("zs_min_class"), f">= {MIN_CLASS_ACC:g}", ge(res.get("zs_min_class"), MIN_CLASS_ACC))
    zs_shift = res.get("zs_shift")
    row("T2", "ZS, template naming the shift", zs_shift, f">= ZS + 5 = {_fmt(zs, 5)}", ge(zs_shift, zs, 5.0))
    row("T3", "CoOp clean", coop.get("clean"), f">= ZS + 8 = {_fmt(zs, 8)}", ge(coop.get("clean"), zs, 8.0))
    row("T3", "PTNL clean", ptnl.get("clean"), f">= ZS + 8 = {_fmt(zs, 8)}", ge(ptnl.get("clean"), zs, 8.0))
    sd = _std((res.get("coop") or {}).get("clean"))
    row("T3", "CoOp clean seed std", sd, "<= 3 (needs >= 2 seeds)", None if sd is None else sd <= 3.0)
    for name, acc in (("CoOp", coop), ("PTNL", ptnl)):
        for hi, lo in zip(PROMPT_NOISES, PROMPT_NOISES[1:]):
            a, b = acc.get(hi), acc.get(lo)
            drop = None if a is None or b is None else a - b
            row("T4", f"{name} {hi} - {lo}", drop, ">= 2", None if drop is None else drop >= 2.0)
    row("T5", "PTNL sym50", ptnl.get("sym50"), f">= ZS = {_fmt(zs, 0)}", ge(ptnl.get("sym50"), zs))
    c50 = coop.get("sym50")
    row("T5", "CoOp sym50", c50, f"ZS - 25 .. ZS = {_fmt(zs, -25)}..{_fmt(zs, 0)}",
        None if c50 is None or zs is None else zs - 25.0 <= c50 <= zs)
    gap = None if ptnl.get("sym50") is None or c50 is None else ptnl["sym50"] - c50
    row("T5", "PTNL sym50 - CoOp sym50", gap, ">= 10", None if gap is None else gap >= 10.0)
    row("T6", "PTNL sym80", ptnl.get("sym80"), f"<= ZS - 3 = {_fmt(zs, -3)}", ge(zs, ptnl.get("sym80"), 3.0))
    row("T6", "CoOp sym80", coop.get("sym80"), f"<= ZS - 20 = {_fmt(zs, -20)}", ge(zs, coop.get("sym80"), 20.0))
    row("T7", "ft_ce clean (full data)", ft.get("clean"), f">= ZS + 10 = {_fmt(zs, 10)}", ge(ft.get("clean"), zs, 10.0))
    fdrop = None if ft.get("clean") is None or ft.get("sym40") is None else ft["clean"] - ft["sym40"]
    row("T7", "ft_ce clean - sym40", fdrop, ">= 8", None if fdrop is None else fdrop >= 8.0)
    row("T8", "zero-shot TAC, class descriptions", res.get("tac"), f">= ZS - 3 = {_fmt(zs, -3)}", ge(res.get("tac"), zs, -3.0))
    row("T8", "zero-shot TAC worst class", res.get("tac_min_class"), f">= {MIN_CLASS_ACC:g}",
        ge(res.get("tac_min_class"), MIN_CLASS_ACC))
    return rows


def _fmt(base: float | None, delta: float) -> str:
    return "?" if base is None else f"{base + delta:.1f}"


def all_hold(rows: list[dict[str, Any]]) -> bool:
    return bool(rows) and all(r["ok"] for r in rows)


def format_table(rows: list[dict[str, Any]], diagnostics: dict[str, Any] | None = None) -> str:
    lines = [f"{'target':6} {'check':36} {'measured':>9}  {'threshold':28} ok", "-" * 86]
    for r in rows:
        m = "n/a" if r["measured"] is None else f"{r['measured']:.2f}"
        lines.append(f"{r['target']:6} {r['check']:36} {m:>9}  {r['threshold']:28} {'✓' if r['ok'] else '✗'}")
    held = sum(r["ok"] for r in rows)
    lines.append(f"{held}/{len(rows)} checks hold")
    if diagnostics:
        lines.append("")
        lines.append("diagnostics (not targets):")
        for k, v in diagnostics.items():
            lines.append(f"  {k}: {v}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Cells


@dataclass(frozen=True)
class Cell:
    model: str
    data: str
    noise: str
    seed: int
    threads: int = 1
    extra: tuple[str, ...] = ()
    tag: str = ""

    @property
    def key(self) -> str:
        t = f"_{self.tag}" if self.tag else ""
        return f"{self.model}_{self.data}_{self.noise}_s{self.seed}_t{self.threads}{t}"


def plan(seeds: Sequence[int], threads: int, thread_check: bool = True) -> list[Cell]:
    cells = [Cell("zeroshot", "synthetic", "clean", 1, threads),
             Cell("zeroshot", "synthetic", "clean", 1, threads, (f"+data.templates=['{SHIFT_TEMPLATE}']",), "shift")]
    # Seed by seed (cells run in this order), so an interrupted calibration has whole seeds to report.
    for i, s in enumerate(seeds):
        for model in ("coop", "ptnl"):
            cells += [Cell(model, "synthetic", n, s, threads) for n in PROMPT_NOISES]
        cells += [Cell("ft_ce", "synthetic_full", n, s, threads) for n in FT_NOISES]
        if i == 0 and thread_check:  # the float-summation-order diagnostic (docs/synthetic-world.md): the other thread count
            cells.append(Cell("coop", "synthetic", "clean", s, 2 if threads == 1 else 1))
    return cells


def weights_fingerprint(weights: Path) -> str:
    h = hashlib.sha256()
    with open(weights / "open_clip_model.safetensors", "rb") as f:
        h.update(f.read())
    return h.hexdigest()[:10]


def cell_overrides(cell: Cell, log_dir: Path, backbone_model: str, quick: bool, force: bool) -> list[str]:
    """The Hydra overrides of one cell's `python -m noisy_prompt.run` (--quick cuts its data config's recipe)."""
    return [f"model={cell.model}", f"data={cell.data}", f"noise={cell.noise}", f"seed={cell.seed}", "backbone=synthetic",
            f"backbone.model={backbone_model}", f"paths.log_dir={log_dir}", "sweep=calibration", "logger=csv",
            "figures=false", *(QUICK_OVERRIDES.get(cell.data, ()) if quick else ()), *cell.extra,
            *(["force=true"] if force else [])]


def run_dirs(commands: Mapping[Cell, Sequence[str]]) -> dict[Cell, Path]:
    """Each cell's run dir as `noisy_prompt.run` will make it (config key `run_dir`, settings tag included),
    composed here in the main thread (Hydra's global state is not thread-safe)."""
    from hydra import compose, initialize_config_dir

    import noisy_prompt.config  # noqa: F401  (resolvers)

    from noisy_prompt.sweep import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return {cell: Path(str(compose(config_name="run", overrides=list(ov), return_hydra_config=True).run_dir))
                for cell, ov in commands.items()}


def run_cell(cell: Cell, overrides: Sequence[str], log_dir: Path, run_dir: Path) -> dict[str, Any]:
    """Runs one cell through `python -m noisy_prompt.run` (its output in `log_dir`) and returns {acc,
    per_class, run_dir, wall_s} from `run_dir`'s results.json. The run is always started: it reuses a
    finished cell only when the stored config hash equals this configuration's and stops (StaleCellError;
    rerun with --force) when a preset changed, so an edited recipe is never served from an older result."""
    cmd = [sys.executable, "-m", "noisy_prompt.run", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(cell.threads), "MKL_NUM_THREADS": str(cell.threads),
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    log_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log_dir / "calibrate_stdout.log", "w") as out:
        proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"cell {cell.key} failed (exit {proc.returncode}); see {log_dir / 'calibrate_stdout.log'}\n"
                           f"command: {' '.join(cmd)}")
    print(f"  {cell.key}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    path = run_dir / "results.json"
    if not path.is_file():
        raise RuntimeError(f"cell {cell.key}: the run wrote no {path}; see {log_dir / 'calibrate_stdout.log'}")
    results = json.loads(path.read_text())
    report = json.loads((run_dir / "module_report.json").read_text()) if (run_dir / "module_report.json").exists() else {}
    per_class = ((report.get("test_report") or {}).get("test") or {}).get("per_class")
    return {"acc": float(results["metrics"]["test/acc"]), "per_class": per_class, "run_dir": str(run_dir),
            "wall_s": results.get("wall_time_s")}


def gather(out: dict[Cell, dict[str, Any]], seeds: Sequence[int], threads: int) -> dict[str, Any]:
    """The results set `evaluate_targets` reads, from finished cells."""
    def acc(model, data, noise, seed, tag=""):
        r = out.get(Cell(model, data, noise, seed, threads, _extra(tag), tag))
        return None if r is None else r["acc"]

    zs_cell = out.get(Cell("zeroshot", "synthetic", "clean", 1, threads))
    res: dict[str, Any] = {
        "zs": acc("zeroshot", "synthetic", "clean", 1),
        "zs_min_class": min(zs_cell["per_class"]) if zs_cell and zs_cell["per_class"] else None,
        "zs_shift": acc("zeroshot", "synthetic", "clean", 1, "shift"),
    }
    for model in ("coop", "ptnl"):
        res[model] = {n: [a for s in seeds if (a := acc(model, "synthetic", n, s)) is not None] for n in PROMPT_NOISES}
    res["ft_ce"] = {n: [a for s in seeds if (a := acc("ft_ce", "synthetic_full", n, s)) is not None] for n in FT_NOISES}
    return res


def _extra(tag: str) -> tuple[str, ...]:
    return (f"+data.templates=['{SHIFT_TEMPLATE}']",) if tag == "shift" else ()


# ---------------------------------------------------------------------------------------------
# In-process measurements (T1, T8, diagnostics) on the same weights and splits


def _load(backbone_model: str):
    from noisy_prompt.clip.factory import create_clip

    bundle = create_clip(backbone_model)
    bundle.model.eval()
    return bundle


def _encode_split(bundle, split, chunk: int = 512):
    import torch

    from .pretrain import to_tensor

    feats = []
    with torch.no_grad():
        for i in range(0, len(split), chunk):
            imgs = [np.asarray(split.load(j)) for j in range(i, min(len(split), i + chunk))]
            feats.append(bundle.model.encode_image(to_tensor(imgs, bundle.mean, bundle.std), normalize=True))
    return torch.cat(feats)


def _text(bundle, sentences: list[str]):
    import torch

    with torch.no_grad():
        return torch.cat([bundle.model.encode_text(bundle.tokenizer(sentences[i:i + 256]), normalize=True)
                          for i in range(0, len(sentences), 256)])


def in_process(backbone_model: str, full_kwargs: dict, seed: int = 1, purify_k: int = 60) -> dict[str, Any]:
    """T1, T8 and the geometry / purification diagnostics."""
    import torch

    from noisy_prompt.methods.tango.purification import purify
    from noisy_prompt.methods.tango.tac import tac_log_probs
    from noisy_prompt.noise import NoiseSpec, dataset_identity

    from .dataset import read_synthetic

    torch.manual_seed(0)
    bundle = _load(backbone_model)
    ds = read_synthetic(**full_kwargs)
    names = ds.classnames
    C = len(names)
    test = _encode_split(bundle, ds.test)
    y = torch.tensor(ds.test.labels)
    txt = _text(bundle, [PLAIN_TEMPLATE.format(c) for c in names])
    sims = test @ txt.T
    true = sims[torch.arange(len(y)), y]
    out: dict[str, Any] = {"logit_scale": bundle.logit_scale}
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
    noisy = np.asarray(spec.apply(clean, C, seed, dataset_identity("synthetic", names)).noisy_labels)
    res = purify(train, torch.as_tensor(noisy), anchors, alabels, C, beta=0.5, k=purify_k,
                 clean_labels=torch.as_tensor(clean))
    diag["purification_sym40_corrected_label_acc"] = round(res.stats["soft_label_accuracy"] * 100, 2)
    diag["purification_sym40_noisy_label_acc"] = round(res.stats["noisy_label_accuracy"] * 100, 2)
    return {"res": out, "diag": diag, "bundle": bundle, "names": names}


def _offdiag(feats) -> float:
    import torch

    f = torch.nn.functional.normalize(feats.float(), dim=-1)
    s = f @ f.T
    n = s.shape[0]
    return float((s.sum() - s.diagonal().sum()) / (n * (n - 1)))


def coop_context_cosine(bundle, names: list[str], run_dir: str) -> float | None:
    """Mean off-diagonal cosine of class text features under the context a CoOp run learned."""
    import torch

    from noisy_prompt.clip.prompt_encoder import PromptTextEncoder

    ckpts = sorted(Path(run_dir).rglob("*.ckpt"))
    if not ckpts:
        return None
    from noisy_prompt.errors import safe_torch_load

    state = safe_torch_load(ckpts[-1], what="checkpoint", remedy=f"Delete {ckpts[-1]} and rerun that cell.")["state_dict"]
    ctx = state.get("ctx")
    if ctx is None:
        return None
    enc = PromptTextEncoder(bundle.model, bundle.tokenizer, names, ctx.shape[0])
    with torch.no_grad():
        return _offdiag(enc(ctx.float()))


# ---------------------------------------------------------------------------------------------
# Main


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--quick", action="store_true", help="one seed (the first), fewer epochs: the inner loop")
    p.add_argument("--jobs", type=int, default=2, help="cells run at once (each a process)")
    p.add_argument("--threads", type=int, default=1, help="OMP threads per cell")
    p.add_argument("--weights", default=str(WEIGHTS_DIR), help="open_clip local-dir of the tiny CLIP")
    p.add_argument("--log-dir", default=None,
                   help="where cells run (default: $NOISY_PROMPT_LOGS/calibration or /tmp/noisy_prompt_calibration)")
    p.add_argument("--out", default=None, help="JSON output (default: calibration[_quick].json beside the weights)")
    p.add_argument("--force", action="store_true", help="rerun cells whose results exist")
    p.add_argument("--no-thread-check", action="store_true", help="skip the extra CoOp cell with the other thread count")
    a = p.parse_args(argv)

    weights = Path(a.weights).resolve()
    seeds = a.seeds[:1] if a.quick else a.seeds
    fp = weights_fingerprint(weights)
    base = Path(a.log_dir or os.environ.get("NOISY_PROMPT_LOGS") or "/tmp/noisy_prompt_calibration")
    root = (base / "calibration" if a.log_dir is None and os.environ.get("NOISY_PROMPT_LOGS") else base) / (
        f"{fp}_quick" if a.quick else fp)
    backbone_model = f"local-dir:{weights}"
    cells = plan(seeds, a.threads, thread_check=not a.no_thread_check)
    print(f"calibration: {len(cells)} cells, seeds {seeds}{' (quick)' if a.quick else ''}, in {root}", file=sys.stderr)
    t0 = time.time()
    out: dict[Cell, dict[str, Any]] = {}
    failures: list[str] = []
    commands = {c: cell_overrides(c, root / c.key, backbone_model, a.quick, a.force) for c in cells}
    dirs = run_dirs(commands)
    with cf.ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        futures = {pool.submit(run_cell, c, commands[c], root / c.key, dirs[c]): c for c in cells}
        for fut in cf.as_completed(futures):
            try:
                out[futures[fut]] = fut.result()
            except Exception as e:  # a failed cell leaves its checks unmeasured (✗), the others still count
                failures.append(str(e))
                print(e, file=sys.stderr)
    res = gather(out, seeds, a.threads)

    from .dataset import read_synthetic  # noqa: F401  (import check before the heavier in-process part)
    import yaml

    conf = Path(__file__).resolve().parents[2] / "conf" / "data"
    full_kwargs = dict(yaml.safe_load((conf / "synthetic_full.yaml").read_text())["reader_kwargs"])
    full_k = yaml.safe_load((conf / "synthetic_full.yaml").read_text())["recipe"]["tango"].get("k", 60)
    ip = in_process(backbone_model, full_kwargs, purify_k=int(full_k) if str(full_k).isdigit() else "auto")
    res.update(ip["res"])
    diag = dict(ip["diag"])
    coop50 = out.get(Cell("coop", "synthetic", "sym50", seeds[0], a.threads))
    if coop50:
        after = coop_context_cosine(ip["bundle"], ip["names"], coop50["run_dir"])
        diag["mean_offdiag_text_cosine_after_coop_sym50"] = None if after is None else round(after, 4)
    other = 2 if a.threads == 1 else 1
    tc = out.get(Cell("coop", "synthetic", "clean", seeds[0], other))
    mine = out.get(Cell("coop", "synthetic", "clean", seeds[0], a.threads))
    if tc and mine:
        diag[f"coop_clean_seed{seeds[0]}_threads{a.threads}_vs_{other}"] = [round(mine["acc"], 2), round(tc["acc"], 2)]
    rows = evaluate_targets(res)
    ok = all_hold(rows) and not failures
    print(format_table(rows, diag))
    record = {
        "command": "python -m noisy_prompt.synthetic.calibrate " + " ".join(argv if argv is not None else sys.argv[1:]),
        "quick": a.quick, "seeds": seeds, "threads_per_cell": a.threads, "weights_sha256_10": fp,
        "wall_s": round(time.time() - t0, 1), "all_hold": ok, "failures": failures,
        "targets": rows, "diagnostics": diag, "results": res,
        "cells": {c.key: {"acc": r["acc"], "wall_s": r["wall_s"]} for c, r in sorted(out.items(), key=lambda kv: kv[0].key)},
    }
    dest = Path(a.out) if a.out else weights / ("calibration_quick.json" if a.quick else "calibration.json")
    dest.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written {dest}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
