"""The papers' tables as data: which runs and which metric feed each printed cell.

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
import io
from dataclasses import dataclass, field
from importlib import resources
from typing import Mapping

# Keys a filter may constrain: the cell keys of the cell contract (`results.json["cell"]`).
from noisy_prompt.cell import CELL_KEYS  # noqa: E402  (re-exported for table specs)

# Orders used when a table discovers its rows/columns from the results (synthetic_mini).
MODEL_ORDER: tuple[str, ...] = (
    "zeroshot", "coop", "ptnl", "dp", "sep", "sep_no_perturbation", "dpsep",
    "tango_linear_visual", "tango_visual_only", "tango_semantic_only", "tango_trainable_anchors",
    "tango_simple_prompts", "tango",
)
NOISE_ORDER: tuple[str, ...] = (
    "clean", "sym12.5", "sym25", "sym40", "sym50", "sym60", "sym65", "sym80",
    "inst20", "inst40", "inst60", "inst80", "asym30", "asym30_superclass",
    "pair_fp2", "pair_fp4", "pair_fp8", "ptnl_fp2", "ptnl_fp4", "ptnl_fp8", "real",
)

ACC = "test/acc"  # DP-SEP reports the last epoch
ACC_BEST = "test/acc_best"  # TANGO reports the best epoch


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
    among the runs that satisfy `match`, ordered by MODEL_ORDER/NOISE_ORDER, then alphabetically."""

    row_key: str
    col_key: str
    match: Mapping[str, str] = field(default_factory=dict)


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
# The tables

DPSEP_NOISES = ("sym12.5", "sym25", "sym50", "sym65", "sym80", "inst20", "inst40", "inst60", "inst80")
DPSEP_T1_DATASETS = ("imagenet", "caltech101", "oxford_pets", "oxford_flowers", "food101", "dtd", "ucf101")
DPSEP_T3_DATASETS = ("oxford_pets", "food101", "dtd", "ucf101")
DPSEP_METHODS = ("ptnl", "dpsep")


def _noise_columns(noises: tuple[str, ...]) -> tuple[ColumnSpec, ...]:
    return tuple(ColumnSpec(n, {"noise": n}) for n in noises)


def _model_rows(models: tuple[str, ...], **match: str) -> tuple[RowSpec, ...]:
    return tuple(RowSpec((m,), {"model": m, **match}) for m in models)


DPSEP_TABLE1 = TableSpec(
    name="dpsep_table1",
    title="DP-SEP Table 1: synthetic noise on few-shot datasets (last-epoch test acc, %)",
    paper_csv="dpsep_table1_synthetic.csv",
    row_key_names=("dataset", "method"),
    rows=tuple(RowSpec((d, m), {"data": d, "model": m}) for d in DPSEP_T1_DATASETS for m in DPSEP_METHODS),
    columns=_noise_columns(DPSEP_NOISES),
    metric=ACC,
)

DPSEP_TABLE2 = TableSpec(
    name="dpsep_table2",
    title="DP-SEP Table 2: real noise (WebVision -> WebVision/ILSVRC12 val; Food-101N -> Food-101 test)",
    paper_csv="dpsep_table2_real.csv",
    row_key_names=("method",),
    rows=_model_rows(DPSEP_METHODS),
    columns=(
        ColumnSpec("webvision_top1", {"data": "webvision", "noise": "real"}, "test/acc"),
        ColumnSpec("webvision_top5", {"data": "webvision", "noise": "real"}, "test/acc_top5"),
        ColumnSpec("ilsvrc12_top1", {"data": "webvision", "noise": "real"}, "test_ilsvrc12/acc"),
        ColumnSpec("ilsvrc12_top5", {"data": "webvision", "noise": "real"}, "test_ilsvrc12/acc_top5"),
        ColumnSpec("food101n_top1", {"data": "food101n", "noise": "real"}, "test/acc"),
    ),
    metric=ACC,
)

