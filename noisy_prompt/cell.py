"""The cell contract: what one run is, where it lives, and the records it leaves.

A *cell* is one table entry for one seed: the cell keys (`CELL_KEYS`: model, data, noise, backbone,
train_data), the seed, the sweep name, and its *settings*: every command-line override that is not a
cell key and not a path/logging/hardware switch (`model.lam=0.2`, `trainer.max_epochs=10`,
`data.shots=8`). Settings are part of the identity, so a run with other hyperparameters never lands
in (or is skipped because of) the dir of the preset:

    <log_dir>/<sweep>/<model>/<data>/<noise>/<backbone>/seed<k>                      (no settings)
    <log_dir>/<sweep>/<model>/<data>/<noise>/<backbone>/seed<k>__<k=v,...>__<hash8>  (with settings)

The readable middle part (last key components, e.g. `lr=0.5`) is cut at `TAG_CHARS` characters; the
hash (of the full sorted keys and values) keeps dirs distinct. A finished cell (results.json) is reused only when its stored config hash equals the
new run's: a changed preset (an edited yaml) stops with `StaleCellError` naming the keys that differ.

This module is the only writer and reader of results.json and failed.json, and owns the per-cell lock.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from noisy_prompt.atomic import replacing
from noisy_prompt.errors import UserError


RESULTS = "results.json"
FAILED = "failed.json"
LOCK = ".lock"
CELL_KEYS: tuple[str, ...] = ("model", "data", "noise", "backbone", "train_data")

# Overrides that name the cell itself (group choices or the names the keys are read from).
_CELL_OVERRIDES = {"model", "data", "noise", "backbone", "seed", "sweep", "train_data",
                   "model.name", "data.name", "noise.name", "backbone.name"}
# THE list of keys that change where/how a run is stored, logged or placed on hardware, not its numbers
# (dotted paths of the composed config; a group name covers the whole group). Both sides of a run's
# identity read it: such an override is never a run-dir setting (`parse_settings`), and the keys under
# the result nodes (model, data, noise, backbone) are dropped from the config hash (`config.result_config`).
# Everything else counts as a setting (when unsure, a new dir is the safe side: never a stale number).
# tests/test_cell_keys.py checks that each key exists in a composed config.
NON_RESULT_KEYS: frozenset[str] = frozenset({
    "cell", "run_dir", "force", "figures", "lock_wait_s", "allow_synthetic_backbone",
    "trainer", "logger", "callbacks", "paths", "hydra",  # the groups themselves (logger=none, trainer=gpu, ...)
    "data.num_workers", "data.cache_dir", "data.cache_images", "data.cache_images_mb", "data.data_dir",
    "data.eval_batch_size",
    "trainer.accelerator", "trainer.devices", "trainer.strategy", "trainer.num_nodes",
    "trainer.log_every_n_steps", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.num_sanity_val_steps", "trainer.sync_batchnorm",
    "model.block_size", "model.anchors.encode_batch_size",
})
NON_RESULT_PREFIXES: tuple[str, ...] = ("paths.", "logger.", "callbacks.", "hydra.")
# The one key that is out of the hash but still a setting: where crossdata_eval reads its source cell's
# prompts. It defaults to ${paths.log_dir}, so hashing it would give the same cell another hash on every
# machine (and change the hash of every existing record); but the prompts found there decide the result
# and no digest covers them, so a run pointed elsewhere gets its own dir rather than reusing this one's.
HASH_ONLY_NON_RESULT_KEYS: frozenset[str] = frozenset({"model.source.log_dir"})
TAG_CHARS = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+\-]")


class StaleCellError(UserError, RuntimeError):
    """The cell dir holds a result made with a different configuration than this run's."""


class CellLockedError(UserError, RuntimeError):
    """Another process holds the cell's lock."""


# --------------------------------------------------------------------------------------------------
# Settings: the non-cell-key overrides


def _parse_override(text: str) -> tuple[str, str] | None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (o,) = OverridesParser.create().parse_overrides([text])
    key = o.key_or_group
    if o.is_delete():
        return key, "~"
    value = o.value()
    return key, value if isinstance(value, str) else json.dumps(value, default=str)


def is_setting(key: str) -> bool:
    key = key.split("@", 1)[0]
    if key.startswith("hydra/"):  # hydra/launcher=slurm and friends: where jobs run, not what they compute
        return False
    return not (key in _CELL_OVERRIDES or key in NON_RESULT_KEYS or key.startswith(NON_RESULT_PREFIXES))


