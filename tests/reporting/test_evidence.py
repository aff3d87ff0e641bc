"""evidence/README.md: every table equals what `aggregate` prints from the committed records."""
from pathlib import Path

from noisy_prompt.reporting import evidence
from paths import REPO

ROOT = REPO
PAGE = ROOT / "evidence" / "README.md"


def test_committed_evidence_tables_equal_aggregate_output():
    page = PAGE.read_text(encoding="utf-8")
    found = evidence.blocks(page)
    assert len(found) >= 6
    new, changed = evidence.regenerate(page, ROOT, figures=False)
    assert changed == [], f"out of date (run `make evidence`): {changed}"
    assert new == page


def test_check_detects_a_stale_table(tmp_path):
    page = PAGE.read_text(encoding="utf-8")
    stale = page.replace("| 77.99 ± 0.59 (n=3)", "| 77.98 ± 0.59 (n=3)", 1)
    assert stale != page
    (tmp_path / "evidence").mkdir()
    copy = tmp_path / "evidence" / "README.md"
    copy.write_text(stale, encoding="utf-8")
    # the records are read from the repository: the blocks' paths are relative to the page's repo root
    (tmp_path / "evidence" / "synthetic_readings_dpsep").symlink_to(ROOT / "evidence" / "synthetic_readings_dpsep")
    for name in ("synthetic_readings_tango", "synthetic_readings_tango_paper_recipe", "synthetic_tango"):
        (tmp_path / "evidence" / name).symlink_to(ROOT / "evidence" / name)
    assert evidence.main(["--page", str(copy), "--check"]) == 1
    assert copy.read_text(encoding="utf-8") == stale  # --check writes nothing
    assert evidence.main(["--page", str(copy), "--no-figures"]) == 0
    assert copy.read_text(encoding="utf-8") == page


def test_argv_drops_plot_without_figures():
    argv = evidence._argv("evidence/x --table t --plot evidence/figures/a.png --plot-rows a,b", Path("/r"), False)
    assert argv == ["/r/evidence/x", "--table", "t"]
    argv = evidence._argv("evidence/x --table t --plot evidence/figures/a.png --plot-rows a,b", Path("/r"), True)
    assert argv == ["/r/evidence/x", "--table", "t", "--plot", "/r/evidence/figures/a.png", "--plot-rows", "a,b"]


def test_committed_evidence_records_are_current_or_marked_rerun_pending():
    assert evidence.currency_problems(PAGE.read_text(encoding="utf-8"), ROOT) == []


def _current_record(path: Path) -> dict:
    """A committed zero-shot record given today's digests (as a run at this commit writes them)."""
    import json

    from noisy_prompt.build import data_digest_of
    from noisy_prompt.clip.factory import weights_digest
    from omegaconf import OmegaConf

    record = json.loads(path.read_text(encoding="utf-8"))
    backbone = record["config"]["backbone"]
    record["weights_digest"] = weights_digest(backbone["model"], backbone.get("pretrained"))
    record["data_digest"] = data_digest_of(OmegaConf.create({"data": record["config"]["data"]}))
    return record


def test_a_stale_record_stops_the_page_unless_its_folder_is_marked(tmp_path):
    import json
    import shutil

    src = next((ROOT / "evidence" / "synthetic_readings_dpsep" / "zeroshot").rglob("results.json"))
    folder = tmp_path / "evidence" / "runs"
    dst = folder / src.relative_to(ROOT / "evidence" / "synthetic_readings_dpsep")
    dst.parent.mkdir(parents=True)
    record = _current_record(src)
    dst.write_text(json.dumps(record), encoding="utf-8")
    page = "<!-- aggregate: evidence/runs --table synthetic_readings_dpsep -->\n<!-- /aggregate -->\n"
    assert evidence.stale_records(folder) == [] and evidence.currency_problems(page, tmp_path) == []
    # current records under a `rerun pending` mark: the mark must go
    marked = "<!-- rerun pending: evidence/runs -->\n" + page
    assert "remove its" in evidence.currency_problems(marked, tmp_path)[0]
    # a record made before the weights digest was kept cannot be checked: stale, named with its path
    del record["weights_digest"]
    dst.write_text(json.dumps(record), encoding="utf-8")
    (stale,) = evidence.stale_records(folder)
    assert str(dst) in stale and "predates weights_digest" in stale
    (problem,) = evidence.currency_problems(page, tmp_path)
    assert problem.startswith("evidence/runs: 1 record(s)") and "rerun pending" in problem
    assert evidence.currency_problems(marked, tmp_path) == []
    # ... and so is one of other world content (the dataset's digest differs)
    record["weights_digest"], record["data_digest"] = _current_record(src)["weights_digest"], "0" * 16
    dst.write_text(json.dumps(record), encoding="utf-8")
    assert "other dataset content" in evidence.stale_records(folder)[0]
    # the commands refuse the page: --check fails, and the page is not rewritten
    (tmp_path / "evidence" / "README.md").write_text(page, encoding="utf-8")
    assert evidence.main(["--page", str(tmp_path / "evidence" / "README.md"), "--check"]) == 1
    assert evidence.main(["--page", str(tmp_path / "evidence" / "README.md"), "--no-figures"]) == 1
    assert (tmp_path / "evidence" / "README.md").read_text(encoding="utf-8") == page
    shutil.rmtree(folder)


def test_adopt_copies_a_reruns_records_only_when_all_are_current_and_clean(tmp_path):
    import json

    src = next((ROOT / "evidence" / "synthetic_readings_dpsep" / "zeroshot").rglob("results.json"))
    rel = src.relative_to(ROOT / "evidence" / "synthetic_readings_dpsep")
    runs, target = tmp_path / "logs" / "sweepx", tmp_path / "evidence" / "sweepx"
    record = _current_record(src)
    record["git_rev"], record["metrics"]["test/acc"] = "abc123-dirty", 12.5
    (runs / rel).parent.mkdir(parents=True)
    (runs / rel).write_text(json.dumps(record), encoding="utf-8")
    (target / rel).parent.mkdir(parents=True)
    (target / rel).write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    old_acc = json.loads(src.read_text(encoding="utf-8"))["metrics"]["test/acc"]
    # a record from a checkout with uncommitted changes: refused, nothing copied even with --apply
    page = tmp_path / "evidence" / "README.md"
    assert evidence.main(["--page", str(page), "--adopt", str(runs), "--apply"]) == 1
    assert json.loads((target / rel).read_text())["metrics"]["test/acc"] == old_acc
    # clean and current: printed without --apply, copied with it, the move of test/acc named
    record["git_rev"] = "abc123"
    (runs / rel).write_text(json.dumps(record), encoding="utf-8")
    lines, problems = evidence.adopt(runs, target)
    assert problems == [] and lines == [f"replace {rel}: test/acc {old_acc} -> 12.5"]
    assert json.loads((target / rel).read_text())["metrics"]["test/acc"] == old_acc
    assert evidence.main(["--page", str(page), "--adopt", str(runs), "--apply"]) == 0
    assert json.loads((target / rel).read_text())["metrics"]["test/acc"] == 12.5
    # a stale one (no weights digest) stops it again
    del record["weights_digest"]
    (runs / rel).write_text(json.dumps(record), encoding="utf-8")
    lines, problems = evidence.adopt(runs, target, apply=True)
    assert len(problems) == 1 and "predates weights_digest" in problems[0]