DPSEP_TABLE3 = TableSpec(
    name="dpsep_table3",
    title="DP-SEP Table 3: cross-dataset (prompts trained on noisy ImageNet, tested on the row's dataset)",
    paper_csv="dpsep_table3_cross_dataset.csv",
    row_key_names=("dataset", "method"),
    rows=tuple(
        RowSpec((d, m), {"data": d, "train_data": "imagenet", "model": m})
        for d in DPSEP_T3_DATASETS for m in DPSEP_METHODS
    ),
    columns=_noise_columns(DPSEP_NOISES),
    metric=ACC,
)

DPSEP_TABLE4 = TableSpec(
    name="dpsep_table4",
    title="DP-SEP Table 4: ablation on OxfordPets, symmetric noise (last-epoch test acc, %)",
    paper_csv="dpsep_table4_ablation.csv",
    row_key_names=("method",),
    rows=_model_rows(("ptnl", "dp", "sep_no_perturbation", "sep", "dpsep"), data="oxford_pets"),
    columns=_noise_columns(("sym12.5", "sym25", "sym50", "sym65", "sym80")),
    metric=ACC,
)

# The baselines of TANGO's tables (spec baselines.md), each a `model=` preset named as the paper CSVs' rows,
# and plain CE fine-tuning (ft_ce), the floor every method must beat: a row of ours the papers do not print
# (its paper cells stay empty).
TANGO_BASELINES = ("dividemix", "ssr", "lsl", "deft")
TANGO_EXTRA_ROWS = ("ft_ce",)  # rows run by this project that have no paper number

TANGO_TABLE1 = TableSpec(
    name="tango_table1",
    title="TANGO Table 1: CIFAR-100 synthetic noise (best test acc, %)",
    paper_csv="tango_table1_cifar100_synthetic.csv",
    row_key_names=("method",),
    rows=_model_rows(("ft_ce", *TANGO_BASELINES, "tango"), data="cifar100"),
    columns=_noise_columns(("sym40", "sym60", "inst40", "asym30")),
    metric=ACC_BEST,
)

TANGO_REAL_DATASETS = ("cifar100n", "animal10n", "webvision", "food101n")

TANGO_TABLE2 = TableSpec(
    name="tango_table2",
    title="TANGO Table 2: real-world noise (best test acc, %)",
    paper_csv="tango_table2_real.csv",
    row_key_names=("method",),
    # the paper prints no DivideMix row in this table
    rows=_model_rows(("ft_ce", "ssr", "lsl", "deft", "tango")),
    columns=tuple(ColumnSpec(d, {"data": d, "noise": "real"}) for d in TANGO_REAL_DATASETS),
    metric=ACC_BEST,
)

# Paper ablation row -> our model name.
TANGO_VARIANTS: tuple[tuple[str, str], ...] = (
    ("baseline_linear_head_visual_only", "tango_linear_visual"),
    ("tango", "tango"),
    ("visual_only_purification", "tango_visual_only"),
    ("semantic_only_purification", "tango_semantic_only"),
    ("trainable_anchors", "tango_trainable_anchors"),
    ("simpler_prompts", "tango_simple_prompts"),
)

TANGO_TABLE3 = TableSpec(
    name="tango_table3",
    title="TANGO Table 3: ablation on CIFAR-100 (synthetic) and CIFAR-100N (best test acc, %)",
    paper_csv="tango_table3_ablation.csv",
    row_key_names=("variant",),
    rows=tuple(RowSpec((variant,), {"model": model}) for variant, model in TANGO_VARIANTS),
    columns=(
        ColumnSpec("sym40", {"data": "cifar100", "noise": "sym40"}),
        ColumnSpec("inst40", {"data": "cifar100", "noise": "inst40"}),
        ColumnSpec("asym30", {"data": "cifar100", "noise": "asym30"}),
        ColumnSpec("cifar100n", {"data": "cifar100n", "noise": "real"}),
    ),
    metric=ACC_BEST,
)

TANGO_TABLE4 = TableSpec(
    name="tango_table4",
    title="TANGO Table 4: backbones on CIFAR-100N (best test acc, %)",
    paper_csv="tango_table4_backbones.csv",
    row_key_names=("backbone",),
    rows=tuple(RowSpec((b,), {"model": "tango", "backbone": b}) for b in ("vit_b16", "vit_b32", "siglip")),
    columns=(ColumnSpec("cifar100n", {"data": "cifar100n", "noise": "real"}),),
    metric=ACC_BEST,
)

