"""`python -m noisy_prompt.sweep <table> [--stage N|NAME] [--cells key=v1,v2 ...] [--dry-run] [--launcher slurm] [--force] [-- overrides]`

Runs the cells of one paper table, listed in `sweeps/<table>.yaml`, as Hydra multiruns: one
`python -m noisy_prompt.run -m ...` per rectangular grid of the file (the command is printed, so a
user can run it directly), then reports every cell as done / skipped (it already had results.json) /
failed (with the error line from failed.json) / missing (its job never reported), reading the cells'
run dirs. The exit status is non-zero if any cell failed or is missing.

A sweep file (see sweeps/dpsep_table1.yaml):

    table: dpsep_table1            # sweep name (first dir under paths.log_dir) = the aggregate table name
    overrides: [backbone=vit_b32]  # Hydra overrides shared by every cell: the table's recipe
    grids:                         # rectangular blocks; their union = the table's cells
      - model: [ptnl, dpsep]
        data: [imagenet, ucf101]
        seed: [1, 2, 3]

or, when some cells need others to have run first, ordered `stages` instead of `grids`, each with its
own `grids`, optional extra `overrides` and an optional `sweep` name for its run dirs (default:
`table`; see sweeps/dpsep_table3.yaml).

A table's printed layout (rows, columns, metric, paper CSV) is the file's `layout:` key, or a stage's
for a stage with its own `sweep` name; this module only hands it over (`SweepPlan.layouts`,
`read_layouts`), noisy_prompt/reporting/tables.py reads it.

`--cells key=v1,v2` (key: a grid key) keeps the cells whose value for `key` is listed; grids without
that key (another stage's) are kept whole. `--stage N` (or the stage's sweep name) keeps one stage.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import yaml

from noisy_prompt.cell import FAILED as FAILED_FILE
from noisy_prompt.cell import RESULTS, error_line

REPO_ROOT = Path(__file__).resolve().parent.parent
SWEEPS_DIR = REPO_ROOT / "sweeps"
CONF_DIR = REPO_ROOT / "conf"

Value = str | int | float
LAUNCHERS = {"basic": None, "slurm": "hydra/launcher=slurm"}
SLURM_PLUGIN = "hydra_plugins.hydra_submitit_launcher"
_FILE_KEYS = {"table", "overrides", "grids", "stages", "layout"}
_STAGE_KEYS = {"sweep", "overrides", "grids", "layout"}
_PLAIN_VALUE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/:]*$")


class SweepFileError(ValueError):
    """A sweep file that cannot be read or does not follow the format."""


class CellFilterError(ValueError):
    """A --cells filter naming a key or value that is not in the sweep."""


# --------------------------------------------------------------------------------------------------
# Overrides


@functools.lru_cache(maxsize=1)
def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


@functools.lru_cache(maxsize=4096)
def override_key(override: str) -> str:
    """The config key (or group) an override sets, without its +/++/~ prefix."""
    return _parser().parse_overrides([override])[0].key_or_group


def format_value(value: Value) -> str:
    """A grid value as Hydra override text (quoted when it is not a plain word)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"grid values must be strings or numbers, got {value!r}")
    text = str(value)
    if isinstance(value, str) and not _PLAIN_VALUE.match(text):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


# --------------------------------------------------------------------------------------------------
# The plan: grids and cells


@dataclass(frozen=True)
class Job:
    """The overrides that make one `noisy_prompt.run` of a sweep. What cell (and run dir) a job is
    follows from its composed config through the cell contract (noisy_prompt.cell), not from here."""

    sweep: str
    fixed: tuple[str, ...]
    assignment: tuple[tuple[str, Value], ...]

    def overrides(self, skip: Iterable[str] = ()) -> list[str]:
        skip = set(skip)
        return [f"sweep={self.sweep}", *self.fixed,
                *(f"{k}={format_value(v)}" for k, v in self.assignment if k not in skip)]

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.assignment)


@dataclass(frozen=True)
class Grid:
    """A rectangular block of cells, run as one Hydra multirun."""

    sweep: str
    fixed: tuple[str, ...]
    axes: tuple[tuple[str, tuple[Value, ...]], ...]
    stage: int = 1  # 1-based index of the file's stage this grid belongs to (--stage)

    @property
    def size(self) -> int:
        n = 1
        for _, values in self.axes:
            n *= len(values)
        return n

    def cells(self) -> list[Job]:
        keys = [k for k, _ in self.axes]
        return [Job(self.sweep, self.fixed, tuple(zip(keys, combo)))
                for combo in itertools.product(*(values for _, values in self.axes))]

    def sweep_overrides(self) -> list[str]:
        return [f"sweep={self.sweep}", *self.fixed,
                *(f"{k}={','.join(format_value(v) for v in values)}" for k, values in self.axes)]


@dataclass(frozen=True)
class RawLayout:
    """A table's printed layout as written in a sweep file, unparsed (noisy_prompt.reporting.tables
    reads it). `where` locates it for error messages: "<file>: layout" or "<file>: stage 2: layout"."""

    table: str
    where: str
    raw: Any = field(compare=False, hash=False)


