"""Loading runs: every `results.json` / `failed.json` under a root, one record per (cell, seed).

Runs are identified by the cell written inside the files (model, data, noise, backbone, train_data,
seed and the settings: non-cell-key overrides such as model.lam=0.2), never by directory names, so
any directory layout aggregates the same way.

A folder may hold a `reused.txt`: one path per line (relative to that file; `#` starts a comment) of a
run file or a folder of runs kept elsewhere, e.g. another sweep's records of the same config hash. They
load as if they were under the root, so a record shared by two tables is kept once, not copied.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from noisy_prompt.cell import FAILED as FAILED_FILE
from noisy_prompt.cell import RESULTS, CellKey, Record, read_record

RESULT_FILES = (RESULTS, FAILED_FILE)
REUSED = "reused.txt"


# One record per run file, read by the cell contract (noisy_prompt.cell): identity = cell keys + settings.
RunRecord = Record


@dataclass
class LoadedRuns:
    root: Path
    runs: list[RunRecord]  # one per (key, seed): duplicates and superseded failures removed
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _reused_paths(listing: Path) -> list[Path]:
    """The run files a `reused.txt` names; a missing one is an error naming the listing and its line."""
    out: list[Path] = []
    for n, line in enumerate(listing.read_text().splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        target = (listing.parent / entry).resolve()
        if target.is_dir():
            files = [p for name in RESULT_FILES for p in target.rglob(name) if p.is_file()]
        elif target.is_file() and target.name in RESULT_FILES:
            files = [target]
        else:
            files = []
        if not files:
            raise FileNotFoundError(f"{listing}:{n}: {entry!r} is neither a {' / '.join(RESULT_FILES)} file nor a "
                                    f"folder holding one (resolved to {target})")
        out += files
    return out


def load_runs(root: str | Path) -> LoadedRuns:
    """Every run under `root`, one record per (cell, seed).

    Duplicates of one (cell, seed) are reported and the first in sorted relative-path order is
    kept. A success supersedes failures of the same (cell, seed) (a re-run after a crash).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"results root {root} is not a directory")
    loaded = LoadedRuns(root=root, runs=[])
    found = [p for name in RESULT_FILES for p in root.rglob(name) if p.is_file()]
    for listing in sorted(root.rglob(REUSED)):
        reused = _reused_paths(listing)
        found += reused
        loaded.notes.append(f"{len(reused)} run file(s) reused from elsewhere, as listed in {_rel(listing, root)}")
    paths = sorted(set(found), key=lambda p: _rel(p, root))
    by_cell: dict[tuple[CellKey, int], dict[bool, list[RunRecord]]] = {}
    for path in paths:
        try:
            record = read_record(path)
        except ValueError as err:
            loaded.warnings.append(f"skipped unreadable run file: {err}")
            continue
        by_cell.setdefault((record.key, record.seed), {True: [], False: []})[record.ok].append(record)
    if not paths:
        loaded.warnings.append(f"no results.json or failed.json found under {root}")

    for (key, seed), groups in sorted(by_cell.items(), key=lambda kv: (kv[0][0].sort_key(), kv[0][1])):
        oks, fails = groups[True], groups[False]
        chosen = oks or fails
        if len(chosen) > 1:
            kind = "results" if oks else "failures"
            loaded.warnings.append(
                f"duplicate {kind} for {key.label()} seed {seed}: keeping {_rel(chosen[0].path, root)}; "
                f"ignoring {', '.join(_rel(r.path, root) for r in chosen[1:])}"
            )
        if oks and fails:
            loaded.notes.append(
                f"{key.label()} seed {seed}: failure(s) {', '.join(_rel(r.path, root) for r in fails)} "
                f"superseded by {_rel(oks[0].path, root)}"
            )
        loaded.runs.append(chosen[0])
    return loaded

