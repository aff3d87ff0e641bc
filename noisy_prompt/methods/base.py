"""What every method shares: the frozen CLIP it builds itself, metrics, optimiser, checkpoints."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from noisy_prompt.clip.factory import ClipBundle, create_clip, freeze
from noisy_prompt.methods.schedules import warmup_cosine_factor


def _first_occurrence(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(index, stable=True)
    sorted_idx = index[order]
    keep = torch.ones_like(sorted_idx, dtype=torch.bool)
    keep[1:] = sorted_idx[1:] != sorted_idx[:-1]
    return sorted_idx[keep], order[keep]


def classification_report(topk: torch.Tensor, label: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Top-1/top-5 accuracy, per-class accuracy and confusion matrix (rows = true class), in percent."""
    pred = topk[:, 0]
    confusion = torch.bincount(label * num_classes + pred, minlength=num_classes ** 2).view(num_classes, num_classes)
    support = confusion.sum(1)
    per_class = torch.where(support > 0, confusion.diag() / support.clamp(min=1), torch.zeros(()))
    report = {"acc": float((pred == label).float().mean()) * 100, "per_class": (per_class * 100).tolist(),
              "confusion": confusion.tolist(), "num_items": int(len(label))}
    if num_classes >= 5:
        report["acc_top5"] = float((topk[:, :5] == label[:, None]).any(1).float().mean()) * 100
    return report


def build_optimizer(params, optim: dict, max_epochs: int):
    """The methods' optimiser and per-epoch LR schedule from a `model.optim` dict (SGD or AdamW, constant
    warm-up then cosine); also used by analysis commands that train a head outside Lightning."""
    o = optim
    lr = float(o.get("lr", 0.002))
    name = o.get("name", "sgd")
    if name == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=float(o.get("momentum", 0.9)),
                              weight_decay=float(o.get("weight_decay", 5e-4)))
    elif name == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=float(o.get("weight_decay", 0.0)))
    else:
        raise ValueError(f"model.optim.name must be 'sgd' or 'adamw', got {name!r}")
    warm, warm_lr = int(o.get("warmup_epochs", 0)), float(o.get("warmup_lr", 1e-5))
    E = int(max_epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: warmup_cosine_factor(e, E, lr, warm, warm_lr))
    return opt, sched


REPORT_FILE = "module_report.json"


