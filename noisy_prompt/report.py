"""`python -m noisy_prompt.report RUN_DIR [--out FILE] [--top N] [--data-dir DIR]`: a self-contained
report.html of a finished run (reporting/report_page.py; docs/label-issues.md)."""
from noisy_prompt.reporting.report_page import main

if __name__ == "__main__":
    raise SystemExit(main())
