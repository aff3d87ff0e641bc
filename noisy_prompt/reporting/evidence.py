"""`python -m noisy_prompt.reporting.evidence [--check] [--no-figures]` (`make evidence`): regenerate
every table (and figure) that `evidence/README.md` shows, from the run records committed beside it.

The page marks each generated table with the aggregate command that prints it:

    <!-- aggregate: evidence/synthetic_tango --table synthetic_tango -->
    ...the command's output, written here...
    <!-- /aggregate -->

Paths in the command are relative to the repository root. `--plot FILE.png` in a command also redraws
that figure (skipped by `--check` and `--no-figures`); a figure whose table is not shown is marked
`<!-- figure: ARGS -->` beside its image. `--check` rewrites nothing and exits 1 when a
block differs from what the command prints now, so a table from an older state of the code or records
cannot stay on the page unnoticed (a fast test runs it).

Every record behind a block or figure must also be current: made with the weights and data its config
names now (`build.record_staleness`: both digests recorded and equal to today's). A folder with a stale
record stops both commands, naming the records, unless the page marks it

    <!-- rerun pending: evidence/FOLDER -->

beside prose that says so; a mark on a folder whose records are all current stops them too, so the
mark is removed when the rerun lands.

`--adopt RUNS` brings a rerun in: every successful `results.json` under a sweep's run folder RUNS
(`$NOISY_PROMPT_LOGS/<sweep>`) is copied to the same relative path under `evidence/<sweep>/`, replacing
its twin, and how each cell's test accuracy moved is printed. It copies nothing unless every record
there is current and made from a clean checkout (no `-dirty` commit); without `--apply` it only prints.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from noisy_prompt.reporting.cli import main as aggregate_main

REPO_ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"(<!-- aggregate: (?P<args>.*?) -->\n)(?P<body>.*?)(<!-- /aggregate -->)", re.S)
# A figure is drawn by an aggregate command with --plot; the page shows the image, not the output.
FIGURE = re.compile(r"<!-- figure: (?P<args>.*?) -->")
PENDING = re.compile(r"<!-- rerun pending: (?P<folder>\S+) -->")


@dataclass(frozen=True)
class Block:
    args: str
    body: str
    span: tuple[int, int]  # of the body inside the page


def blocks(page: str) -> list[Block]:
    return [Block(m.group("args"), m.group("body"), m.span("body")) for m in BLOCK.finditer(page)]


def _argv(args: str, root: Path, figures: bool) -> list[str]:
    """The block's command line for `aggregate.main`: paths made absolute under `root`; without
    `figures`, `--plot FILE` and `--plot-rows ROWS` dropped."""
    argv = shlex.split(args)
    out = [str(root / argv[0])] if argv and not argv[0].startswith("-") else []
    rest = argv[len(out):]
    i = 0
    while i < len(rest):
        a = rest[i]
        if a in ("--plot", "--plot-rows"):
            if figures:
                out += [a, str(root / rest[i + 1]) if a == "--plot" else rest[i + 1]]
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def render(args: str, root: Path = REPO_ROOT, figures: bool = False) -> str:
    """What `python -m noisy_prompt.aggregate ARGS` prints to stdout (warnings go to stderr, not the page)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "table.txt"
        argv = _argv(args, root, figures) + ["--out", str(out)]
        with contextlib.redirect_stderr(io.StringIO()):
            rc = aggregate_main(argv)
        if rc != 0 or not out.exists():
            raise RuntimeError(f"`python -m noisy_prompt.aggregate {args}` failed (exit {rc})")
        text = out.read_text(encoding="utf-8")
    return text if text.endswith("\n") else text + "\n"


def regenerate(page: str, root: Path = REPO_ROOT, figures: bool = False) -> tuple[str, list[str]]:
    """The page with every block's body replaced by its command's output, and the commands that changed."""
    changed: list[str] = []
    pieces: list[str] = []
    last = 0
    for b in blocks(page):
        new = render(b.args, root, figures)
        if new != b.body:
            changed.append(b.args)
        pieces += [page[last:b.span[0]], new]
        last = b.span[1]
    pieces.append(page[last:])
    if figures:
        for m in FIGURE.finditer(page):
            render(m.group("args"), root, figures=True)
    return "".join(pieces), changed


def folders(page: str) -> list[str]:
    """The run folders (relative to the repository root) that the page's tables and figures read."""
    args = [b.args for b in blocks(page)] + [m.group("args") for m in FIGURE.finditer(page)]
    return list(dict.fromkeys(shlex.split(a)[0] for a in args if a and not a.startswith("-")))


def stale_records(folder: Path) -> list[str]:
    """'PATH: why' for each successful run record under `folder` (reused.txt listings included) that
    cannot stand for its config today (build.record_staleness)."""
    from noisy_prompt.build import record_staleness
    from noisy_prompt.cell import read_json
    from noisy_prompt.reporting.runs import load_runs

    cache: dict = {}
    out = []
    for run in load_runs(folder).runs:
        if not run.ok:
            continue
        why = record_staleness(read_json(Path(run.path)), cache)
        if why:
            out.append(f"{run.path}: {'; '.join(why)}")
    return out


