"""The papers' tables as data: which runs and which metric feed each printed cell.

One file per table: `sweeps/<table>.yaml` holds the grid that runs the table's cells and, under
`layout:`, how the table is printed. A stage with its own `sweep` name may carry the `layout` of that
table, so one file can hold two (sweeps/synthetic_readings_tango.yaml). Layouts take their value
lists from the grid by YAML alias (`model: &models [...]` in the grid, `rows: {model: *models}` in
the layout), so a new method is one more name in the grid and its row follows. `TABLES` reads every
sweep file's layouts the first time it is used (`load_tables`), in the order of the files' names (a
file's own table before its stages'). Only the pure sweep file reader (noisy_prompt/sweeps/plan.py) is
used here, never the runner.

Layout schema (`title`, `keys` and `rows`+`columns` or `discover` are required):

    layout:
      title: "DP-SEP Table 4: ablation ..."   # printed after the table name
      paper_csv: dpsep_table4_ablation.csv    # published numbers, in reporting/paper_tables/ (optional)
      metric: test/acc_best                   # the cells' metric (default test/acc)
      keys: [method]                          # names of the row label columns = the paper CSV's key columns
      rows: <block> | [<block>, ...]          # printed in order
      columns: <block> | [<block>, ...]
      column_metrics: {"{}": test/acc, "{}_best": test/acc_best}   # optional: every column once per
                                              # metric, in this order, its label put in for {}
      discover: {rows: model, columns: noise, match: {data: synthetic}}   # instead of rows and columns

A block is one of
  product:  {data: [oxford_pets, ucf101], model: [ptnl, dpsep], metric: test/acc}
            A list-valued cell key is an axis: one row per combination (the values, in key order, are
            its labels: one per `keys` name); a plain value fixes that key. A column block has exactly
            one list, whose values are the column labels. `metric` (optional) is the block's own.
  explicit: {label: baseline_linear_head_visual_only, match: {model: tango_linear_visual}, metric: ...}
            (`labels: [a, b]` when `keys` has several names). `match: null` is a row the paper prints
            and this project does not run: printed with the paper's numbers only.

A table cell is found by merging its row's `match` with its column's `match` into one filter over
the cell keys that every run writes into `results.json` (`model`, `data`, `noise`, `backbone`,
`train_data`). A key absent from the filter matches any value, except `train_data`, which defaults
to "equal to `data`" so that in-domain tables never pick up cross-dataset runs (DP-SEP Table 3 asks
for `train_data` explicitly). The metric comes from the row, else the column, else the table.

The published numbers live in `paper_tables/*.csv` (copied verbatim from the papers' tables, with
their comments), loaded by `load_paper_numbers`. Row labels of a spec are the CSV's key columns;
column labels are the CSV's value columns, so the two line up by name.
"""
from __future__ import annotations

import csv
import functools
import io
import itertools
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

# Keys a filter may constrain: the cell keys of the cell contract (`results.json["cell"]`).
from noisy_prompt.cell import CELL_KEYS  # noqa: E402  (re-exported for table specs)
from noisy_prompt.sweeps import plan

ACC = "test/acc"  # DP-SEP reports the last epoch
ACC_BEST = "test/acc_best"  # TANGO reports the best epoch
ACC_EPOCH0 = "test/acc_epoch0"  # TANGO: the TAC with the same anchors before any training


@dataclass(frozen=True)
class RowSpec:
    """One printed row. `labels` are the values of the table's key columns (as in the paper CSV).

    `match=None` marks a row the paper has and this project does not run (e.g. DivideMix): it is
    printed with the paper's numbers only.
    """

    labels: tuple[str, ...]
    match: Mapping[str, str] | None
    metric: str | None = None


@dataclass(frozen=True)
class ColumnSpec:
    label: str
    match: Mapping[str, str] = field(default_factory=dict)
    metric: str | None = None


