"""The errors a person can act on, and loading files without running code.

`UserError` is the base of every error caused by the run's input rather than by the code: a config
value out of range, a dataset that is missing or incomplete, weights that are not there, a stale or
unsafe file in the run dir. `python -m noisy_prompt.run` prints such an error's message alone (the
traceback goes to the run's run.log and failed.json; `HYDRA_FULL_ERROR=1` shows it on screen too);
any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


class UserError(Exception):
    """An error in the run's input (config, data, weights, run dir); its message says what to fix."""


class ConfigError(UserError, ValueError):
    """A config value out of its range; the message names the key, the value and what is expected."""


class PreflightError(UserError):
    """Several problems found before a run started, all listed (each names its key, file or folder)."""

    def __init__(self, problems: Sequence[tuple[str, str]]):
        self.problems = list(problems)
        kinds = ", ".join(dict.fromkeys(kind for kind, _ in self.problems))
        lines = [f"{len(self.problems)} problems stop this run before it starts ({kinds}); nothing was computed:"]
        for i, (kind, text) in enumerate(self.problems, 1):
            first, *rest = str(text).strip().splitlines() or [""]
            lines.append(f"{i}. [{kind}] {first}")
            lines += [f"   {line}" for line in rest]
        super().__init__("\n".join(lines))


class UnsafeFileError(UserError, RuntimeError):
    """A file that could only be loaded by unpickling arbitrary objects (which can run code)."""


def safe_torch_load(path: str | Path, *, what: str, remedy: str, mmap: bool = False, **kwargs: Any) -> Any:
    """`torch.load(path, weights_only=True)`: tensors, numbers, strings and containers only.

    Unpickling anything else can execute code from the file, so a file that needs it is refused with an
    `UnsafeFileError` naming the file, the object it asked for, and `remedy` (what the user can do).
    Passing weights_only explicitly also overrides TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap, **kwargs)
    except pickle.UnpicklingError as err:
        detail = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line
                       or "WeightsUnpickler error" in line), str(err).splitlines()[0] if str(err) else "")
        raise UnsafeFileError(
            f"{path}: refused to load this {what}: it holds pickled objects beyond tensors, numbers and strings "
            f"({detail.split(' Please use')[0]}), and unpickling them could run code from the file. noisy_prompt "
            f"loads every file with torch.load(weights_only=True); its own {what}s never need more.\n{remedy}"
        ) from err


class SafeUnpickler:
    """A `pickle.Unpickler` for data files in Python's pickle format (the CIFAR-100 python pickles) that
    builds only plain containers and NumPy arrays: any other global the file names is refused, so a
    replaced data file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> Any:
        import pickle

        allowed = cls.ALLOWED

        class _Restricted(pickle.Unpickler):
            def find_class(self, module: str, name: str):
                if (module, name) in allowed:
                    return super().find_class(module, name)
                raise UnsafeFileError(
                    f"{path}: refused to unpickle {module}.{name}: this data file should hold only arrays, "
                    "lists and strings, and unpickling other objects could run code from it. Replace it with "
                    "the original download.")

        with open(path, "rb") as fh:
            return _Restricted(fh, **kwargs).load()