def parse_settings(overrides: Sequence[str]) -> dict[str, str]:
    """{key: value text} of the result-determining overrides among Hydra command-line overrides."""
    out: dict[str, str] = {}
    for text in overrides:
        parsed = _parse_override(str(text))
        if parsed is not None and is_setting(parsed[0]):
            out[parsed[0]] = parsed[1]
    return dict(sorted(out.items()))


def task_overrides(cfg: Any = None) -> list[str]:
    """The job's command-line overrides: from the composed config's `hydra` node when it has one (a
    compose with return_hydra_config, or Hydra resolving the run dir), else from the running Hydra job."""
    from omegaconf import OmegaConf

    if cfg is not None:
        node = OmegaConf.select(cfg, "hydra.overrides.task", default=None)
        if node is not None:
            return [str(x) for x in node]
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return [str(x) for x in HydraConfig.get().overrides.task]
    return []


def settings_hash(settings: Mapping[str, str]) -> str:
    text = "\n".join(f"{k}={v}" for k, v in sorted(settings.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def settings_tag(settings: Mapping[str, str]) -> str:
    """'' for the preset, else `__<readable k=v list>__<hash8>` (appended to `seed<k>`).

    The readable part names each setting by the last component of its key (`model.optim.lr=0.5` ->
    `lr=0.5`) to stay short; the hash covers the full keys and values, and results.json has them."""
    if not settings:
        return ""
    readable = _UNSAFE.sub("_", ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in sorted(settings.items())))
    if len(readable) > TAG_CHARS:
        readable = readable[:TAG_CHARS] + "..."
    return f"__{readable}__{settings_hash(settings)}"


def resolve_settings_tag(*, _root_: Any) -> str:
    """OmegaConf resolver `np_settings_tag` used by run_dir / hydra.sweep.subdir in conf/run.yaml."""
    return settings_tag(parse_settings(task_overrides(_root_)))


# --------------------------------------------------------------------------------------------------
# Identity


@dataclass(frozen=True)
class CellKey:
    """A table cell: the cell keys plus the settings (no seed, no sweep)."""

    model: str
    data: str
    noise: str
    backbone: str | None
    train_data: str
    settings: tuple[tuple[str, str], ...] = ()

    def matches(self, filt: Mapping[str, str]) -> bool:
        for k, v in filt.items():
            if k in CELL_KEYS:
                if getattr(self, k) != v:
                    return False
            elif self.setting(k) != str(v):
                return False
        # In-domain unless the filter asks for a training set: keeps cross-dataset runs out of
        # tables that evaluate where they train.
        return "train_data" in filt or self.train_data == self.data

    def setting(self, key: str) -> str | None:
        return dict(self.settings).get(key)

    def without(self, key: str) -> "CellKey":
        return CellKey(self.model, self.data, self.noise, self.backbone, self.train_data,
                       tuple((k, v) for k, v in self.settings if k != key))

    def sort_key(self) -> tuple:
        return (self.model, self.data, self.noise, self.backbone or "", self.train_data, self.settings)

    def settings_label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.settings)

    def label(self) -> str:
        text = f"{self.model}/{self.data}/{self.noise}/{self.backbone}"
        if self.train_data != self.data:
            text += f" (trained on {self.train_data})"
        return text + (f" [{self.settings_label()}]" if self.settings else "")