def currency_problems(page: str, root: Path = REPO_ROOT) -> list[str]:
    """What keeps the page's records from standing for the committed code, weights and data: a folder
    with stale records that the page does not mark `rerun pending`, or a marked folder with none."""
    pending = {m.group("folder") for m in PENDING.finditer(page)}
    read = folders(page)
    problems = []
    for folder in read:
        stale = stale_records(root / folder)
        if stale and folder not in pending:
            problems.append(f"{folder}: {len(stale)} record(s) not made with the weights and data their config names "
                            f"now; rerun them (force=true), or mark the folder `<!-- rerun pending: {folder} -->` "
                            "where the page says why:\n  " + "\n  ".join(stale[:5])
                            + (f"\n  ... and {len(stale) - 5} more" if len(stale) > 5 else ""))
        elif folder in pending and not stale:
            problems.append(f"{folder}: every record is current; remove its `<!-- rerun pending: {folder} -->` mark "
                            "(and the prose beside it)")
    problems += [f"{f}: marked `rerun pending` but no table or figure reads it" for f in sorted(pending - set(read))]
    return problems


def adopt(runs: Path, target: Path, apply: bool = False) -> tuple[list[str], list[str]]:
    """(lines, problems) of copying the successful records under `runs` into `target` (see the module
    doc). Nothing is copied when there is a problem: a stale record, one from a dirty checkout, or none."""
    import shutil

    from noisy_prompt.build import record_staleness
    from noisy_prompt.cell import RESULTS, read_json

    lines, problems, copies = [], [], []
    cache: dict = {}
    for path in sorted(runs.rglob(RESULTS)):
        record = read_json(path)
        if record.get("status") != "ok":
            continue
        rel = path.relative_to(runs)
        why = record_staleness(record, cache)
        if str(record.get("git_rev", "")).endswith("-dirty") or not record.get("git_rev"):
            why.append(f"made from a checkout with uncommitted changes or no commit ({record.get('git_rev')!r})")
        if why:
            problems.append(f"{path}: {'; '.join(why)}")
            continue
        dst = target / rel
        new = (record.get("metrics") or {}).get("test/acc")
        if dst.is_file():
            old = (read_json(dst).get("metrics") or {}).get("test/acc")
            moved = "same" if old == new else f"{old} -> {new}"
            lines.append(f"replace {rel}: test/acc {moved}")
        else:
            lines.append(f"new     {rel}: test/acc {new}")
        copies.append((path, dst))
    if not copies and not problems:
        problems.append(f"{runs}: no successful results.json to adopt")
    if apply and not problems:
        for src, dst in copies:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    return lines, problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m noisy_prompt.reporting.evidence", description=__doc__.split("\n\n")[0])
    p.add_argument("--page", type=Path, default=REPO_ROOT / "evidence" / "README.md")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is out of date")
    p.add_argument("--no-figures", action="store_true", help="do not redraw the figures")
    p.add_argument("--adopt", type=Path, metavar="RUNS",
                   help="copy a sweep's fresh records ($NOISY_PROMPT_LOGS/<sweep>) into evidence/<sweep>/ (see --apply)")
    p.add_argument("--apply", action="store_true", help="with --adopt: copy (else only print what would change)")
    a = p.parse_args(argv)
    if a.adopt is not None:
        if not a.adopt.is_dir():
            print(f"error: --adopt {a.adopt}: not a folder (a sweep's run folder, $NOISY_PROMPT_LOGS/<sweep>)",
                  file=sys.stderr)
            return 2
        target = a.page.resolve().parent / a.adopt.resolve().name
        lines, problems = adopt(a.adopt, target, a.apply)
        for line in lines:
            print(line)
        for problem in problems:
            print(f"not adopted: {problem}", file=sys.stderr)
        if problems:
            print(f"error: nothing copied into {target}: {len(problems)} problem(s) above", file=sys.stderr)
            return 1
        print(f"{len(lines)} record(s) {'copied into' if a.apply else 'would be copied into (rerun with --apply)'} {target}")
        return 0
    if not a.page.is_file():
        print(f"error: {a.page} not found (run from a clone of the repository)", file=sys.stderr)
        return 2
    page = a.page.read_text(encoding="utf-8")
    found = blocks(page)
    if not found:
        print(f"error: {a.page} has no `<!-- aggregate: ... -->` block", file=sys.stderr)
        return 2
    root = a.page.resolve().parents[1]
    problems = currency_problems(page, root)
    for problem in problems:
        print(f"stale: {problem}", file=sys.stderr)
    new, changed = regenerate(page, root, figures=not (a.check or a.no_figures))
    for c in changed:
        print(f"{'out of date' if a.check else 'updated'}: aggregate {c}")
    if a.check:
        print(f"{len(found) - len(changed)} of {len(found)} tables up to date; "
              f"{len(problems)} folder(s) with stale records or a stale mark")
        return 1 if changed or problems else 0
    if problems:
        print(f"error: {a.page} not rewritten: its records are not all current (above)", file=sys.stderr)
        return 1
    if new != page:
        a.page.write_text(new, encoding="utf-8")
    print(f"{len(found)} tables regenerated ({len(changed)} changed) in {a.page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
