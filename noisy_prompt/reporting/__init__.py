"""Reporting: paper tables (aggregation of results.json files), the label-issue and sensitivity tables,
figures, and the per-run report page."""
from noisy_prompt.reporting.aggregated import AggregatedTable, aggregate
from noisy_prompt.reporting.entries import TableEntry
from noisy_prompt.reporting.runs import load_runs
from noisy_prompt.reporting.tables import TABLES, TableSpec, get_table

__all__ = ["AggregatedTable", "TABLES", "TableEntry", "TableSpec", "aggregate", "get_table", "load_runs"]
