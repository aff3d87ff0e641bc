"""The sweep file format: read and check `sweeps/<table>.yaml`, expand its grids into jobs, filter them.

Pure: nothing here composes a config, starts a process or touches a run dir (that is
noisy_prompt/sweeps/launch.py), so the reporting code can read the files' table layouts and grid
values without the launcher. Overrides are checked with Hydra's override *parser* only.

A sweep file (see sweeps/dpsep_table1.yaml):

    table: dpsep_table1            # sweep name (first dir under paths.log_dir) = the aggregate table name
    cells: 378                     # optional: how many cells the grids expand to (checked on load)
    overrides: [backbone=vit_b32]  # Hydra overrides shared by every cell: the table's recipe
    grids:                         # rectangular blocks; their union = the table's cells
      - model: [ptnl, dpsep]
        data: [imagenet, ucf101]
        seed: [1, 2, 3]

or, when some cells need others to have run first, ordered `stages` instead of `grids`, each with its
own `grids`, optional extra `overrides` and an optional `sweep` name for its run dirs (default:
`table`; see sweeps/dpsep_table3.yaml). `cells` counts the cells of every stage.

A table's printed layout (rows, columns, metric, paper CSV) is the file's `layout:` key, or a stage's
for a stage with its own `sweep` name; this module only hands it over (`SweepPlan.layouts`,
`read_layouts`), noisy_prompt/reporting/tables.py reads it.
"""
from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

# noisy_prompt/sweeps/plan.py -> the repository root, which holds the sweep files in sweeps/ (data, not
# this package) and the Hydra configs in conf/.
REPO_ROOT = Path(__file__).resolve().parents[2]
SWEEPS_DIR = REPO_ROOT / "sweeps"

Value = str | int | float
_FILE_KEYS = {"table", "cells", "overrides", "grids", "stages", "layout"}
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


def validate_overrides(overrides: Sequence[str], *, where: str, swept: str, sweep_key: str,
                       error: type[ValueError] = SweepFileError) -> None:
    """Fixed overrides (a file's, a stage's, or the command line's after `--`) must parse, set one value
    each (a sweep there would multiply the cells behind the grid's back) and leave `sweep` alone (the run
    dirs' first folder is the file's table or a stage's sweep name). `where` starts each message; `swept`
    and `sweep_key` say what to do instead; `error` is the exception raised."""
    from hydra.errors import HydraException

    try:
        parsed = _parser().parse_overrides(list(overrides))
    except HydraException as err:
        raise error(f"{where}: invalid override: {err}") from None
    for o in parsed:
        if o.is_sweep_override():
            raise error(f"{where}: {o.input_line!r} sweeps several values; {swept}")
        if o.key_or_group == "sweep":
            raise error(f"{where}: do not set 'sweep': {sweep_key}")


def _check_file_overrides(overrides: Sequence[str], where: str) -> None:
    validate_overrides(overrides, where=where, swept="put swept keys in a grid",
                       sweep_key="it is the file's `table` (or a stage's `sweep`)")


# --------------------------------------------------------------------------------------------------
# The plan: grids and the jobs they expand to


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
    # the values of each grid key in the stages that run this table, in grid order: a discovered table's
    # rows and columns follow them
    grid: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class SweepPlan:
    table: str
    path: Path
    grids: tuple[Grid, ...]
    layouts: tuple[RawLayout, ...] = ()
    declared_cells: int | None = None  # the file's `cells:` line (None when it has none)

    def cells(self) -> list[Job]:
        return [c for g in self.grids for c in g.cells()]


# --------------------------------------------------------------------------------------------------
# Reading a sweep file


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


@dataclass(frozen=True)
class _RawFile:
    """The YAML of a sweep file with its keys checked (grids and overrides not yet parsed)."""

    raw: dict
    table: str
    stages: list  # one mapping per stage (a file with `grids` is one stage)
    layouts: tuple[RawLayout, ...]

    def where(self, path: Path, i: int) -> str:
        return f"{path}: stage {i + 1}" if "stages" in self.raw else str(path)


