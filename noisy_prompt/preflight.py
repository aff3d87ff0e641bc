"""Check a run's input cheaply before any heavy work, and report every problem at once.

Before the task builds CLIP or encodes a feature, `preflight(cfg)` checks what it can without them:
the config values (the method's own checks, `ClassifierModule.config_problems` and its overrides; the
datamodule's and the noise protocol's constructors; the epochs), the dataset (its reader on the data
root: missing files, malformed index files, classes without images naming their folder) and the
weights (`clip.factory.weights_problem`: the file, folder or tag, offline also the download cache).
One problem raises that problem's own error (a `UserError`); several raise one `PreflightError`
listing them all, so a user fixes everything in one go instead of one problem per run.
"""
from __future__ import annotations

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from noisy_prompt.errors import ConfigError, PreflightError, UserError


def config_problems(cfg: DictConfig) -> list[tuple[str, BaseException]]:
    from noisy_prompt.config import ctor_kwargs
    from noisy_prompt.build import build_datamodule, check_backbone, max_epochs_of

    out: list[tuple[str, BaseException]] = []

    def attempt(kind: str, fn) -> object:
        try:
            return fn()
        except (UserError, ValueError, TypeError, KeyError) as err:  # constructors' argument checks
            out.append((kind, err if isinstance(err, UserError) else ConfigError(str(err))))
            return None

    max_epochs = attempt("config", lambda: max_epochs_of(cfg))
    attempt("config", lambda: check_backbone(cfg))
    attempt("config", lambda: instantiate(cfg.noise))  # a NoiseSpec checks its protocol and rate
    attempt("config", lambda: build_datamodule(cfg))  # cheap: the constructor reads nothing
    model = ctor_kwargs(cfg, "model")
    method = get_class(model.pop("_target_"))
    model["max_epochs"] = max_epochs if max_epochs is not None else model.get("max_epochs")
    for text in getattr(method, "config_problems", lambda _: [])(model):
        out.append(("config", ConfigError(text)))
    batch = cfg.model.get("batch_size")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        out.append(("config", ConfigError(f"model.batch_size={batch!r}: expected an integer >= 1")))
    return out


def dataset_problems(cfg: DictConfig) -> list[tuple[str, BaseException]]:
    """The reader on the data root, and a class without images in train or test (naming its folder)."""
    from noisy_prompt.data.base import EmptyClassError
    from noisy_prompt.data.readers import read_dataset

    data = cfg.data
    kwargs = data.get("reader_kwargs")
    kwargs = OmegaConf.to_container(kwargs, resolve=True) if kwargs is not None else {}
    try:
        splits = read_dataset(str(data.get("reader") or data.name), data.get("data_dir"), **kwargs).named(str(data.name))
    except (UserError, ValueError, OSError) as err:  # the readers' messages name the file and the entry
        return [("dataset", err)]
    out: list[tuple[str, BaseException]] = []
    for split in (splits.train, splits.test):
        try:
            split.check_classes()
        except EmptyClassError as err:
            out.append(("dataset", err))
    return out


def weights_problems(cfg: DictConfig) -> list[tuple[str, BaseException]]:
    from noisy_prompt.clip.factory import weights_problem

    problem = weights_problem(**OmegaConf.to_container(cfg.backbone, resolve=True))
    return [] if problem is None else [("weights", problem)]


def preflight(cfg: DictConfig) -> None:
    """Raise the one problem found (its own UserError type) or a PreflightError listing all of them."""
    problems = config_problems(cfg) + dataset_problems(cfg) + weights_problems(cfg)
    if len(problems) == 1:
        raise problems[0][1]
    if problems:
        raise PreflightError([(kind, str(err)) for kind, err in problems])
