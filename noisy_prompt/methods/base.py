"""What every method shares: the frozen CLIP it builds itself, metrics, optimiser, checkpoints."""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from noisy_prompt.clip.factory import create_clip, freeze
from noisy_prompt.methods.schedules import warmup_cosine_factor


def _test_metrics(num_classes: int) -> MetricCollection:
    metrics = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "per_class": MulticlassAccuracy(num_classes, average="none"),
        "confusion": MulticlassConfusionMatrix(num_classes),
    }
    if num_classes >= 5:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics)


class ClassifierModule(L.LightningModule):
    """Base class. Subclasses implement `logits(x)` and, if they train, `training_step`.

    Checkpoints hold only trainable state (`trainable_state_names`), because the frozen CLIP weights are
    reloaded from the backbone config; `strict_loading=False` lets those frozen keys be absent.
    """

    def __init__(self, backbone: dict, classnames: list[str], templates: list[str] | None = None,
                 test_sets: list[str] | None = None, input: str = "features", optim: dict | None = None,
                 max_epochs: int = 1, seed: int = 1):
        super().__init__()
        self.save_hyperparameters()
        self.strict_loading = False
        self.classnames = list(classnames)
        self.num_classes = len(self.classnames)
        self.templates = list(templates or ["a photo of a {}."])
        self.test_set_names = list(test_sets or ["test"])
        self.input = input
        self.optim = dict(optim or {})
        self.max_epochs = int(max_epochs)
        self.seed = int(seed)
        bundle = create_clip(**backbone)
        self.clip = freeze(bundle.model)
        self.tokenizer = bundle.tokenizer
        self.clip_identity = bundle.identity
        self.val_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.test_metrics = nn.ModuleDict({name: _test_metrics(self.num_classes) for name in self.test_set_names})
        self.test_report: dict[str, dict[str, Any]] = {}
        self.val_history: list[float] = []
        self.history: dict[str, list[float]] = {}  # per-epoch means of train/* metrics, for the curves figure

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
        self.test_metrics[name].update(self.logits(batch["x"]), batch["label"])

    def on_test_epoch_end(self) -> None:
        for name, metrics in self.test_metrics.items():
            values = metrics.compute()
            report = {"acc": float(values["acc"]) * 100, "per_class": (values["per_class"] * 100).tolist(),
                      "confusion": values["confusion"].tolist()}
            if "acc_top5" in values:
                report["acc_top5"] = float(values["acc_top5"]) * 100
            self.test_report[name] = report
            self.log(f"{name}/acc", report["acc"], sync_dist=False)
            if "acc_top5" in report:
                self.log(f"{name}/acc_top5", report["acc_top5"], sync_dist=False)
            metrics.reset()

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
        o = self.optim
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
        E = self.max_epochs
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: warmup_cosine_factor(e, E, lr, warm, warm_lr))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def trainable_state_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self.trainable_state_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["clip_identity"] = self.clip_identity