@dataclass(frozen=True)
class DiscoverSpec:
    """Rows and columns taken from the results themselves: every value of `row_key` x `col_key`
    among the runs that satisfy `match`, in the order the table's sweep grid lists them (`row_order`,
    `col_order`), then the values the grid does not list, by name (`value_order`)."""

    row_key: str
    col_key: str
    match: Mapping[str, str] = field(default_factory=dict)
    row_order: tuple[str, ...] = ()
    col_order: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    paper_csv: str | None  # file name under reporting/paper_tables/, or None
    row_key_names: tuple[str, ...]
    rows: tuple[RowSpec, ...]
    columns: tuple[ColumnSpec, ...]
    metric: str
    discover: DiscoverSpec | None = None

    def cell_filter(self, row: RowSpec, column: ColumnSpec) -> dict[str, str] | None:
        """The merged filter of one cell; None for a paper-only row. Conflicts are spec bugs."""
        if row.match is None:
            return None
        merged = dict(column.match)
        for key, value in row.match.items():
            if key in merged and merged[key] != value:
                raise ValueError(
                    f"table {self.name}: row {row.labels} sets {key}={value!r} but column "
                    f"{column.label!r} sets {key}={merged[key]!r}"
                )
            merged[key] = value
        unknown = set(merged) - set(CELL_KEYS)
        if unknown:
            raise ValueError(f"table {self.name}: unknown cell keys {sorted(unknown)}; expected a subset of {CELL_KEYS}")
        return merged

    def cell_metric(self, row: RowSpec, column: ColumnSpec) -> str:
        return row.metric or column.metric or self.metric


# --------------------------------------------------------------------------------------------------
# Paper numbers


def read_paper_csv(name: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a packaged paper CSV; lines starting with '#' are comments."""
    text = resources.files(__package__).joinpath("paper_tables", name).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    parsed = list(csv.reader(io.StringIO("\n".join(lines))))
    if not parsed:
        raise ValueError(f"paper table {name}: no header line")
    header, body = parsed[0], parsed[1:]
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise ValueError(f"paper table {name}: data row {i + 1} has {len(row)} fields, header has {len(header)}")
    return header, body


def load_paper_numbers(spec: TableSpec) -> dict[tuple[str, ...], dict[str, float]]:
    """{row labels: {column label: published number}} for a spec; empty when it has no paper CSV."""
    if spec.paper_csv is None:
        return {}
    header, body = read_paper_csv(spec.paper_csv)
    k = len(spec.row_key_names)
    if tuple(header[:k]) != spec.row_key_names:
        raise ValueError(
            f"table {spec.name}: paper CSV {spec.paper_csv} key columns {header[:k]} != spec {list(spec.row_key_names)}"
        )
    numbers: dict[tuple[str, ...], dict[str, float]] = {}
    for row in body:
        labels = tuple(row[:k])
        try:
            numbers[labels] = {col: float(val) for col, val in zip(header[k:], row[k:]) if val.strip()}
        except ValueError as err:
            raise ValueError(f"paper table {spec.paper_csv}: row {labels}: {err}") from None
    return numbers


# --------------------------------------------------------------------------------------------------
# Layouts: the `layout:` keys of the sweep files


class LayoutError(ValueError):
    """A `layout:` of a sweep file that does not follow the schema; the message names the file and key."""


_LAYOUT_KEYS = ("title", "paper_csv", "metric", "keys", "rows", "columns", "column_metrics", "discover")
_EXPLICIT_KEYS = ("label", "labels", "match", "metric")
_DISCOVER_KEYS = ("rows", "columns", "match")
_METRIC_FORM = re.compile(r"^[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-/]+$")


def _fail(where: str, message: str) -> LayoutError:
    return LayoutError(f"{where}: {message}")


def _name(value: Any, where: str, what: str = "a name") -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"expected {what} (a non-empty string), got {value!r}")
    return value


def _metric(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _METRIC_FORM.match(value):
        raise _fail(where, f"expected a metric name of the form <split>/<name> as results.json writes it "
                           f"(e.g. {ACC}, {ACC_BEST}), got {value!r}")
    return value


def _match(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise _fail(where, f"expected a mapping cell key -> value (keys: {', '.join(CELL_KEYS)}), got {value!r}")
    out = {}
    for key, v in value.items():
        if key not in CELL_KEYS:
            raise _fail(where, f"unknown cell key {key!r}; expected one of {', '.join(CELL_KEYS)}")
        out[key] = _name(v, f"{where}: {key}", "a value")
    return out


def _blocks(value: Any, where: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(location, mapping) of each block of `rows`/`columns` (one mapping or a list of them)."""
    if isinstance(value, Mapping):
        yield where, value
        return
    if not isinstance(value, list) or not value:
        raise _fail(where, f"expected a block (mapping) or a non-empty list of blocks, got {value!r}")
    for i, block in enumerate(value, 1):
        if not isinstance(block, Mapping):
            raise _fail(f"{where}: entry {i}", f"expected a mapping (a product or explicit block), got {block!r}")
        yield f"{where}: entry {i}", block


def _explicit(block: Mapping[str, Any], where: str) -> tuple[tuple[str, ...], dict[str, str] | None, str | None]:
    """(labels, match, metric) of an explicit block."""
    unknown = [k for k in block if k not in _EXPLICIT_KEYS]
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown} in an explicit block; expected {', '.join(_EXPLICIT_KEYS)} "
                           "(or cell keys only, for a product block)")
    if ("label" in block) == ("labels" in block):
        raise _fail(where, "an explicit block gives exactly one of 'label' (one name) or 'labels' (a list)")
    if "label" in block:
        labels: tuple[str, ...] = (_name(block["label"], f"{where}: label"),)
    else:
        raw = block["labels"]
        if not isinstance(raw, list) or not raw:
            raise _fail(f"{where}: labels", f"expected a non-empty list of names, got {raw!r}")
        labels = tuple(_name(v, f"{where}: labels") for v in raw)
    if "match" not in block:
        raise _fail(where, "an explicit block needs 'match' (a mapping of cell keys, or null for a row "
                           "the paper prints and this project does not run)")
    match = None if block["match"] is None else _match(block["match"], f"{where}: match")
    metric = _metric(block["metric"], f"{where}: metric") if "metric" in block else None
    return labels, match, metric


