"""Reporting: paper tables (aggregation of results.json files) and figures."""
from noisy_prompt.reporting.aggregate import AggregatedTable, CellResult, aggregate, load_runs
from noisy_prompt.reporting.tables import TABLES, TableSpec, get_table

__all__ = ["AggregatedTable", "CellResult", "TABLES", "TableSpec", "aggregate", "get_table", "load_runs"]