@dataclass(frozen=True)
class SweepPlan:
    table: str
    path: Path
    grids: tuple[Grid, ...]
    layouts: tuple[RawLayout, ...] = ()

    def cells(self) -> list[Job]:
        return [c for g in self.grids for c in g.cells()]


def resolve_sweep_file(name_or_path: str | Path) -> Path:
    """`sweeps/<name>.yaml` of the repository, or a path to a yaml file."""
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if text.endswith((".yaml", ".yml")) or candidate.is_file():
        if not candidate.is_file():
            raise SweepFileError(f"sweep file not found: {candidate}")
        return candidate.resolve()
    path = SWEEPS_DIR / f"{text}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))
        raise SweepFileError(f"no sweep {text!r}: {path} does not exist; known sweeps: {', '.join(known) or 'none'}")
    return path


def _string_list(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SweepFileError(f"{where}: expected a list of override strings, got {value!r}")
    return tuple(value)


def _check_overrides(overrides: Sequence[str], where: str) -> None:
    from hydra.errors import HydraException

    try:
        parsed = _parser().parse_overrides(list(overrides))
    except HydraException as err:
        raise SweepFileError(f"{where}: invalid override: {err}") from None
    for o in parsed:
        if o.is_sweep_override():
            raise SweepFileError(f"{where}: {o.input_line!r} sweeps several values; put swept keys in a grid")
        if o.key_or_group == "sweep":
            raise SweepFileError(f"{where}: do not set 'sweep' in overrides: it is the file's `table` (or a stage's `sweep`)")


def _parse_grid(raw: Any, where: str, sweep: str, fixed: tuple[str, ...], stage: int = 1) -> Grid:
    if not isinstance(raw, dict) or not raw:
        raise SweepFileError(f"{where}: a grid is a non-empty mapping key -> list of values, got {raw!r}")
    fixed_keys = {override_key(o) for o in fixed}
    axes = []
    for key, values in raw.items():
        if not isinstance(key, str) or not key:
            raise SweepFileError(f"{where}: grid key {key!r} must be a non-empty string")
        if key in fixed_keys or key.lstrip("+~") in fixed_keys:
            raise SweepFileError(f"{where}: key {key!r} is both in the grid and in the fixed overrides")
        if key == "sweep":
            raise SweepFileError(f"{where}: 'sweep' cannot be a grid key")
        if not isinstance(values, list) or not values:
            raise SweepFileError(f"{where}: {key} must be a non-empty list of values, got {values!r}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise SweepFileError(f"{where}: {key} has value {v!r}; values must be strings or numbers")
        if len({str(v) for v in values}) != len(values):
            raise SweepFileError(f"{where}: {key} lists a value twice: {values}")
        axes.append((key, tuple(values)))
    return Grid(sweep=sweep, fixed=fixed, axes=tuple(axes), stage=stage)


def _read_sweep_file(path: Path) -> tuple[dict, str, list, tuple[RawLayout, ...]]:
    """The YAML of a sweep file with its keys checked: (raw, table, stages, layouts)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise SweepFileError(f"{path}: cannot read YAML ({err})") from None
    if not isinstance(raw, dict):
        raise SweepFileError(f"{path}: expected a mapping with keys table, overrides, grids|stages")
    unknown = set(raw) - _FILE_KEYS
    if unknown:
        raise SweepFileError(f"{path}: unknown keys {sorted(unknown)}; expected {sorted(_FILE_KEYS)}")
    table = raw.get("table")
    if not isinstance(table, str) or not _PLAIN_VALUE.match(table):
        raise SweepFileError(f"{path}: 'table' must be a name (the sweep dir and aggregate table), got {table!r}")
    if ("grids" in raw) == ("stages" in raw):
        raise SweepFileError(f"{path}: give exactly one of 'grids' or 'stages'")
    _string_list(raw.get("overrides"), f"{path}: overrides")
    stages = raw["stages"] if "stages" in raw else [{"grids": raw["grids"]}]
    if not isinstance(stages, list) or not stages:
        raise SweepFileError(f"{path}: 'stages' must be a non-empty list")
    layouts = [RawLayout(table, f"{path}: layout", raw["layout"])] if "layout" in raw else []
    for i, stage in enumerate(stages):
        where = f"{path}: stage {i + 1}" if "stages" in raw else str(path)
        if not isinstance(stage, dict):
            raise SweepFileError(f"{where}: expected a mapping with keys {sorted(_STAGE_KEYS)}")
        bad = set(stage) - _STAGE_KEYS
        if bad:
            raise SweepFileError(f"{where}: unknown keys {sorted(bad)}; expected {sorted(_STAGE_KEYS)}")
        sweep = stage.get("sweep", table)
        if not isinstance(sweep, str) or not _PLAIN_VALUE.match(sweep):
            raise SweepFileError(f"{where}: 'sweep' must be a name, got {sweep!r}")
        if "layout" in stage:
            if sweep == table:
                raise SweepFileError(f"{where}: a stage's 'layout' is the table of its own 'sweep'; "
                                     f"put the layout of {table!r} at the top level of the file")
            if any(lay.table == sweep for lay in layouts):
                raise SweepFileError(f"{where}: a second layout for table {sweep!r}")
            layouts.append(RawLayout(sweep, f"{where}: layout", stage["layout"]))
    return raw, table, stages, tuple(layouts)


def read_layouts(name_or_path: str | Path) -> tuple[RawLayout, ...]:
    """The table layouts a sweep file holds (unparsed), without checking its grids and overrides."""
    return _read_sweep_file(resolve_sweep_file(name_or_path))[3]


def load_sweep(name_or_path: str | Path) -> SweepPlan:
    path = resolve_sweep_file(name_or_path)
    raw, table, stages, layouts = _read_sweep_file(path)
    common = _string_list(raw.get("overrides"), f"{path}: overrides")
    _check_overrides(common, f"{path}: overrides")
    grids: list[Grid] = []
    for i, stage in enumerate(stages):
        where = f"{path}: stage {i + 1}" if "stages" in raw else str(path)
        sweep = stage.get("sweep", table)
        extra = _string_list(stage.get("overrides"), f"{where}: overrides")
        _check_overrides(extra, f"{where}: overrides")
        raw_grids = stage.get("grids")
        if not isinstance(raw_grids, list) or not raw_grids:
            raise SweepFileError(f"{where}: 'grids' must be a non-empty list of grids")
        for j, g in enumerate(raw_grids):
            grids.append(_parse_grid(g, f"{where}: grid {j + 1}", sweep, common + extra, stage=i + 1))
    return SweepPlan(table=table, path=path, grids=tuple(grids), layouts=layouts)


# --------------------------------------------------------------------------------------------------
# --stage and --cells


def filter_stage(plan: SweepPlan, stage: str | None) -> SweepPlan:
    """The plan restricted to one stage: `stage` is its 1-based number or its `sweep` name (the run-dir
    folder it writes to). Run alone, a later stage does not wait for an earlier one's cells."""
    if stage is None:
        return plan
    stages: dict[int, str] = {}
    for grid in plan.grids:
        stages.setdefault(grid.stage, grid.sweep)
    valid = ", ".join(f"{i} ({name})" for i, name in sorted(stages.items()))
    text = str(stage).strip()
    if text.isdigit():
        kept = tuple(g for g in plan.grids if g.stage == int(text))
    else:
        kept = tuple(g for g in plan.grids if g.sweep == text)
    if not kept:
        raise CellFilterError(f"--stage: sweep {plan.table} has no stage {text!r}; its stages: {valid}")
    return replace(plan, grids=kept)


def parse_cell_filters(items: Iterable[str]) -> dict[str, list[str]]:
    """['data=ucf101', 'noise=sym50,sym80'] -> {'data': ['ucf101'], 'noise': ['sym50', 'sym80']}."""
    filters: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not vals:
            raise CellFilterError(f"--cells expects key=value[,value...], got {item!r}")
        filters.setdefault(key, [])
        filters[key] += [v for v in vals if v not in filters[key]]
    return filters


def filter_plan(plan: SweepPlan, filters: Mapping[str, Sequence[str]]) -> SweepPlan:
    """The plan restricted to the cells the filters keep. A filter key must be a grid key; a grid that
    has the key keeps only the listed values (and is dropped when none is left), a grid without it
    (another stage's) is kept whole. Each grid stays a rectangle, so it stays one multirun."""
    if not filters:
        return plan
    valid: dict[str, list[str]] = {}
    for grid in plan.grids:
        for key, values in grid.axes:
            valid.setdefault(key, [])
            valid[key] += [str(v) for v in values if str(v) not in valid[key]]
    for key, values in filters.items():
        if key not in valid:
            raise CellFilterError(f"--cells: unknown key {key!r} for sweep {plan.table}; valid keys: {', '.join(valid)}")
        bad = [v for v in values if v not in valid[key]]
        if bad:
            raise CellFilterError(f"--cells: {key} has no value {', '.join(map(repr, bad))} in sweep {plan.table}; "
                                  f"valid values: {', '.join(valid[key])}")
    kept: list[Grid] = []
    for grid in plan.grids:
        axes = tuple((k, tuple(v for v in values if k not in filters or str(v) in filters[k])) for k, values in grid.axes)
        if all(values for _, values in axes):
            kept.append(replace(grid, axes=axes))
    if not kept:
        raise CellFilterError(f"--cells {dict(filters)} keeps no cell of sweep {plan.table}")
    return replace(plan, grids=tuple(kept))


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
    """Extra overrides must be single values: a sweep there would multiply the cells behind our back."""
    from hydra.errors import HydraException

    try:
        parsed = _parser().parse_overrides(list(extra))
    except HydraException as err:
        raise CellFilterError(f"invalid extra Hydra override: {err}") from None
    for o in parsed:
        if o.is_sweep_override():
            raise CellFilterError(f"extra override {o.input_line!r} sweeps several values; add the key to a grid of the "
                                  "sweep file, or run `python -m noisy_prompt.run -m ...` yourself")
        if o.key_or_group == "sweep":
            raise CellFilterError("extra override 'sweep=...' is not allowed: the sweep name is the file's table")


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