SYNTHETIC_MINI = TableSpec(
    name="synthetic_mini",
    title="Synthetic data: every model x noise found (last-epoch test acc, %)",
    paper_csv=None,
    row_key_names=("model",),
    rows=(),
    columns=(),
    metric=ACC,
    discover=DiscoverSpec(row_key="model", col_key="noise", match={"data": "synthetic"}),
)

SYNTHETIC_DPSEP = TableSpec(
    name="synthetic_dpsep",
    title="Synthetic evidence for DP-SEP's claims (last-epoch test acc, %)",
    paper_csv=None,
    row_key_names=("model",),
    rows=_model_rows(("zeroshot", "coop", "ptnl", "dp", "sep", "sep_no_perturbation", "dpsep"), data="synthetic"),
    columns=_noise_columns(("clean", "sym50", "sym80", "inst60")),
    metric=ACC,
)

# TANGO trains on full data sets, so its synthetic evidence uses the full-data synthetic split
# (conf/data/synthetic_full.yaml), not the 16-shot one.
SYNTHETIC_TANGO_DATA = "synthetic_full"

SYNTHETIC_TANGO = TableSpec(
    name="synthetic_tango",
    title="Synthetic (full-data split) evidence for TANGO's claims (best test acc, %; zero-shot: its single evaluation)",
    paper_csv=None,
    row_key_names=("model",),
    rows=(
        # Zero-shot has no epochs, so its only accuracy is test/acc.
        RowSpec(("zeroshot",), {"model": "zeroshot", "data": SYNTHETIC_TANGO_DATA}, metric=ACC),
        *_model_rows(("tango_linear_visual", "tango_visual_only", "tango_semantic_only", "tango"),
                     data=SYNTHETIC_TANGO_DATA),
        # the baselines of TANGO's tables beside it (issue 11's evidence: sym40 and sym60)
        *_model_rows(("ft_ce", *TANGO_BASELINES), data=SYNTHETIC_TANGO_DATA),
    ),
    columns=_noise_columns(("sym40", "sym60", "inst40", "asym30")),
    metric=ACC_BEST,
)

TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        DPSEP_TABLE1, DPSEP_TABLE2, DPSEP_TABLE3, DPSEP_TABLE4,
        TANGO_TABLE1, TANGO_TABLE2, TANGO_TABLE3, TANGO_TABLE4,
        SYNTHETIC_MINI, SYNTHETIC_DPSEP, SYNTHETIC_TANGO,
    )
}