class ClassifierModule(L.LightningModule):
    """Base class. Subclasses implement `logits(x)` and, if they train, `training_step`.

    `REPORT_ATTRS` are written by rank 0 to `<default_root_dir>/module_report.json` after testing, so the
    process that writes results.json sees them even when the ranks ran in spawned processes (ddp_spawn).

    Checkpoints hold only trainable state (`trainable_state_names`), because the frozen CLIP weights are
    reloaded from the backbone config; `strict_loading=False` lets those frozen keys be absent.
    """

    REPORT_ATTRS = ("test_report", "val_history", "history")
    # Whether the task calls `trainer.fit` before testing; zero-shot / eval-only modules set False.
    trains: bool = True

    def __init__(self, backbone: dict, classnames: list[str], templates: list[str] | None = None,
                 test_sets: list[str] | None = None, input: str = "features", optim: dict | None = None,
                 max_epochs: int = 1, seed: int = 1, class_descriptions: dict[str, list[str]] | None = None,
                 clip_bundle: ClipBundle | None = None):
        super().__init__()
        # The prebuilt CLIP (handed over by the task so a run loads its weights once) and the dataset's
        # descriptions are objects, not hyperparameters: checkpoints keep primitives only.
        self.save_hyperparameters(ignore=["clip_bundle", "class_descriptions"])
        self.strict_loading = False
        self.classnames = list(classnames)
        self.num_classes = len(self.classnames)
        self.templates = list(templates or ["a photo of a {}."])
        self.test_set_names = list(test_sets or ["test"])
        self.input = input
        self.optim = dict(optim or {})
        self.max_epochs = int(max_epochs)
        self.seed = int(seed)
        # Class name -> description sentences, when the dataset publishes them (None otherwise).
        self.class_descriptions = dict(class_descriptions) if class_descriptions else None
        bundle = clip_bundle if clip_bundle is not None else create_clip(**backbone)
        self.clip = freeze(bundle.model)
        self.tokenizer = bundle.tokenizer
        self.clip_identity = bundle.identity
        self.val_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.test_report: dict[str, dict[str, Any]] = {}
        self.val_history: list[float] = []
        self.history: dict[str, list[float]] = {}
        self.report_path: str | None = None  # set by the task wrapper: where rank 0 leaves REPORT_ATTRS  # per-epoch means of train/* metrics, for the curves figure

    def train(self, mode: bool = True):
        # Frozen parts stay in eval mode (RN50's BatchNorm statistics must not drift); a part with
        # trainable parameters (TANGO's vision tower) follows `mode`.
        super().train(mode)
        for child in self.clip.children():
            if not any(p.requires_grad for p in child.parameters()):
                child.eval()
        return self

    # ---- features ---------------------------------------------------------------------------------
    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.detach().exp()

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        feats = x if self.input == "features" else self.clip.visual(x)
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def template_text_features(self, classnames: list[str] | None = None, templates: list[str] | None = None) -> torch.Tensor:
        """Zero-shot class embeddings: normalised mean over templates of normalised text features."""
        names = [c.replace("_", " ") for c in (classnames or self.classnames)]
        out = []
        for name in names:
            tokens = self.tokenizer([t.format(name) for t in (templates or self.templates)]).to(self.device)
            emb = F.normalize(self.clip.encode_text(tokens).float(), dim=-1).mean(0)
            out.append(F.normalize(emb, dim=-1))
        return torch.stack(out)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ---- evaluation -------------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.val_acc.update(self.logits(batch["x"]), batch["label"])
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.val_history.append(float(self.trainer.callback_metrics.get("val/acc", float("nan"))) * 100)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self.test_set_names[dataloader_idx]
        logits = self.logits(batch["x"]).float()
        k = min(5, self.num_classes)
        self._test_buffer.setdefault(name, []).append(
            (batch["index"].cpu(), logits.topk(k, dim=-1).indices.cpu(), batch["label"].cpu()))

    def on_test_epoch_start(self) -> None:
        self._test_buffer: dict[str, list] = {}

    def _gather_exact(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(top-k predictions, labels) of every test item exactly once: gathered from all ranks and
        de-duplicated by dataset index, so DistributedSampler padding can never count an item twice and
        the number in a table equals the single-process number."""
        parts = self._test_buffer.get(name, [])
        local = [torch.cat([p[i] for p in parts]) for i in range(3)] if parts else None
        if torch.distributed.is_available() and torch.distributed.is_initialized() and self.trainer.world_size > 1:
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, local)
            gathered = [g for g in gathered if g is not None]
        else:
            gathered = [local] if local is not None else []
        if not gathered:
            return None
        index, topk, label = (torch.cat([g[i] for g in gathered]) for i in range(3))
        _, first = _first_occurrence(index)
        return topk[first], label[first]

    def on_test_epoch_end(self) -> None:
        for name in self.test_set_names:
            exact = self._gather_exact(name)
            if exact is None:
                continue
            self.test_report[name] = classification_report(*exact, self.num_classes)
            self.log(f"{name}/acc", self.test_report[name]["acc"], sync_dist=False, rank_zero_only=True)
        if self.trainer.is_global_zero and self.report_path is not None:
            self.save_report(Path(self.report_path))
            # Inside the rank-0 worker, where method state (e.g. TANGO's purification) lives, also when
            # the ranks were spawned processes whose module objects never return to the task.
            self.write_artifacts(Path(self.report_path).parent)

    # ---- hooks the task calls (declared here, so the task never probes with getattr) ----------------
    def extra_metrics(self) -> dict[str, float]:
        """Method-specific numbers merged into results.json["metrics"] (aggregatable as table metrics)."""
        return {}

    def extra_results(self) -> dict[str, Any]:
        """Method-specific records merged at the top level of results.json (e.g. TANGO's purification)."""
        return {}

    def write_artifacts(self, run_dir: Path) -> None:
        """Extra files in the run dir, written by rank 0 inside the worker after testing."""

    def save_report(self, path: Path) -> None:
        from noisy_prompt.cell import write_json

        write_json(path, {k: getattr(self, k) for k in self.REPORT_ATTRS})  # atomic

    def load_report(self, path: Path) -> None:
        for key, value in json.loads(Path(path).read_text()).items():
            setattr(self, key, value)

    # ---- training plumbing ------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)

    def on_train_epoch_end(self) -> None:
        for key, value in self.trainer.callback_metrics.items():
            if key.startswith("train/"):
                self.history.setdefault(key, []).append(float(value))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        params = self.trainable_parameters()
        if not params:
            return None
        opt, sched = build_optimizer(params, self.optim, self.max_epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def trainable_state_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self.trainable_state_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["clip_identity"] = self.clip_identity
