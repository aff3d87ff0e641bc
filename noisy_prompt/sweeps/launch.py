"""`python -m noisy_prompt.sweep <table> [--stage N|NAME] [--cells key=v1,v2 ...] [--dry-run] [--launcher slurm] [--force] [-- overrides]`

Runs the cells of one paper table, listed in `sweeps/<table>.yaml` (the format: noisy_prompt/sweeps/plan.py),
as Hydra multiruns: one `python -m noisy_prompt.run -m ...` per rectangular grid of the file (the command
is printed, so a user can run it directly), then reports every cell as done / skipped (it already had
results.json) / failed (with the error line from failed.json) / missing (its job never reported), reading
the cells' run dirs. The exit status is non-zero if any cell failed or is missing.

`--cells key=v1,v2` (key: a grid key) keeps the cells whose value for `key` is listed; grids without
that key (another stage's) are kept whole. `--stage N` (or the stage's sweep name) keeps one stage.
"""
from __future__ import annotations

import argparse
import itertools
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

from noisy_prompt.cell import FAILED as FAILED_FILE
from noisy_prompt.cell import RESULTS, error_line
from noisy_prompt.sweeps.plan import (
    REPO_ROOT,
    CellFilterError,
    Grid,
    Job,
    SweepFileError,
    SweepPlan,
    filter_plan,
    filter_stage,
    load_sweep,
    parse_cell_filters,
    validate_overrides,
)

CONF_DIR = REPO_ROOT / "conf"
LAUNCHERS = {"basic": None, "slurm": "hydra/launcher=slurm"}
SLURM_PLUGIN = "hydra_plugins.hydra_submitit_launcher"


# --------------------------------------------------------------------------------------------------
# Commands and run dirs


def hydra_command(grid: Grid, extra: Sequence[str] = (), launcher: str = "basic", force: bool = False,
                  python: str | None = None) -> list[str]:
    cmd = [python or sys.executable, "-m", "noisy_prompt.run", "-m", *grid.sweep_overrides()]
    if force:
        cmd.append("force=true")
    if LAUNCHERS[launcher]:
        cmd.append(LAUNCHERS[launcher])
    return cmd + list(extra)


def check_extra_overrides(extra: Sequence[str]) -> None:
    """The overrides after `--` hold for every cell: single values, no `sweep` (CellFilterError)."""
    validate_overrides(extra, where="extra Hydra overrides", error=CellFilterError,
                       swept="add the key to a grid of the sweep file, or run `python -m noisy_prompt.run -m ...` "
                             "yourself",
                       sweep_key="the sweep name is the file's table")


class JobDir(NamedTuple):
    run_dir: Path    # where the cell's results.json / failed.json go
    sweep_dir: Path  # hydra.sweep.dir of its multirun: the root to aggregate


