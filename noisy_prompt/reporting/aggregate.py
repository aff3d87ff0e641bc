"""The names of `noisy_prompt.reporting.aggregate`, which now lives in one module per concern:
runs.py (loading results.json / failed.json), entries.py (one printed entry over seeds), aggregated.py
(a paper table filled from runs), render.py (Markdown / CSV / LaTeX and line plots), sensitivity.py
(`--by KEY`), label_issues.py (`--label-issues`), cli.py (`python -m noisy_prompt.aggregate`)."""
from noisy_prompt.reporting.aggregated import AggregatedTable, aggregate, aggregate_runs  # noqa: F401
from noisy_prompt.reporting.cli import build_parser, main  # noqa: F401
from noisy_prompt.reporting.entries import (  # noqa: F401
    AMBIGUOUS,
    DASH,
    FAILED,
    MISSING,
    NO_METRIC,
    NOT_RUN,
    OK,
    TableEntry,
)
from noisy_prompt.reporting.label_issues import LABEL_ISSUE_TABLE, LabelIssueTable, label_issue_table  # noqa: F401
from noisy_prompt.reporting.runs import LoadedRuns, RunRecord, load_runs  # noqa: F401
from noisy_prompt.reporting.sensitivity import SensitivityTable, sensitivity  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
