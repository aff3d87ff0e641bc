"""Test helper: a callback that SIGKILLs its own process at the start of a chosen training epoch.

Armed by the environment variable NP_TEST_KILL_AT_EPOCH (0-based epoch), so the same command line
run again without it continues normally (tests/test_resume.py)."""
import os
import signal

import lightning as L


class KillAtEpoch(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if str(trainer.current_epoch) == os.environ.get("NP_TEST_KILL_AT_EPOCH"):
            os.kill(os.getpid(), signal.SIGKILL)
