"""The README and docs/: the generated config table is current, links resolve, the front door stays short."""
import re
from pathlib import Path

from noisy_prompt.reporting import config_table
from paths import REPO

ROOT = REPO
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "evidence" / "README.md"]
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def test_config_table_lists_every_config():
    assert config_table.main(["--readme", str(ROOT / "README.md"), "--check"]) == 0
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for group in ("model", "data", "noise", "backbone", "trainer", "logger"):
        for yaml in (ROOT / "conf" / group).glob("*.yaml"):
            if not yaml.name.startswith("_"):
                assert f"`{yaml.stem}`" in text, f"conf/{group}/{yaml.name} missing from the README's config table"


def test_config_table_check_fails_on_a_new_config(tmp_path):
    conf = tmp_path / "conf"
    for group in ("model", "noise"):
        (conf / group).mkdir(parents=True)
        (conf / group / "a.yaml").write_text("{}\n")
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- config-table -->\n" + config_table.table(conf) + "<!-- /config-table -->\n")
    assert config_table.main(["--readme", str(readme), "--check"]) == 0
    (conf / "model" / "b.yaml").write_text("{}\n")
    assert config_table.main(["--readme", str(readme), "--check"]) == 1
    assert config_table.main(["--readme", str(readme)]) == 0
    assert "`b`" in readme.read_text()


def test_readme_is_a_short_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 260, f"README.md has {lines} lines; detail belongs in docs/"


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target, _ in LINK.findall(page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []


def _outside_citations(path: Path, in_docs: bool) -> list[str]:
    cite = re.compile(r"\.\./shared/|(?<![\w/-])(tango|dpsep|baselines|noise|datasets|synthetic_world|conventions)\.md")
    bad = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for m in cite.finditer(line):
            name = f"{m.group(1)}.md" if m.group(1) else None
            in_repo = name is not None and (ROOT / "docs" / name).exists()
            if in_repo and (in_docs or line[max(0, m.start() - 5):m.start()] == "docs/"):
                continue
            bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:80]}")
    return bad


def test_nothing_points_at_a_document_outside_the_repository():
    """Users have the repository only: a comment or page citing a design document must cite docs/."""
    bad = []
    for top in ("noisy_prompt", "conf", "sweeps", "tests", "docs"):
        for p in (ROOT / top).rglob("*"):
            if p.suffix in (".py", ".yaml", ".md") and p.name != "test_docs.py":
                bad += _outside_citations(p, in_docs=top == "docs")
    for name in ("README.md", "Makefile"):
        bad += _outside_citations(ROOT / name, in_docs=False)
    assert bad == []


def test_every_cited_test_file_exists():
    """Pages and comments that name a test file (`tests/<folder>/test_<unit>.py`, maybe `::test_name`) name one that
    is there: moving a test file without its citations fails here."""
    cite = re.compile(r"\btests/[\w/]+\.py(?:::(\w+))?")
    files = [ROOT / "README.md", ROOT / "Makefile", *(ROOT / "docs").glob("*.md"), ROOT / "evidence" / "README.md"]
    for top in ("noisy_prompt", "conf", "sweeps", "tests"):
        files += [p for p in (ROOT / top).rglob("*") if p.suffix in (".py", ".yaml", ".md")]
    bad = []
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in cite.finditer(line):
                target = ROOT / m.group(0).split("::")[0]
                if not target.is_file():
                    bad.append(f"{path.relative_to(ROOT)}:{n}: {m.group(0)} (no such file)")
                elif m.group(1) and f"def {m.group(1)}(" not in target.read_text(encoding="utf-8"):
                    bad.append(f"{path.relative_to(ROOT)}:{n}: {m.group(0)} (no such test)")
    assert bad == []