def _product(block: Mapping[str, Any], where: str) -> tuple[list[str], list[tuple[tuple[str, ...], dict[str, str]]], str | None]:
    """(axis keys, [(labels, match)] in product order, metric) of a product block."""
    metric = _metric(block["metric"], f"{where}: metric") if "metric" in block else None
    axes: list[tuple[str, list[str]]] = []
    for key, value in block.items():
        if key == "metric":
            continue
        if key not in CELL_KEYS:
            raise _fail(where, f"unknown cell key {key!r}; expected one of {', '.join(CELL_KEYS)}, 'metric', "
                               f"or {', '.join(_EXPLICIT_KEYS[:3])} for an explicit block")
        if isinstance(value, list):
            if not value:
                raise _fail(f"{where}: {key}", "expected a non-empty list of values")
            values = [_name(v, f"{where}: {key}", "a value") for v in value]
            if len(set(values)) != len(values):
                raise _fail(f"{where}: {key}", f"lists a value twice: {values}")
            axes.append((key, values))
        else:
            _name(value, f"{where}: {key}", "a value or a list of values")
    axis_keys = [k for k, _ in axes]
    out = []
    for combo in itertools.product(*(values for _, values in axes)):
        chosen = dict(zip(axis_keys, combo))
        match = {k: (chosen[k] if k in chosen else v) for k, v in block.items() if k != "metric"}
        out.append((tuple(combo), match))
    return axis_keys, out, metric


def _is_explicit(block: Mapping[str, Any]) -> bool:
    return any(k in block for k in ("label", "labels", "match"))


def _rows(value: Any, where: str, keys: tuple[str, ...]) -> tuple[RowSpec, ...]:
    rows: list[RowSpec] = []
    for at, block in _blocks(value, where):
        if _is_explicit(block):
            labels, match, metric = _explicit(block, at)
            if len(labels) != len(keys):
                raise _fail(at, f"{len(labels)} label(s) {list(labels)} for {len(keys)} row key name(s) {list(keys)}")
            rows.append(RowSpec(labels, match, metric))
            continue
        axis_keys, combos, metric = _product(block, at)
        if len(axis_keys) != len(keys):
            raise _fail(at, f"{len(axis_keys)} list-valued key(s) {axis_keys} give {len(axis_keys)} label(s) per row, "
                            f"but `keys` names {len(keys)} row label column(s) {list(keys)}")
        rows += [RowSpec(labels, match, metric) for labels, match in combos]
    return tuple(rows)


def _columns(value: Any, where: str) -> tuple[ColumnSpec, ...]:
    columns: list[ColumnSpec] = []
    for at, block in _blocks(value, where):
        if _is_explicit(block):
            labels, match, metric = _explicit(block, at)
            if len(labels) != 1:
                raise _fail(at, f"a column has one label, got {list(labels)}")
            if match is None:
                raise _fail(f"{at}: match", "a column needs a match (null is for paper-only rows)")
            columns.append(ColumnSpec(labels[0], match, metric))
            continue
        axis_keys, combos, metric = _product(block, at)
        if len(axis_keys) != 1:
            raise _fail(at, f"a column block has exactly one list-valued key (its values are the column labels), "
                            f"got {len(axis_keys)}: {axis_keys}")
        columns += [ColumnSpec(labels[0], match, metric) for labels, match in combos]
    return tuple(columns)