def _read_sweep_file(path: Path) -> _RawFile:
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
    cells = raw.get("cells")
    if "cells" in raw and (isinstance(cells, bool) or not isinstance(cells, int) or cells < 1):
        raise SweepFileError(f"{path}: 'cells' must be the number of cells the grids expand to "
                             f"(a positive integer), got {cells!r}")
    if ("grids" in raw) == ("stages" in raw):
        raise SweepFileError(f"{path}: give exactly one of 'grids' or 'stages'")
    _string_list(raw.get("overrides"), f"{path}: overrides")
    stages = raw["stages"] if "stages" in raw else [{"grids": raw["grids"]}]
    if not isinstance(stages, list) or not stages:
        raise SweepFileError(f"{path}: 'stages' must be a non-empty list")
    layouts = [(table, f"{path}: layout", raw["layout"])] if "layout" in raw else []
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
            if any(name == sweep for name, _, _ in layouts):
                raise SweepFileError(f"{where}: a second layout for table {sweep!r}")
            layouts.append((sweep, f"{where}: layout", stage["layout"]))
    values = _stage_grid_values(table, stages)
    return _RawFile(raw=raw, table=table, stages=stages,
                    layouts=tuple(RawLayout(name, where, lay, values.get(name, {})) for name, where, lay in layouts))


def _stage_grid_values(table: str, stages: list) -> dict[str, dict[str, tuple[str, ...]]]:
    """{sweep name: {grid key: its values in grid order}} of a file's stages (grids not checked yet: for
    ordering rows and columns, not for running)."""
    out: dict[str, dict[str, list[str]]] = {}
    for stage in stages:
        values = out.setdefault(stage.get("sweep", table), {})
        grids = stage.get("grids")
        for grid in grids if isinstance(grids, list) else ():
            for key, vals in (grid.items() if isinstance(grid, dict) else ()):
                seen = values.setdefault(str(key), [])
                seen += [str(v) for v in (vals if isinstance(vals, list) else ()) if str(v) not in seen]
    return {sweep: {k: tuple(v) for k, v in keys.items()} for sweep, keys in out.items()}


def read_layouts(name_or_path: str | Path) -> tuple[RawLayout, ...]:
    """The table layouts a sweep file holds (unparsed), without checking its grids and overrides."""
    return _read_sweep_file(resolve_sweep_file(name_or_path)).layouts


def load_sweep(name_or_path: str | Path) -> SweepPlan:
    """The checked plan of a sweep file: SweepFileError names the file (and stage, grid) and what is wrong,
    including a `cells:` line that differs from the number of cells the grids expand to."""
    path = resolve_sweep_file(name_or_path)
    f = _read_sweep_file(path)
    common = _string_list(f.raw.get("overrides"), f"{path}: overrides")
    _check_file_overrides(common, f"{path}: overrides")
    grids: list[Grid] = []
    for i, stage in enumerate(f.stages):
        where = f.where(path, i)
        extra = _string_list(stage.get("overrides"), f"{where}: overrides")
        _check_file_overrides(extra, f"{where}: overrides")
        raw_grids = stage.get("grids")
        if not isinstance(raw_grids, list) or not raw_grids:
            raise SweepFileError(f"{where}: 'grids' must be a non-empty list of grids")
        for j, g in enumerate(raw_grids):
            grids.append(_parse_grid(g, f"{where}: grid {j + 1}", stage.get("sweep", f.table), common + extra,
                                     stage=i + 1))
    declared = f.raw.get("cells")
    expanded = sum(g.size for g in grids)
    if declared is not None and declared != expanded:
        raise SweepFileError(f"{path}: 'cells: {declared}' but its grids expand to {expanded} cells; "
                             "fix the grids or the count")
    return SweepPlan(table=f.table, path=path, grids=tuple(grids), layouts=f.layouts, declared_cells=declared)


def grid_values(sweeps_dir: str | Path | None = None) -> dict[str, dict[str, tuple[str, ...]]]:
    """{sweep name: {grid key: its values, in the order the grids list them}} over every sweep file in
    `sweeps_dir` (default: the repository's sweeps/), files by name; a stage with its own `sweep` name is
    its own entry. Read without checking overrides: for ordering rows and columns, not for running."""
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for path in sorted(Path(sweeps_dir or SWEEPS_DIR).glob("*.yaml")):
        f = _read_sweep_file(path)
        for sweep, values in _stage_grid_values(f.table, f.stages).items():
            merged = dict(out.get(sweep, {}))
            for key, vals in values.items():
                merged[key] = merged.get(key, ()) + tuple(v for v in vals if v not in merged.get(key, ()))
            out[sweep] = merged
    return out


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