def get_table(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known tables: {', '.join(TABLES)}") from None


# --------------------------------------------------------------------------------------------------
# Readings of the papers' ambiguous parts (issue 13): one row per reading/preset (each a `model=` name),
# beside the baselines. DP-SEP tables show the last epoch (test/acc, the paper's protocol) and the best
# epoch (test/acc_best, the test split being evaluated every epoch in these sweeps); TANGO tables the
# best epoch (the paper's), the last epoch and the TAC before training (test/acc_epoch0).

ACC_EPOCH0 = "test/acc_epoch0"  # TANGO: the TAC with the same anchors before any training

DPSEP_READING_MODELS = ("zeroshot", "coop", "ptnl", "ptnl_ce", "dpsep", "dpsep_printed", "dpsep_gate",
                        "dpsep_asum", "dpsep_phrase")
TANGO_READING_MODELS = ("tango", "tango_literal", "tango_ssr_mixup", "tango_weighted_knn")


def _last_and_best_columns(noises: tuple[str, ...], **match: str) -> tuple[ColumnSpec, ...]:
    """`<noise>` = last epoch (test/acc), `<noise>_best` = best epoch (test/acc_best), per noise setting."""
    return (*(ColumnSpec(n, {"noise": n, **match}, ACC) for n in noises),
            *(ColumnSpec(f"{n}_best", {"noise": n, **match}, ACC_BEST) for n in noises))


def _best_last_epoch0_columns(columns: tuple[tuple[str, Mapping[str, str]], ...]) -> tuple[ColumnSpec, ...]:
    """`<label>` = best epoch (TANGO's number), `<label>_last`, `<label>_epoch0` for each (label, match)."""
    return (*(ColumnSpec(label, dict(m), ACC_BEST) for label, m in columns),
            *(ColumnSpec(f"{label}_last", dict(m), ACC) for label, m in columns),
            *(ColumnSpec(f"{label}_epoch0", dict(m), ACC_EPOCH0) for label, m in columns))


SYNTHETIC_READINGS_DPSEP = TableSpec(
    name="synthetic_readings_dpsep",
    title="Synthetic world: DP-SEP readings beside the baselines (test acc, %: last epoch | best epoch)",
    paper_csv=None,
    row_key_names=("model",),
    rows=_model_rows((*DPSEP_READING_MODELS, "dp", "sep", "sep_no_perturbation"), data="synthetic"),
    columns=_last_and_best_columns(("clean", "sym50", "sym80")),
    metric=ACC,
)

DPSEP_READINGS = TableSpec(
    name="dpsep_readings",
    title="DP-SEP readings on OxfordPets and UCF101 (test acc, %: last epoch | best epoch; paper: Table 1)",
    paper_csv="dpsep_table1_synthetic.csv",
    row_key_names=("dataset", "method"),
    rows=tuple(RowSpec((d, m), {"data": d, "model": m}) for d in ("oxford_pets", "ucf101") for m in DPSEP_READING_MODELS),
    columns=_last_and_best_columns(("sym50", "sym80", "inst60")),
    metric=ACC,
)

SYNTHETIC_READINGS_TANGO_MODELS = (*TANGO_READING_MODELS, "tango_linear_visual", "tango_visual_only",
                                   "tango_semantic_only", "tango_trainable_anchors", "tango_simple_prompts")
_SYNTHETIC_TANGO_COLUMNS = tuple((n, {"noise": n}) for n in ("clean", "sym40", "sym60"))

SYNTHETIC_READINGS_TANGO = TableSpec(
    name="synthetic_readings_tango",
    title="Synthetic world (full data, recipe scaled to the world): TANGO readings and ablations, ft_ce "
          "(test acc, %: best epoch | last epoch | TAC before training)",
    paper_csv=None,
    row_key_names=("model",),
    rows=_model_rows((*SYNTHETIC_READINGS_TANGO_MODELS, "ft_ce"), data=SYNTHETIC_TANGO_DATA),
    columns=_best_last_epoch0_columns(_SYNTHETIC_TANGO_COLUMNS),
    metric=ACC_BEST,
)

SYNTHETIC_READINGS_TANGO_PAPER_RECIPE = TableSpec(
    name="synthetic_readings_tango_paper_recipe",
    title="Synthetic world (full data, TANGO's published k = 200 and lr 5e-4): TANGO readings and ablations "
          "(test acc, %: best epoch | last epoch | TAC before training)",
    paper_csv=None,
    row_key_names=("model",),
    rows=_model_rows(SYNTHETIC_READINGS_TANGO_MODELS, data=SYNTHETIC_TANGO_DATA),
    columns=_best_last_epoch0_columns(_SYNTHETIC_TANGO_COLUMNS),
    metric=ACC_BEST,
)

TANGO_READINGS = TableSpec(
    name="tango_readings",
    title="TANGO readings and ablations on CIFAR-100 sym40 and CIFAR-100N "
          "(test acc, %: best epoch | last epoch | TAC before training; paper: Table 3)",
    paper_csv="tango_table3_ablation.csv",
    row_key_names=("variant",),
    # the ablations keep the paper's variant names, so Table 3's numbers line up beside them
    rows=(*(RowSpec((variant,), {"model": model}) for variant, model in TANGO_VARIANTS),
          *(RowSpec((m,), {"model": m}) for m in TANGO_READING_MODELS[1:])),
    columns=_best_last_epoch0_columns((("sym40", {"data": "cifar100", "noise": "sym40"}),
                                       ("cifar100n", {"data": "cifar100n", "noise": "real"}))),
    metric=ACC_BEST,
)

TABLES.update({spec.name: spec for spec in (SYNTHETIC_READINGS_DPSEP, DPSEP_READINGS, SYNTHETIC_READINGS_TANGO,
                                            SYNTHETIC_READINGS_TANGO_PAPER_RECIPE, TANGO_READINGS)})
