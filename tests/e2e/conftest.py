"""Every test collected from tests/e2e/ is marked `slow`: these files train whole runs, and `make test-fast`
(`-m "not slow"`) skips them. A test file placed here needs no mark of its own."""
from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


# pytest calls this hook of every conftest with the items of the whole session, so it keeps to the items whose
# file lies under this folder. tryfirst: the mark must be on them before `-m` deselects by mark.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slow)
