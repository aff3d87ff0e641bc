"""The repository's folders, defined once for every test file, whatever folder of tests/ it sits in.

Test files import it as a top-level module (`from paths import REPO, CONF`): pytest's default `prepend`
import mode puts tests/ (the folder of the rootdir conftest.py) on sys.path, as it does for fake_trees.py,
report_html.py and _kill_at_epoch.py."""
from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent  # tests/: the helper modules and the rootdir conftest.py
REPO = TESTS.parent  # the repository root: conf/, docs/, evidence/, sweeps/, noisy_prompt/
CONF = REPO / "conf"  # Hydra's config dir
PKG = REPO / "noisy_prompt"
