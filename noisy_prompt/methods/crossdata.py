"""Cross-dataset evaluation (DP-SEP Table 3): a prompt learned on one dataset, tested on another's classes.

The positive context `ctx` of a finished source cell (e.g. DP-SEP on noisy ImageNet) is copied into a
CoOp prompt learner built for the *target* dataset's class names. Only `ctx` transfers, because CoOp,
PTNL and DP-SEP all predict with the positive prompt. Nothing trains (`trains = False`), so the task
wrapper evaluates it with `trainer.test` alone.
"""
from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any, Mapping

import torch

from noisy_prompt.cell import CELL_KEYS, CellId, CellKey
from noisy_prompt.methods.coop import CoOp

log = logging.getLogger(__name__)

# model.source names a cell (noisy_prompt.cell) trained in-domain, plus the log dir it lives under.
SOURCE_FIELDS = tuple(k for k in CELL_KEYS if k != "train_data") + ("seed", "sweep", "log_dir")


class SourceCheckpointError(RuntimeError):
    """The source cell's checkpoint is missing or does not hold a prompt context."""


def source_cell(source: Mapping[str, Any]) -> CellId:
    """The source cell: the preset of its keys (no settings), trained where it is evaluated (train_data = data)."""
    s = source
    key = CellKey(model=str(s["model"]), data=str(s["data"]), noise=str(s["noise"]), backbone=str(s["backbone"]),
                  train_data=str(s["data"]))
    return CellId(key=key, seed=int(s["seed"]), sweep=str(s["sweep"]))


def source_run_dir(source: Mapping[str, Any]) -> Path:
    """The source cell's run dir, by the cell contract's one layout."""
    return source_cell(source).run_dir(source["log_dir"])


def source_checkpoint_path(source: Mapping[str, Any]) -> Path:
    return source_run_dir(source) / "checkpoints" / "last.ckpt"


def source_run_command(source: Mapping[str, Any]) -> str:
    """The command that trains the source cell (and so writes its checkpoint)."""
    s = source
    args = ["python", "-m", "noisy_prompt.run", f"sweep={s['sweep']}", f"model={s['model']}", f"data={s['data']}",
            f"noise={s['noise']}", f"backbone={s['backbone']}", f"seed={int(s['seed'])}",
            f"paths.log_dir={s['log_dir']}"]
    return shlex.join(args)


def validate_source(source: Mapping[str, Any]) -> dict[str, Any]:
    missing = [k for k in SOURCE_FIELDS if source.get(k) in (None, "")]
    if missing:
        raise ValueError(f"model.source lacks {missing}; expected keys {list(SOURCE_FIELDS)} (conf/model/crossdata_eval.yaml)")
    if source["model"] == "crossdata_eval":
        raise ValueError("model=crossdata_eval needs the source method: set model.name=<ptnl|dpsep|coop|...> "
                         "(it names the row in results.json and, via model.source.model, the checkpoint to load)")
    return dict(source)


def load_source_context(path: str | Path, command: str | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """(ctx, checkpoint) from a Lightning checkpoint of a CoOp-family cell; clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        hint = f"\nTrain the source cell first:\n  {command}" if command else ""
        raise SourceCheckpointError(f"source checkpoint not found: {path}{hint}")
    # Our checkpoints hold only trainable tensors and plain values, so the safe loader suffices.
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "ctx" not in state:
        keys = sorted(state) if isinstance(state, dict) else []
        raise SourceCheckpointError(
            f"source checkpoint {path} has no prompt context 'state_dict.ctx' (state_dict keys: {keys}); "
            "the source must be a CoOp-family cell (coop, ptnl, dpsep and its ablations)")
    ctx = state["ctx"]
    if not isinstance(ctx, torch.Tensor) or ctx.ndim != 2:
        raise SourceCheckpointError(f"source checkpoint {path}: 'ctx' must be a (n_ctx, width) tensor, "
                                    f"got {getattr(ctx, 'shape', type(ctx).__name__)}")
    return ctx.detach().float(), ckpt


class CrossDataEval(CoOp):
    trains = False

    def __init__(self, source: Mapping[str, Any], n_ctx: int = 16, ctx_init: str | None = None, **kwargs):
        src = validate_source(source)
        path = source_checkpoint_path(src)
        # Loaded before CLIP is built: a missing source fails in milliseconds, naming the command to run.
        ctx, ckpt = load_source_context(path, source_run_command(src))
        if int(n_ctx) != ctx.shape[0]:
            log.warning("model.n_ctx=%s but the source context has %d tokens; using the source's", n_ctx, ctx.shape[0])
        super().__init__(n_ctx=ctx.shape[0], ctx_init=None, **kwargs)
        if ctx.shape[1] != self.prompt_encoder.width:
            raise ValueError(f"source context {path} has width {ctx.shape[1]} but backbone "
                             f"{self.clip_identity} has text width {self.prompt_encoder.width}")
        if ckpt.get("clip_identity") not in (None, self.clip_identity):
            log.warning("source checkpoint %s was trained on CLIP %r, evaluating with %r",
                        path, ckpt.get("clip_identity"), self.clip_identity)
        with torch.no_grad():
            self.ctx.copy_(ctx)
        self.ctx.requires_grad_(False)
        self.source_checkpoint = str(path)

    def predictor_init(self) -> tuple[str, dict[str, Any]]:
        # A CoOp learner with the transferred context: predicting never needs the source cell again.
        _, kwargs = super().predictor_init()
        kwargs.pop("source", None)
        kwargs.update(n_ctx=int(self.ctx.shape[0]), ctx_init=None)
        return f"{CoOp.__module__}.{CoOp.__qualname__}", kwargs

    def predictor_state_names(self) -> set[str]:
        return super().predictor_state_names() | {"ctx"}  # frozen here, so not among the trainable state
