"""`session(cfg, run_dir)` owns what surrounds a run: failed.json on an error inside the block, the
loggers closed on every exit, a finished cell handed back instead of rerun, a stale one refused."""
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import noisy_prompt.config  # noqa: F401  (resolvers)
from noisy_prompt.cell import FAILED, RESULTS, StaleCellError, write_json
from noisy_prompt.session import RUN_CONFIG, session

CONF = Path(__file__).resolve().parent.parent / "conf"


def _cfg(tmp_path, *extra):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="run", overrides=["model=coop", f"paths.log_dir={tmp_path}",
                                                     f"paths.cache_dir={tmp_path / 'cache'}", *extra])


class Logger:
    def __init__(self):
        self.status = None

    def finalize(self, status):
        self.status = status


def test_an_error_inside_leaves_failed_json_and_closes_the_loggers(tmp_path):
    cfg = _cfg(tmp_path)
    run_dir = Path(cfg.run_dir)
    lg = Logger()
    with pytest.raises(ValueError, match="boom"):
        with session(cfg, run_dir) as s:
            assert s.finished is None and (run_dir / RUN_CONFIG).is_file() and s.resume_from is None
            s.loggers = [lg]
            raise ValueError("boom")
    failed = json.loads((run_dir / FAILED).read_text())
    assert failed["error"] == "ValueError: boom" and failed["cell_id"] == "coop/synthetic/sym50/synthetic"
    assert failed["config_hash"] == s.config_hash and "ValueError: boom" in failed["traceback"]
    assert lg.status == "failed"


def test_a_finished_cell_is_handed_back_and_a_stale_one_refused(tmp_path):
    cfg = _cfg(tmp_path)
    run_dir = Path(cfg.run_dir)
    lg = Logger()
    with session(cfg, run_dir) as s:
        s.loggers = [lg]
        s.save(s.record({"test/acc": 50.0}, {"protocol": "sym", "transition": [[1]]}, world_size=1))
    assert lg.status == "success" and not (run_dir / FAILED).exists()
    stored = json.loads((run_dir / RESULTS).read_text())
    assert "transition" not in stored["noise"] and (run_dir / "config.yaml").is_file()
    with session(cfg, run_dir) as again:
        assert again.finished == stored
    with pytest.raises(StaleCellError, match="different configuration"):
        with session(_cfg(tmp_path, "model.max_epochs=3", "trainer.max_epochs=3"), run_dir):
            pass
    assert "StaleCellError" in json.loads((run_dir / FAILED).read_text())["error"]
    # force=true reruns: the stored record is not handed back
    with session(_cfg(tmp_path, "force=true"), run_dir) as forced:
        assert forced.finished is None


def test_a_checkpoint_of_another_configuration_is_not_resumed(tmp_path):
    cfg = _cfg(tmp_path)
    run_dir = Path(cfg.run_dir)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    write_json(run_dir / RUN_CONFIG, {"config_hash": "0" * 16, "config": {}})
    with pytest.raises(StaleCellError, match="was written by a different configuration"):
        with session(cfg, run_dir):
            pass
    assert (run_dir / FAILED).is_file()