def compose_run_dirs(cells: Sequence[Job], extra: Sequence[str] = (), launcher: str = "basic") -> dict[Job, JobDir]:
    """Each cell's output dir as Hydra will make it: hydra.sweep.dir/hydra.sweep.subdir of its composed
    config, so user overrides of paths.log_dir or hydra.sweep.* are honoured.

    Composition is the slow part (~0.1 s), so cells that differ only in `seed` share one composition.
    """
    from hydra import compose, initialize_config_dir

    import noisy_prompt.config  # noqa: F401  (resolvers)

    tail = [*extra, *([LAUNCHERS[launcher]] if LAUNCHERS[launcher] else [])]
    out: dict[Job, JobDir] = {}
    cache: dict[tuple[str, ...], Any] = {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for cell in cells:
            seed = dict(cell.assignment).get("seed")
            key = tuple(cell.overrides(skip=["seed"]) + tail)
            if key not in cache:
                cache[key] = compose(config_name="run", overrides=list(key), return_hydra_config=True)
            cfg = cache[key]
            if seed is not None:
                cfg.seed = int(seed)
            sweep_dir = Path(str(cfg.hydra.sweep.dir))
            # hydra.sweep.subdir is the cell contract's layout (conf/run.yaml run_subdir, settings tag included)
            out[cell] = JobDir(sweep_dir / str(cfg.hydra.sweep.subdir), sweep_dir)
    return out


# --------------------------------------------------------------------------------------------------
# Status of cells


DONE, SKIPPED, FAILED, MISSING = "done", "skipped", "failed", "missing"


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_ino, st.st_size


@dataclass(frozen=True)
class Snapshot:
    """What a cell's run dir held before the launch (results.json / failed.json identity, or None)."""

    results: tuple[int, int, int] | None
    failed: tuple[int, int, int] | None

    @classmethod
    def of(cls, run_dir: Path) -> "Snapshot":
        return cls(_stamp(run_dir / RESULTS), _stamp(run_dir / FAILED_FILE))


def cell_status(run_dir: Path, before: Snapshot) -> tuple[str, str | None]:
    """Compare a cell's files with the snapshot taken before the launch (no clock comparisons, so a
    cluster file system with skewed clocks classifies the same way)."""
    after = Snapshot.of(run_dir)
    if after.failed is not None and after.failed != before.failed:
        return FAILED, error_line(run_dir / FAILED_FILE)
    if after.results is not None and after.results != before.results:
        return DONE, None
    if after.results is not None:
        return SKIPPED, None
    return MISSING, None


@dataclass
class Summary:
    statuses: dict[str, list[tuple[Job, Path, str | None]]] = field(
        default_factory=lambda: {DONE: [], SKIPPED: [], FAILED: [], MISSING: []})
    launch_errors: list[str] = field(default_factory=list)

    def add(self, cell: Job, run_dir: Path, status: str, error: str | None) -> None:
        self.statuses[status].append((cell, run_dir, error))

    @property
    def ok(self) -> bool:
        return not (self.statuses[FAILED] or self.statuses[MISSING] or self.launch_errors)

    def render(self, table: str) -> str:
        n = sum(len(v) for v in self.statuses.values())
        s = self.statuses
        lines = [f"== {table}: {n} cells: {len(s[DONE])} done, {len(s[SKIPPED])} skipped (already had results.json), "
                 f"{len(s[FAILED])} failed, {len(s[MISSING])} missing"]
        for cell, run_dir, error in s[FAILED]:
            lines += [f"  FAILED  {cell.label()}  ({run_dir / 'failed.json'})", f"          {error}"]
        for cell, run_dir, _ in s[MISSING]:
            lines.append(f"  MISSING {cell.label()}  (no results.json or new failed.json in {run_dir})")
        lines += [f"  launch error: {e}" for e in self.launch_errors]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Running


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    # The jobs import the same noisy_prompt as this process, installed or not.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def describe(plan: SweepPlan, extra: Sequence[str], launcher: str, force: bool) -> str:
    lines = [f"sweep {plan.table} ({plan.path}): {len(plan.cells())} cells in {len(plan.grids)} multirun(s)"]
    for i, grid in enumerate(plan.grids, 1):
        lines.append(f"[{i}/{len(plan.grids)}] {grid.size} cells, run dirs under <log_dir>/{grid.sweep}:")
        lines.append("  " + shlex.join(hydra_command(grid, extra, launcher, force)))
    return "\n".join(lines)


def run_plan(plan: SweepPlan, dirs: Mapping[Job, JobDir], extra: Sequence[str] = (), launcher: str = "basic",
             force: bool = False, out=sys.stdout) -> Summary:
    """Launch every grid of the plan (one multirun each, in order) and classify every cell."""
    cells = plan.cells()
    before = {c: Snapshot.of(dirs[c].run_dir) for c in cells}
    summary = Summary()
    for i, grid in enumerate(plan.grids, 1):
        cmd = hydra_command(grid, extra, launcher, force)
        print(f"\n[{i}/{len(plan.grids)}] {grid.size} cells -> <log_dir>/{grid.sweep}\n  {shlex.join(cmd)}", file=out, flush=True)
        t0 = time.time()
        rc = subprocess.run(cmd, env=_subprocess_env()).returncode
        print(f"[{i}/{len(plan.grids)}] finished in {time.time() - t0:.0f}s (exit code {rc})", file=out, flush=True)
        if rc != 0:
            summary.launch_errors.append(f"multirun {i} exited with code {rc}: {shlex.join(cmd)}")
    for cell in cells:
        summary.add(cell, dirs[cell].run_dir, *cell_status(dirs[cell].run_dir, before[cell]))
    return summary


def slurm_plugin_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(SLURM_PLUGIN) is not None
    except ModuleNotFoundError:  # no hydra_plugins namespace at all
        return False


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m noisy_prompt.sweep",
        description="Run the cells of one paper table (sweeps/<table>.yaml) as Hydra multiruns. "
                    "Arguments after `--` are extra Hydra overrides for every cell.")
    p.add_argument("table", help="sweep name (sweeps/<name>.yaml) or a path to a sweep yaml file")
    p.add_argument("--cells", nargs="+", action="append", default=[], metavar="KEY=V1[,V2]",
                   help="keep only the cells whose KEY is one of the values (repeatable)")
    p.add_argument("--stage", metavar="N|NAME", default=None,
                   help="run only one stage of a staged sweep file: its number (1, 2, ...) or its sweep name")
    p.add_argument("--dry-run", action="store_true", help="print the commands and cells, run nothing")
    p.add_argument("--launcher", choices=sorted(LAUNCHERS), default="basic",
                   help="slurm: hydra/launcher=slurm (conf/hydra/launcher/slurm.yaml; needs pip install -e .[slurm])")
    p.add_argument("--force", action="store_true", help="rerun cells that already have results.json")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    own, extra = split_argv(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)
    try:
        plan = filter_stage(load_sweep(args.table), args.stage)
        plan = filter_plan(plan, parse_cell_filters(itertools.chain.from_iterable(args.cells)))
        check_extra_overrides(extra)
    except (SweepFileError, CellFilterError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.launcher == "slurm":
        if not slurm_plugin_available():
            print("error: --launcher slurm needs the Hydra submitit launcher: pip install -e .[slurm] "
                  "(hydra-submitit-launcher)", file=sys.stderr)
            return 2
    print(describe(plan, extra, args.launcher, args.force))
    if args.dry_run:
        print("cells:")
        for cell in plan.cells():
            print(f"  {cell.label()}  [sweep={cell.sweep}]")
        return 0
    try:
        dirs = compose_run_dirs(plan.cells(), extra, args.launcher)
    except Exception as err:  # a config error: stop before launching anything
        print(f"error: a cell of {plan.table} does not compose: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    summary = run_plan(plan, dirs, extra, args.launcher, args.force)
    print("\n" + summary.render(plan.table))
    roots = sorted({d.sweep_dir for c, d in dirs.items() if c.sweep == plan.table})
    for root in roots:
        print(f"aggregate: python -m noisy_prompt.aggregate {shlex.quote(str(root))} --table {plan.table}")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
