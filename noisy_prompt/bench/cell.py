"""`python -m noisy_prompt.bench cell`: where a cell's wall time goes, and old-vs-new comparisons of whole cells.

  python -m noisy_prompt.bench cell --preset tango            # breakdown of one TANGO evidence cell (this checkout)
  python -m noisy_prompt.bench cell --preset dpsep --compare /path/to/old/checkout --repeats 2

Each run is a fresh process (`noisy_prompt/bench/cell_runner.py`, which wraps functions with wall-clock
timers and changes no computation) of `python -m noisy_prompt.run <overrides>`, one thread
(OMP_NUM_THREADS/MKL_NUM_THREADS and torch.set_num_threads), logs and caches under a temporary dir. With
--compare, the old checkout (its `noisy_prompt` on PYTHONPATH; the timers come from this checkout) and this
one run interleaved (old, new, old, new, ...), or with --parallel at the same time (a 2-core machine: one
core each), so that a shared machine's load hits both alike; the table
gives each run's wall time, the ratios, and whether the results.json metrics are identical to the digit.
`--cache cold` (default) gives every run an empty cache dir; `warm` runs each side once untimed first and
then reuses its cache dir, as the cells of a sweep after the first do.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# One representative cell of each evidence sweep (README section 8 commands).
PRESETS = {
    "tango": ["backbone=synthetic", "data=synthetic_full", "model=tango", "noise=sym40", "seed=1"],
    "dpsep": ["backbone=synthetic", "data=synthetic", "model=dpsep", "noise=sym50", "seed=1",
              "data.val_from=test", "model.val_every=1"],
    # short versions (seconds to a minute) for checks
    "tango_short": ["backbone=synthetic", "data=synthetic_full", "model=tango", "noise=sym40", "seed=1",
                    "model.max_epochs=2", "data.reader_kwargs.num_classes=16", "data.reader_kwargs.num_train_per_class=12",
                    "data.reader_kwargs.num_test_per_class=4", "model.k=5", "model.anchors.k=4"],
    "dpsep_short": ["backbone=synthetic", "data=synthetic", "model=dpsep", "noise=sym50", "seed=1",
                    "data.val_from=test", "model.val_every=1", "model.max_epochs=2",
                    "data.reader_kwargs.num_classes=16", "data.reader_kwargs.num_test_per_class=4"],
}
RUNNER = Path(__file__).with_name("cell_runner.py")


def run_once(tree: str, overrides: list[str], workdir: Path, tag: str, cache_dir: Path, threads: int = 1) -> dict:
    """One cell in a fresh process of `tree`'s noisy_prompt: its phase breakdown and results.json metrics."""
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    logs = workdir / f"logs_{tag}"
    shutil.rmtree(logs, ignore_errors=True)  # exactly one results.json below it: this run's
    prof = workdir / f"{tag}.json"
    cmd = [sys.executable, str(RUNNER), "--out", str(prof), "--", *overrides, f"paths.log_dir={logs}",
           f"paths.cache_dir={cache_dir}", "force=true"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"cell run {tag} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    results = next(logs.rglob("results.json"))
    record = json.loads(prof.read_text())
    record.update(process_wall_s=wall, metrics=json.loads(results.read_text())["metrics"], tag=tag,
                  losses=logged_losses(results.parent))
    return record


def logged_losses(run_dir: Path) -> dict[str, list[float]]:
    """The per-epoch training losses the CSV logger wrote (all digits): finer than any accuracy."""
    import csv

    out: dict[str, list[float]] = {}
    for f in sorted(Path(run_dir).rglob("metrics.csv")):
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh):
                for k, v in row.items():
                    if k and k.startswith("train/") and v not in ("", None):
                        out.setdefault(k, []).append(float(v))
    return out


OTHER = "other (imports, Hydra, Lightning loop)"


