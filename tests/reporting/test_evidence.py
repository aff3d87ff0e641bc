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
