"""`python -m noisy_prompt.reporting.config_table [--check]`: the README's table of config groups and
their options, generated from `conf/` so that a config cannot exist without being listed.

The README marks the table `<!-- config-table -->` … `<!-- /config-table -->`; this command rewrites
what lies between, `--check` exits 1 when it differs (a test runs it).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF = REPO_ROOT / "conf"
# What each group chooses, in the order a newcomer meets them. A group missing here is still listed
# (at the end, without a description), so a new group never disappears from the README.
GROUPS = {
    "model": "the method (`zeroshot`, prompt methods, TANGO and its readings, baselines)",
    "data": "the dataset (the synthetic world, the papers' datasets, your own folder or CSV)",
    "noise": "the label-noise protocol and rate ([docs/noise.md](docs/noise.md))",
    "backbone": "the CLIP model (the built-in synthetic CLIP or open_clip weights)",
    "trainer": "Lightning trainer: device, precision, DDP",
    "logger": "CSV metrics, W&B, both or none",
    "callbacks": "checkpointing and progress callbacks",
    "paths": "where runs, caches and data live",
}
MARK = re.compile(r"(<!-- config-table -->\n)(?P<body>.*?)(<!-- /config-table -->)", re.S)


def options(group_dir: Path) -> list[str]:
    """The selectable configs of a group: its yaml files, without `_`-prefixed partials."""
    return sorted(p.stem for p in group_dir.glob("*.yaml") if not p.name.startswith("_"))


def table(conf: Path = CONF) -> str:
    groups = sorted((d.name for d in conf.iterdir() if d.is_dir() and d.name != "hydra" and options(d)),
                    key=lambda g: (list(GROUPS).index(g) if g in GROUPS else len(GROUPS), g))
    lines = ["| group | what it chooses | options |", "|---|---|---|"]
    for g in groups:
        opts = ", ".join(f"`{o}`" for o in options(conf / g))
        lines.append(f"| `{g}` | {GROUPS.get(g, '')} | {opts} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m noisy_prompt.reporting.config_table", description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", type=Path, default=REPO_ROOT / "README.md")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if the README's table is out of date")
    a = p.parse_args(argv)
    text = a.readme.read_text(encoding="utf-8")
    m = MARK.search(text)
    if m is None:
        print(f"error: {a.readme} has no `<!-- config-table -->` … `<!-- /config-table -->` block", file=sys.stderr)
        return 2
    new = table(a.readme.resolve().parent / "conf")
    if m.group("body") == new:
        print("config table up to date")
        return 0
    if a.check:
        print(f"config table in {a.readme} is out of date: run `python -m noisy_prompt.reporting.config_table`")
        return 1
    a.readme.write_text(text[:m.start("body")] + new + text[m.end("body"):], encoding="utf-8")
    print(f"config table rewritten in {a.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