@dataclass(frozen=True)
class CellId:
    key: CellKey
    seed: int
    sweep: str = "adhoc"

    @classmethod
    def from_config(cls, cfg: Any) -> "CellId":
        settings = parse_settings(task_overrides(cfg))
        key = CellKey(model=str(cfg.model.name), data=str(cfg.data.name), noise=str(cfg.noise.name),
                      backbone=str(cfg.backbone.name), train_data=str(cfg.get("train_data") or cfg.data.name),
                      settings=tuple(settings.items()))
        return cls(key=key, seed=int(cfg.seed), sweep=str(cfg.get("sweep", "adhoc")))

    @classmethod
    def from_record(cls, cell: Mapping[str, Any], where: str = "cell") -> "CellId":
        if not isinstance(cell, Mapping):
            raise ValueError(f"{where}: missing 'cell' object (expected keys {', '.join(CELL_KEYS)}, seed)")
        missing = [k for k in ("model", "data", "noise", "seed") if cell.get(k) in (None, "")]
        if missing:
            raise ValueError(f"{where}: cell lacks {missing}; got {dict(cell)}")
        try:
            seed = int(cell["seed"])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: cell.seed {cell['seed']!r} is not an integer") from None
        settings = cell.get("settings") or {}
        if not isinstance(settings, Mapping):
            raise ValueError(f"{where}: cell.settings must be an object, got {settings!r}")
        data = str(cell["data"])
        key = CellKey(model=str(cell["model"]), data=data, noise=str(cell["noise"]),
                      backbone=None if cell.get("backbone") in (None, "") else str(cell["backbone"]),
                      train_data=str(cell.get("train_data") or data),
                      settings=tuple(sorted((str(k), str(v)) for k, v in settings.items())))
        return cls(key=key, seed=seed, sweep=str(cell.get("sweep") or "adhoc"))

    def to_record(self) -> dict[str, Any]:
        k = self.key
        return {"model": k.model, "data": k.data, "noise": k.noise, "backbone": k.backbone, "seed": self.seed,
                "train_data": k.train_data, "sweep": self.sweep, "settings": dict(k.settings)}

    def run_dir(self, log_dir: str | Path) -> Path:
        k = self.key
        return run_dir(log_dir, self.sweep, f"{k.model}/{k.data}/{k.noise}/{k.backbone}", self.seed, dict(k.settings))


def run_dir(log_dir: str | Path, sweep: str, cell_path: str, seed: int, settings: Mapping[str, str] = {}) -> Path:
    """The one run-dir layout (conf/run.yaml's `run_dir` composes the same path)."""
    return Path(str(log_dir)) / str(sweep) / str(cell_path) / f"seed{int(seed)}{settings_tag(settings)}"


# --------------------------------------------------------------------------------------------------
# Records


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Atomic: a reader sees the old file or the whole new one, never a half-written record."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(payload, indent=2, default=float))
        fh.flush()
        os.fsync(fh.fileno())


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Record:
    path: Path
    cell: CellId
    ok: bool
    metrics: Mapping[str, Any]
    error: str | None = None
    config_hash: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> CellKey:
        return self.cell.key

    @property
    def seed(self) -> int:
        return self.cell.seed


def read_record(path: str | Path) -> Record:
    """One results.json/failed.json; ValueError names the file and what is wrong."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read JSON ({err})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(payload).__name__}")
    status = payload.get("status", "ok" if path.name == RESULTS else "failed")
    if status not in ("ok", "failed"):
        raise ValueError(f"{path}: status {status!r}; expected 'ok' or 'failed'")
    cell = CellId.from_record(payload.get("cell"), str(path))
    metrics = payload.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: 'metrics' must be an object, got {type(metrics).__name__}")
    ok = status == "ok"
    return Record(path=path, cell=cell, ok=ok, metrics=metrics if ok else {},
                  error=None if ok else str(payload.get("error", "")), config_hash=payload.get("config_hash"),
                  config=payload.get("config") or {})


def first_line(text: str | None) -> str:
    """The first line of an error message (the rest is its detail), for one-line summaries."""
    lines = str(text or "").strip().splitlines()
    return lines[0] if lines else "no error message"


def error_line(failed_json: Path) -> str:
    """The first line of the error a failed.json records."""
    try:
        payload = json.loads(Path(failed_json).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        return f"unreadable {Path(failed_json).name}: {err}"
    return first_line(payload.get("error"))


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 8) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
    lines = [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys[:limit]]
    if len(keys) > limit:
        lines.append(f"... and {len(keys) - limit} more")
    return lines


# What each digest of a run's record names, for the messages (session.CellSession fills them).
DIGEST_WHAT = {
    "weights_digest": ("backbone weights", "the backbone's name", "a rebuilt built-in world"),
    "data_digest": ("dataset content", "the dataset's name and reader arguments",
                    "an edited built-in world or a replaced label file"),
}


def changed_label_files(old: Mapping[str, str] | None, new: Mapping[str, str] | None) -> list[str]:
    """One line per label file whose sha256 differs between two records' `label_files` (or is in one only)."""
    old, new = dict(old or {}), dict(new or {})
    return [f"label file {k}: sha256 {old.get(k, '<absent>')} -> {new.get(k, '<absent>')}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def digest_mismatches(stored: Mapping[str, Any], digests: Mapping[str, str | None],
                      label_files: Mapping[str, str] | None = None) -> list[str]:
    """Why a record (`stored`) cannot stand for a run with `digests` (DIGEST_WHAT's keys): one line per
    digest the run has that the record lacks (made before it was recorded, so it cannot be checked) or
    holds with another value; empty when it can. A digest the run does not have (None: e.g. real data
    that publishes none) is not checked. With both sides' `label_files`, a changed one is named."""
    lines = []
    for key, now in digests.items():
        if now is None:
            continue
        what, same, example = DIGEST_WHAT[key]
        old = stored.get(key)
        if old is None:
            lines.append(f"predates {key}: it cannot be checked against this run's {what} {now}")
        elif old != now:
            files = changed_label_files(stored.get("label_files"), label_files) if key == "data_digest" else []
            lines.append(f"was made with other {what} ({key} {old}, this run {now}; {same} and the rest of "
                         f"the config are the same, e.g. {example})" + "".join(f"\n  {line}" for line in files))
    return lines