def format_breakdown(rec: dict, title: str) -> str:
    """Wall and process-CPU seconds per phase (on a loaded machine the CPU column is the work itself)."""
    cpu = {**rec.get("phases_cpu", {}), OTHER: rec.get("other_cpu", float("nan"))}
    lines = [f"{title}: wall {rec['wall_s']:.1f} s, process CPU {rec['cpu_s']:.1f} s, threads {rec['threads']}",
             f"  {'phase':55s} {'wall s':>8s} {'%':>6s} {'CPU s':>8s} {'%':>6s}"]
    for k, v in sorted({**rec["phases"], OTHER: rec["other"]}.items(), key=lambda kv: -cpu.get(kv[0], kv[1])):
        c = cpu.get(k, float("nan"))
        lines.append(f"  {k:55s} {v:8.2f} {100 * v / rec['wall_s']:5.1f}% {c:8.2f} {100 * c / rec['cpu_s']:5.1f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "python -m noisy_prompt.bench cell") -> dict:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tango")
    p.add_argument("overrides", nargs="*", help="run overrides (replace the preset's when given)")
    p.add_argument("--compare", default=None, help="an older checkout's root, run interleaved with this one")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--cache", choices=["cold", "warm"], default="cold")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parallel", action="store_true",
                   help="run old and new at the same time (one process each) instead of one after the other")
    p.add_argument("--workdir", default=None, help="keep runs here (default: a temporary dir, removed)")
    p.add_argument("--json", default=None, help="write all records here")
    args = p.parse_args(argv)
    overrides = args.overrides or PRESETS[args.preset]
    here = str(Path(__file__).resolve().parents[2])
    trees = [("old", args.compare), ("new", here)] if args.compare else [("new", here)]
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="noisy_prompt_cell_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"cell: {' '.join(overrides)}\nthreads {args.threads}, cache {args.cache}, load average at start "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    records: list[dict] = []
    try:
        if args.cache == "warm":
            for side, tree in trees:
                run_once(tree, overrides, workdir, f"{side}_fill", workdir / f"cache_{side}", args.threads)
        for rep in range(args.repeats):
            jobs = [(side, tree, workdir / (f"cache_{side}" if args.cache == "warm" else f"cache_{side}_{rep}"))
                    for side, tree in trees]
            if args.parallel:  # old and new at the same time, one core each: the same load over the same minutes
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(len(jobs)) as pool:
                    futures = [pool.submit(run_once, tree, overrides, workdir, f"{side}_{rep}", cache, args.threads)
                               for side, tree, cache in jobs]
                    done = [f.result() for f in futures]
            else:
                done = [run_once(tree, overrides, workdir, f"{side}_{rep}", cache, args.threads)
                        for side, tree, cache in jobs]
            for (side, _, _), rec in zip(jobs, done):
                rec["side"], rec["load1"] = side, os.getloadavg()[0]
                records.append(rec)
                print(f"  {side} run {rep + 1}: wall {rec['wall_s']:.1f} s, process CPU {rec['cpu_s']:.1f} s, "
                      f"load {rec['load1']:.2f}", flush=True)
        for side, _ in trees:
            first = next(r for r in records if r["side"] == side)
            print(format_breakdown(first, f"\n[{side}] breakdown of run 1"))
        out = {"overrides": overrides, "records": records}
        if args.compare:
            old = [r["wall_s"] for r in records if r["side"] == "old"]
            new = [r["wall_s"] for r in records if r["side"] == "new"]
            ratios = [o / n for o, n in zip(old, new)]
            same = all(r["metrics"] == records[0]["metrics"] and r["losses"] == records[0]["losses"] for r in records)
            cold = [r["cpu_s"] for r in records if r["side"] == "old"]
            cnew = [r["cpu_s"] for r in records if r["side"] == "new"]
            print(f"\nold / new wall time per pair: {', '.join(f'{x:.2f}x' for x in ratios)}; "
                  f"median old {statistics.median(old):.1f} s, new {statistics.median(new):.1f} s")
            print(f"old / new process CPU time per pair: {', '.join(f'{o / n:.2f}x' for o, n in zip(cold, cnew))}; "
                  f"median old {statistics.median(cold):.1f} s, new {statistics.median(cnew):.1f} s")
            print(f"metrics and logged training losses identical to the digit in all {len(records)} runs: {same}")
            if not same:
                for r in records:
                    print(f"  {r['tag']}: {json.dumps(r['metrics'], sort_keys=True)}")
            out.update(ratios=ratios, identical=same)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
        return out
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