def _column_metrics(value: Any, where: str, columns: tuple[ColumnSpec, ...]) -> tuple[ColumnSpec, ...]:
    if not isinstance(value, Mapping) or not value:
        raise _fail(where, f'expected a mapping label pattern -> metric, e.g. {{"{{}}": {ACC}, "{{}}_best": {ACC_BEST}}}, '
                           f"got {value!r}")
    out = []
    for pattern, metric in value.items():
        if not isinstance(pattern, str) or pattern.count("{}") != 1:
            raise _fail(where, f"label pattern {pattern!r} must hold '{{}}' once (where the column's label goes)")
        metric = _metric(metric, f"{where}: {pattern}")
        out += [ColumnSpec(pattern.replace("{}", c.label), dict(c.match), metric) for c in columns]
    return tuple(out)


def _paper_csv(value: Any, where: str, keys: tuple[str, ...]) -> str:
    name = _name(value, where, "a file name under noisy_prompt/reporting/paper_tables/")
    path = resources.files(__package__).joinpath("paper_tables", name)
    if not path.is_file():
        known = sorted(p.name for p in resources.files(__package__).joinpath("paper_tables").iterdir()
                       if p.name.endswith(".csv"))
        raise _fail(where, f"paper CSV {name!r} not found in noisy_prompt/reporting/paper_tables/; "
                           f"known: {', '.join(known)}")
    try:
        header, _ = read_paper_csv(name)
    except ValueError as err:
        raise _fail(where, str(err)) from None
    if tuple(header[:len(keys)]) != keys:
        raise _fail(where, f"paper CSV {name} key columns {header[:len(keys)]} != layout keys {list(keys)}")
    return name


def parse_layout(name: str, raw: Any, where: str, grid: Mapping[str, tuple[str, ...]] | None = None) -> TableSpec:
    """The TableSpec of one `layout:` mapping (`where`: "<file>: layout", for error messages). `grid`: the
    values of each grid key of the sweep that runs the table (the order of a discovered table)."""
    if not isinstance(raw, Mapping):
        raise _fail(where, f"expected a mapping with keys {', '.join(_LAYOUT_KEYS)}, got {raw!r}")
    unknown = [k for k in raw if k not in _LAYOUT_KEYS]
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown}; expected {', '.join(_LAYOUT_KEYS)}")
    title = _name(raw.get("title"), f"{where}: title", "a title")
    raw_keys = raw.get("keys")
    if not isinstance(raw_keys, list) or not raw_keys:
        raise _fail(f"{where}: keys", f"expected a non-empty list of row label column names (the paper CSV's "
                                      f"key columns), got {raw_keys!r}")
    keys = tuple(_name(k, f"{where}: keys") for k in raw_keys)
    metric = _metric(raw["metric"], f"{where}: metric") if "metric" in raw else ACC

    def paper_csv() -> str | None:  # checked last: the layout's own errors are the more specific
        return _paper_csv(raw["paper_csv"], f"{where}: paper_csv", keys) if raw.get("paper_csv") is not None else None

    if "discover" in raw:
        clash = [k for k in ("rows", "columns", "column_metrics") if k in raw]
        if clash:
            raise _fail(where, f"'discover' takes rows and columns from the results; drop {clash}")
        d = raw["discover"]
        at = f"{where}: discover"
        if not isinstance(d, Mapping) or set(d) - set(_DISCOVER_KEYS) or not {"rows", "columns"} <= set(d):
            raise _fail(at, f"expected {{rows: <cell key>, columns: <cell key>, match: {{...}}}}, got {d!r}")
        for k in ("rows", "columns"):
            if d[k] not in CELL_KEYS:
                raise _fail(f"{at}: {k}", f"unknown cell key {d[k]!r}; expected one of {', '.join(CELL_KEYS)}")
        if len(keys) != 1:
            raise _fail(f"{where}: keys", f"a discovered table has one row label column, got {list(keys)}")
        grid = grid or {}
        discover = DiscoverSpec(d["rows"], d["columns"], _match(d.get("match", {}), f"{at}: match"),
                                row_order=tuple(grid.get(d["rows"], ())), col_order=tuple(grid.get(d["columns"], ())))
        return TableSpec(name=name, title=title, paper_csv=paper_csv(), row_key_names=keys, rows=(), columns=(),
                         metric=metric, discover=discover)
    for k in ("rows", "columns"):
        if k not in raw:
            raise _fail(where, f"missing '{k}' (or give 'discover')")
    rows = _rows(raw["rows"], f"{where}: rows", keys)
    columns = _columns(raw["columns"], f"{where}: columns")
    if "column_metrics" in raw:
        columns = _column_metrics(raw["column_metrics"], f"{where}: column_metrics", columns)
    for what, labels in (("row", [r.labels for r in rows]), ("column", [c.label for c in columns])):
        twice = sorted({str(x) for x in labels if labels.count(x) > 1})
        if twice:
            raise _fail(f"{where}: {what}s", f"{what} label(s) {', '.join(twice)} appear twice")
    spec = TableSpec(name=name, title=title, paper_csv=paper_csv(), row_key_names=keys, rows=rows,
                     columns=columns, metric=metric)
    for row in rows:  # every cell's filter composes (a row and a column never set one key two ways)
        for col in columns:
            try:
                spec.cell_filter(row, col)
            except ValueError as err:
                raise _fail(where, str(err)) from None
    return spec


