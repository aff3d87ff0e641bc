"""The method hooks the task calls are declared on the base class with safe defaults."""
import inspect
from pathlib import Path

from noisy_prompt.methods.base import ClassifierModule
from noisy_prompt.methods.crossdata import CrossDataEval
from noisy_prompt.methods.tango.module import Tango
from noisy_prompt.methods.zeroshot import ZeroShot


def test_hooks_are_declared_with_defaults(tmp_path):
    m = object.__new__(ClassifierModule)  # the defaults need no CLIP
    assert ClassifierModule.extra_metrics(m) == {} and ClassifierModule.extra_results(m) == {}
    assert ClassifierModule.write_artifacts(m, tmp_path) is None and list(tmp_path.iterdir()) == []
    assert ClassifierModule.trains is True and ZeroShot.trains is False and CrossDataEval.trains is False
    params = inspect.signature(ClassifierModule.__init__).parameters
    assert params["class_descriptions"].default is None and params["clip_bundle"].default is None


def test_tango_uses_the_hooks(tmp_path):
    t = object.__new__(Tango)
    t.purification_history = [{"epoch": 0, "clean_fraction": 0.5}]
    assert Tango.extra_results(t) == {"purification": [{"epoch": 0, "clean_fraction": 0.5}]}
    t.purification_history = []
    assert Tango.extra_results(t) == {}
    # The label-issue report is no longer TANGO's own hook: every training method writes it after testing
    # (ClassifierModule.on_test_epoch_end -> write_label_issues, methods/selection.py).
    assert Tango.write_label_issues is ClassifierModule.write_label_issues
    assert Tango.write_artifacts is ClassifierModule.write_artifacts


def test_task_and_base_do_not_probe_for_hooks():
    import noisy_prompt.methods.base as base
    import noisy_prompt.task as task

    for mod in (task, base):
        src = inspect.getsource(mod)
        for name in ("extra_metrics", "purification_history", "write_label_issues", '"trains"'):
            assert f'getattr(module, "{name}' not in src and f'hasattr(self, "{name}' not in src
