"""docs/extending.md's worked example, run as written: a method of one's own, outside the package."""
import os
import re
import subprocess
import sys

import pytest

from paths import REPO

ROOT = REPO
DOC = ROOT / "docs" / "extending.md"
FILE = re.compile(r"<!-- file: (?P<path>\S+) -->\n```\w*\n(?P<body>.*?)```", re.S)
RUN = re.compile(r"<!-- run -->\n```bash\n(?P<cmd>.*?)```", re.S)


def test_doc_example_files_are_complete():
    text = DOC.read_text(encoding="utf-8")
    files = {m["path"]: m["body"] for m in FILE.finditer(text)}
    assert set(files) == {"my_project/my_methods.py", "my_project/conf/model/coop_ls.yaml"}
    compile(files["my_project/my_methods.py"], "my_methods.py", "exec")
    assert len(RUN.findall(text)) == 1


@pytest.mark.slow
def test_doc_worked_example_runs_as_written(tmp_path):
    text = DOC.read_text(encoding="utf-8")
    for m in FILE.finditer(text):
        dest = tmp_path / m["path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(m["body"], encoding="utf-8")
    cmd = RUN.search(text)["cmd"].strip().replace("python -m", f"{sys.executable} -m", 1)
    env = {**os.environ, "NOISY_PROMPT_LOGS": str(tmp_path / "runs"), "NOISY_PROMPT_CACHE": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = list((tmp_path / "runs").glob("adhoc/coop_ls/synthetic/sym50/synthetic/seed1__max_epochs=2__*/results.json"))
    assert len(results) == 1, proc.stderr[-3000:]
    import json

    record = json.loads(results[0].read_text())
    assert record["config"]["model"]["_target_"] == "my_methods.CoOpLabelSmoothing"
    assert record["config"]["model"]["smoothing"] == 0.1
    assert 0.0 < record["metrics"]["test/acc"] <= 100.0