def check_digests(path: Path, stored: Mapping[str, Any], digests: Mapping[str, str | None], redo: str,
                  label_files: Mapping[str, str] | None = None) -> None:
    """Raise StaleCellError when `stored` (a record read from `path`) cannot stand for this run: made
    with other weights or dataset content than `digests`, or before a digest this run has was recorded
    (digest_mismatches). A record that cannot be checked is refused too, never reused with a warning:
    a number from unknown weights would otherwise sit beside fresh ones. `redo` says what force=true
    does there."""
    lines = digest_mismatches(stored, digests, label_files)
    if lines:
        raise StaleCellError(f"{path} " + "; it ".join(lines)
                             + f"\nRerun with force=true to {redo}, or pick another sweep=NAME to keep both.")


def finished_result(run_dir: Path, config_hash: str, config: Mapping[str, Any] | None = None,
                    weights_digest: str | None = None, data_digest: str | None = None,
                    label_files: Mapping[str, str] | None = None) -> dict | None:
    """The stored results.json when it was made by this very configuration; None when there is none.

    Raises StaleCellError when the dir holds a result of another configuration (the preset changed
    since), of other weights under the same backbone name (`weights_digest`) or of other content
    under the same dataset name (`data_digest`), and when the record predates a digest this run has
    (check_digests): never hand back a number that this configuration did not produce.
    """
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        return None
    stored = read_json(path)
    if stored.get("config_hash") == config_hash:
        check_digests(path, stored, {"weights_digest": weights_digest, "data_digest": data_digest}, "replace it",
                      label_files)
        return stored
    diff = config_diff(stored.get("config") or {}, config or {}) if config is not None else []
    raise StaleCellError(
        f"{path} holds a result of a different configuration (stored config hash "
        f"{stored.get('config_hash')}, this run {config_hash})"
        + (":\n  " + "\n  ".join(diff) if diff else "")
        + "\nRerun with force=true to replace it, or pick another sweep=NAME to keep both.")


# --------------------------------------------------------------------------------------------------
# One process per cell dir


def is_secondary_rank() -> bool:
    # Plain DDP re-runs the command for ranks > 0 in the same cell: only rank 0 takes the lock.
    return any(int(os.environ.get(v, "0") or 0) != 0 for v in ("LOCAL_RANK", "RANK", "NODE_RANK"))


@contextmanager
def cell_lock(run_dir: Path, wait_s: float = 0.0, poll_s: float = 1.0) -> Iterator[None]:
    """Exclusive lock on `<run_dir>/.lock` (flock: released by the OS even when the holder is killed).

    A second process waits up to `wait_s` seconds, then stops with CellLockedError naming the holder.
    """
    if is_secondary_rank():
        yield
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    fh = open(path, "a+")
    try:
        deadline = time.monotonic() + max(0.0, float(wait_s))
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "unknown process"
                    raise CellLockedError(
                        f"another process is running this cell ({holder}); lock {path}. Wait for it to finish "
                        "(its result is then reused), or set lock_wait_s=<seconds> to wait here.") from None
                time.sleep(poll_s)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        fh.flush()
        yield
    finally:
        fh.close()  # releases the flock
