"""`python -m noisy_prompt.aggregate <results root> --table NAME [--format md|csv|latex] [--out FILE]`,
`... <root> --label-issues [--format md|csv]` (noisy_prompt/reporting/cli.py)."""
from noisy_prompt.reporting.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
