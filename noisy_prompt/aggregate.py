"""`python -m noisy_prompt.aggregate <results root> --table NAME [--format md|csv|latex] [--out FILE]`,
`... <root> --label-issues [--format md|csv]` (reporting/aggregate.py)."""
from noisy_prompt.reporting.aggregate import main

if __name__ == "__main__":
    raise SystemExit(main())
