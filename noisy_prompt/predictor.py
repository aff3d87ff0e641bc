"""The predictor file of a run (`predictor.pt` in its run dir): what classifying new images needs.

Saved by rank 0 at the end of testing (`ClassifierModule.save_predictor`, the task sets the path), so
every method writes one: zero-shot CLIP, the prompt learners (their learned contexts), the fine-tuning
methods (the vision tower and head), each with its own buffers such as text anchors. The file holds
plain values and tensors only and loads with `torch.load(weights_only=True)`:

    format        "noisy_prompt.predictor/1"
    target, init  the classifier's class path and constructor arguments (backbone config, class names,
                  templates, the method's hyperparameters)
    state, extra  the tensors prediction needs (ClassifierModule.predictor_state_names) and the method's
                  extra checkpoint state (e.g. DeFT's phase)
    classnames, input, preprocess (image size, mean, std: the run's evaluation transform), clip_identity
    meta          the run's facts: weights_digest (checked against the backbone found at prediction time),
                  feature_dtype (how the run's feature cache stored the frozen features), transform, cell

The frozen CLIP weights are not stored: they are rebuilt from the backbone config, and the weights
digest makes sure they are the ones the run used.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch

from noisy_prompt.methods.base import PREDICTOR_FILE, PREDICTOR_FORMAT


class PredictorError(RuntimeError):
    """A run dir has no usable predictor file; the message says why and what to do."""


def _rerun_hint(run_dir: Path) -> str:
    results = run_dir / "results.json"
    cell = ""
    if results.is_file():
        try:
            record = json.loads(results.read_text(encoding="utf-8"))
            c = record.get("cell") or {}
            keys = [f"{k}={c[k]}" for k in ("model", "data", "noise", "backbone", "seed") if c.get(k) is not None]
            cell = " ".join(keys)
        except (OSError, ValueError):
            pass
    command = f"python -m noisy_prompt.run {cell or '<the same overrides>'} <your other overrides> force=true"
    return f"Rerun the cell with this version of noisy_prompt to write it:\n  {command}"


def predictor_file(run_dir: str | Path) -> Path:
    """The predictor file of `run_dir` (or `run_dir` itself when it is the file); a clear error otherwise."""
    path = Path(run_dir).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise PredictorError(f"run dir not found: {path}")
    file = path / PREDICTOR_FILE
    if file.is_file():
        return file
    if (path / "results.json").is_file():
        raise PredictorError(
            f"{path} is a finished run but has no {PREDICTOR_FILE}: it was made by a version of noisy_prompt "
            f"that did not save predictors. " + _rerun_hint(path))
    if (path / "failed.json").is_file() or (path / "checkpoints").is_dir():
        raise PredictorError(f"{path} has no {PREDICTOR_FILE}: the run did not finish (see failed.json, or "
                             "resume it by running the same command again); the predictor is saved after testing.")
    raise PredictorError(f"{path} is not a run dir (no {PREDICTOR_FILE}, no results.json): give the folder a run "
                         "wrote (its path is printed at the end of `python -m noisy_prompt.run`, under paths.log_dir)")


def read_payload(path: str | Path) -> dict[str, Any]:
    """The predictor file's content, read with the safe loader (plain values and tensors only)."""
    file = predictor_file(path)
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise PredictorError(f"{file} cannot be read as a predictor file ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or payload.get("format") != PREDICTOR_FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise PredictorError(f"{file}: not a predictor file of this version (format {got!r}, expected "
                             f"{PREDICTOR_FORMAT!r}). " + _rerun_hint(file.parent))
    return payload


def _class(target: str):
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def load_predictor(path: str | Path, device: str | torch.device = "cpu"):
    """(classifier in eval mode on `device`, payload). Rebuilds the run's CLIP from its backbone config and
    refuses other weights than the run's (weights digest)."""
    from noisy_prompt.clip.factory import create_clip, weights_digest

    payload = read_payload(path)
    init = dict(payload["init"])
    backbone = dict(init.get("backbone") or {})
    want = (payload.get("meta") or {}).get("weights_digest")
    if want is not None:
        have = weights_digest(str(backbone.get("model")), backbone.get("pretrained"))
        if have != want:
            raise PredictorError(
                f"the backbone weights found now ({backbone.get('model')}, pretrained={backbone.get('pretrained')}: "
                f"digest {have}) are not the ones the run used (digest {want}); predictions would be wrong. "
                "Restore the run's weights or retrain.")
    bundle = create_clip(**backbone)
    module = _class(payload["target"])(**init, clip_bundle=bundle)
    module.load_predictor_state(payload)
    module.eval()
    return module.to(device), payload


def eval_transform(payload: dict[str, Any]):
    """The run's evaluation transform (resize, centre crop, normalise), from the predictor file."""
    from noisy_prompt.data.transforms import test_transform

    pp = payload["preprocess"]
    return test_transform(int(pp["image_size"]), tuple(pp["mean"]), tuple(pp["std"]))