def tables_from_file(path: str | Path) -> list[TableSpec]:
    """The tables whose layout a sweep file holds (its own, and any stage's with its own sweep name)."""
    try:
        layouts = plan.read_layouts(path)
    except plan.SweepFileError as err:
        raise LayoutError(str(err)) from None
    return [parse_layout(lay.table, lay.raw, lay.where, lay.grid) for lay in layouts]


def load_tables(sweeps_dir: str | Path | None = None) -> dict[str, TableSpec]:
    """Every table with a `layout:` in `sweeps_dir` (default: the repository's sweeps/), in the order of
    the files' names (so the tables of one paper stay together), a file's own table first."""
    found: dict[str, tuple[TableSpec, Path]] = {}
    for path in sorted(Path(sweeps_dir or plan.SWEEPS_DIR).glob("*.yaml")):
        for spec in tables_from_file(path):
            if spec.name in found:
                raise LayoutError(f"{path}: a layout for table {spec.name!r}, which {found[spec.name][1]} "
                                  "already lays out; a table has one layout")
            found[spec.name] = (spec, path)
    return {name: spec for name, (spec, _) in found.items()}


# --------------------------------------------------------------------------------------------------
# Orders read from the sweep grids (no list of models or noises kept here)


@functools.lru_cache(maxsize=1)
def _grid_values() -> dict[str, dict[str, tuple[str, ...]]]:
    return plan.grid_values()


def grid_order(key: str, sweeps: Iterable[str]) -> tuple[str, ...]:
    """The values grid key `key` takes in the repository's sweep files that run `sweeps` (run-dir names,
    e.g. the `sweep` of each record), in the order the grids list them, sweeps taken by name. A sweep
    without a file (adhoc runs) adds nothing."""
    values = _grid_values()
    out: list[str] = []
    for sweep in sorted(set(sweeps)):
        out += [v for v in values.get(sweep, {}).get(key, ()) if v not in out]
    return tuple(out)


def value_order(order: Sequence[str]) -> Callable[[str], tuple]:
    """Sort key: the values listed in `order` first, in that order, then the others by name with their
    numbers compared as numbers (sym12.5 before sym25)."""
    rank = {v: i for i, v in enumerate(order)}

    def key(value: str) -> tuple:
        parts = re.split(r"(\d+(?:\.\d+)?)", str(value))
        natural = tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts) if p)
        return (rank.get(value, len(rank)), natural, str(value))

    return key


@functools.lru_cache(maxsize=1)
def _tables() -> dict[str, TableSpec]:
    return load_tables()


class _Tables(Mapping[str, TableSpec]):
    """name -> TableSpec of every sweep file's layout, read on first use."""

    def __getitem__(self, name: str) -> TableSpec:
        return _tables()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(_tables())

    def __len__(self) -> int:
        return len(_tables())

    def __repr__(self) -> str:
        return f"TABLES({', '.join(self)})"


TABLES: Mapping[str, TableSpec] = _Tables()


def get_table(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known tables: {', '.join(TABLES)}") from None
