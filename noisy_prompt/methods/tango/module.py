"""TANGO as a LightningModule (spec tango.md): the CLIP vision encoder is fine-tuned under label noise
with a text-anchored classifier (TAC) and anchor-guided purification before every epoch.

The ablation presets are configs of this module: `classifier` (tac | linear), `beta` (visual-only 0,
semantic-only 1), `trainable_anchors`, and `anchors.source` (cupl | templates | synthetic).
"""
from __future__ import annotations

import csv
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisy_prompt.losses import masked_cross_entropy, mixup, soft_cross_entropy
from noisy_prompt.methods.base import ClassifierModule

from .anchors import DEFAULT_ALIASES, load_cupl, match_descriptions, template_sentences
from .purification import purify
from .tac import class_anchor_table, tac_log_probs

log = logging.getLogger(__name__)

ANCHOR_SOURCES = ("cupl", "templates", "synthetic")
ANCHOR_KEYS = {"source", "path", "k", "encode_batch_size"}
CLASSIFIERS = ("tac", "linear")
# Below this many training images the feature pass is quick enough that a progress bar is noise.
PROGRESS_MIN_IMAGES = 5000
LABEL_ISSUE_COLUMNS = (
    "index", "given_label", "given_class", "clean_verdict", "q_score",
    "suggested_label", "suggested_class", "suggested_confidence", "true_label",
)
# purify() stat name -> name in logs, history and results.
STAT_NAMES = {
    "clean_fraction": "clean_fraction",
    "num_clean": "num_clean",
    "num_degree_zero": "num_degree_zero",
    "precision": "precision",
    "recall": "recall",
    "soft_label_accuracy": "soft_label_acc",
    "noisy_label_accuracy": "noisy_label_acc",
}


def anchor_sentences(source: str, classnames: list[str], k: int, path: str | None = None,
                     dataset: str | None = None) -> tuple[list[list[str]], list[str]]:
    """Per class, its anchor sentences, and the classes that fell back to templates.

    cupl: the description file at `path` (no path = templates for all classes, logged as fallen back);
    templates: template sentences; synthetic: the synthetic world's class descriptions.
    """
    if source == "cupl":
        descriptions = load_cupl(path) if path else None
        return match_descriptions(classnames, descriptions, k, aliases=DEFAULT_ALIASES.get(dataset or ""))
    if source == "templates":
        return [template_sentences(c, k) for c in classnames], []
    if source == "synthetic":
        from noisy_prompt.synthetic.captions import class_descriptions

        return [class_descriptions(c, k) for c in classnames], []
    raise ValueError(f"model.anchors.source must be one of {', '.join(ANCHOR_SOURCES)}, got {source!r}")


def _encode_device() -> torch.device:
    # The text tower runs once over K*C sentences (40 000 for ImageNet): on the run's GPU when there is one.
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


@dataclass
class PurifiedLabels:
    """The last purification, indexed by training-set index (tensors on the model's device)."""

    epoch: int
    given: Tensor  # (N,) long, the noisy labels the model trains on
    true: Tensor | None  # (N,) long, the clean labels where known (diagnostics only)
    clean_mask: Tensor  # (N,) bool, I_c
    soft_labels: Tensor  # (N, C) Y~
    q_given: Tensor  # (N,) q at the given label


def true_labels_known(dm: Any) -> bool:
    """Whether the datamodule's clean labels are real ground truth rather than copies of the given ones.

    Real-noise datasets without clean annotations (Animal-10N, WebVision, ...) serve the noisy labels as
    `clean_label`; precision/recall against them would be meaningless.
    """
    flag = getattr(dm, "clean_labels_known", None)
    if flag is not None:
        return bool(flag() if callable(flag) else flag)
    split = getattr(dm, "train_split", None)
    if split is not None and getattr(split, "clean_labels", None) is not None:
        return True
    noise = getattr(dm, "noise", None)
    return noise is None or getattr(noise, "protocol", "real") != "real"


def _check_args(input: str, classifier: str, trainable_anchors: bool, beta: float, k: int, m: int | None,
                block_size: int, mixup_alpha: float) -> None:
    """Config errors before the (slow) backbone is built."""
    if input != "images":
        raise ValueError(f"TANGO fine-tunes the vision encoder, so model.input must be 'images', got {input!r}")
    if classifier not in CLASSIFIERS:
        raise ValueError(f"model.classifier must be one of {', '.join(CLASSIFIERS)}, got {classifier!r}")
    if classifier == "linear" and trainable_anchors:
        # The linear head never reads the anchors: they would get no gradient (and DDP would fail on them).
        raise ValueError("model.trainable_anchors=true needs model.classifier=tac (the linear head ignores anchors)")
    if not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"model.beta must lie in [0, 1], got {beta}")
    if int(k) < 1 or int(block_size) < 1 or (m is not None and int(m) < 1):
        raise ValueError(f"model.k, model.m and model.block_size must be >= 1, got k={k}, m={m}, "
                         f"block_size={block_size}")
    if float(mixup_alpha) < 0:
        raise ValueError(f"model.mixup_alpha must be >= 0 (0 = no mixing), got {mixup_alpha}")


class Tango(ClassifierModule):
    trains = True
    # Per-epoch purification stats reach results.json also when the ranks ran in spawned processes.
    REPORT_ATTRS = (*getattr(ClassifierModule, "REPORT_ATTRS", ()), "purification_history")

    def __init__(self, anchors: dict | None = None, classifier: str = "tac", tau: float | None = None,
                 trainable_anchors: bool = False, beta: float = 0.5, k: int = 200, m: int | None = None,
                 block_size: int = 4096, mixup_alpha: float = 1.0, dataset: str | None = None, **kwargs):
        kwargs.setdefault("input", "images")
        _check_args(kwargs["input"], classifier, trainable_anchors, beta, k, m, block_size, mixup_alpha)
        super().__init__(**kwargs)
        self.classifier = classifier
        self.beta, self.knn_k, self.block_size = float(beta), int(k), int(block_size)
        self.m = None if m is None else int(m)
        self.mixup_alpha = float(mixup_alpha)
        self.tau = float(self.logit_scale) if tau is None else float(tau)
        self.trainable_anchors = bool(trainable_anchors)

        cfg = {"source": "cupl", "path": None, "k": 40, "encode_batch_size": 256, **dict(anchors or {})}
        unknown = set(cfg) - ANCHOR_KEYS
        if unknown:
            raise ValueError(f"model.anchors: unknown keys {sorted(unknown)}; expected {sorted(ANCHOR_KEYS)}")
        self.anchor_cfg = cfg
        self.anchor_sentences, self.anchor_fallback = anchor_sentences(
            cfg["source"], self.classnames, int(cfg["k"]), cfg["path"], dataset)
        if cfg["source"] == "cupl" and not cfg["path"]:
            log.info("anchors: no description file (model.anchors.path is empty): template sentences for every class")
        feats, labels = self._encode_anchors(self.anchor_sentences, int(cfg["encode_batch_size"]))
        index, mask = class_anchor_table(labels, self.num_classes)
        self.register_buffer("anchor_labels", labels, persistent=False)
        self.register_buffer("anchor_index", index, persistent=False)
        self.register_buffer("anchor_mask", mask, persistent=False)
        if self.trainable_anchors:
            self.anchors = nn.Parameter(feats)
        else:
            self.register_buffer("anchors", feats, persistent=False)

        self.head: nn.Linear | None = None
        if classifier == "linear":
            # Zero-shot start: each class weight is its anchors' mean direction, scaled by tau so the
            # initial logits equal TAC-like cosine logits rather than a near-uniform softmax.
            means = torch.zeros(self.num_classes, feats.shape[1]).index_add_(0, labels, feats)
            self.head = nn.Linear(feats.shape[1], self.num_classes)
            with torch.no_grad():
                self.head.weight.copy_(self.tau * F.normalize(means, dim=-1))
                self.head.bias.zero_()

        for p in self.clip.visual.parameters():
            p.requires_grad_(True)
        self.mix_generator = torch.Generator().manual_seed(self.seed)
        self.purified: PurifiedLabels | None = None
        self.purification_history: list[dict[str, float]] = []

    # ---- anchors --------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode_anchors(self, sentences: list[list[str]], batch_size: int) -> tuple[Tensor, Tensor]:
        flat = [s for per_class in sentences for s in per_class]
        labels = torch.tensor([c for c, per_class in enumerate(sentences) for _ in per_class], dtype=torch.long)
        device = _encode_device()
        self.clip.to(device)
        try:
            out = []
            for start in range(0, len(flat), batch_size):
                tokens = self.tokenizer(flat[start:start + batch_size]).to(device)
                out.append(F.normalize(self.clip.encode_text(tokens).float(), dim=-1).cpu())
        finally:
            self.clip.to("cpu")
        log.info("anchors: %d sentences for %d classes (source %s)", len(flat), len(sentences),
                 self.anchor_cfg["source"])
        return torch.cat(out), labels

    def current_anchors(self) -> Tensor:
        # A no-op for the frozen anchors (already unit length); keeps trainable ones on the sphere.
        return F.normalize(self.anchors.float(), dim=-1)

    # ---- prediction -----------------------------------------------------------------------------
    def logits(self, x: Tensor) -> Tensor:
        """TAC log-probabilities (or the linear head's logits) of images x."""
        v = self.image_features(x)
        if self.head is not None:
            return self.head(v)
        return tac_log_probs(v, self.current_anchors(), self.anchor_labels, self.num_classes, self.tau,
                             anchor_table=(self.anchor_index, self.anchor_mask))

    def log_probs(self, x: Tensor) -> Tensor:
        out = self.logits(x)
        return out if self.head is None else F.log_softmax(out.float(), dim=-1)

    # ---- purification ---------------------------------------------------------------------------
    @torch.no_grad()
    def extract_features(self, batches: Iterable[dict]) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised image features, given and clean labels of a whole split, placed by `index`."""
        feats, labels, clean, order = [], [], [], []
        # The trainer's precision (autocast under 16-mixed) also for this pass: it is the bulk of purification's cost.
        plugin = self.trainer.precision_plugin if self._trainer is not None else None
        with plugin.forward_context() if plugin is not None else nullcontext():
            for batch in batches:
                x = batch["x"].to(self.device, non_blocking=True)
                feats.append(self.image_features(plugin.convert_input(x) if plugin is not None else x))
                labels.append(torch.as_tensor(batch["label"]))
                clean.append(torch.as_tensor(batch["clean_label"]))
                order.append(torch.as_tensor(batch["index"]))
        index = torch.cat(order).long()
        n = index.numel()
        if n == 0 or not torch.equal(torch.sort(index).values, torch.arange(n)):
            raise ValueError(f"the training-set loader must yield each index 0..N-1 exactly once; got {n} items "
                             "with missing or repeated indices")
        out_feats = torch.empty(n, feats[0].shape[1], device=self.device)
        out_feats[index.to(self.device)] = torch.cat(feats).float()
        out_labels, out_clean = torch.empty(n, dtype=torch.long), torch.empty(n, dtype=torch.long)
        out_labels[index], out_clean[index] = torch.cat(labels).long(), torch.cat(clean).long()
        return out_feats, out_labels.to(self.device), out_clean.to(self.device)

    def purify_training_set(self, dm: Any = None) -> dict[str, float]:
        """Purification with the current weights over `dm` (default: the trainer's datamodule).

        Sets `self.purified` and returns the stats; the clean labels only feed the stats.
        """
        if dm is None:
            dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "train_eval_dataloader"):
            raise RuntimeError("TANGO purifies the whole training set before every epoch: fit it with a datamodule "
                               "that has train_eval_dataloader() (the training set, no augmentation)")
        loader = dm.train_eval_dataloader()
        n = len(loader.dataset) if hasattr(loader, "dataset") else 0
        batches: Iterable[dict] = loader
        if (self._trainer is None or self.trainer.is_global_zero) and n >= PROGRESS_MIN_IMAGES:
            from tqdm.auto import tqdm

            batches = tqdm(loader, desc=f"purify epoch {self.current_epoch + 1}: features", leave=False)
        modes = {mod: mod.training for mod in self.modules()}
        self.eval()
        try:
            feats, given, clean = self.extract_features(batches)
        finally:
            for mod, mode in modes.items():
                mod.train(mode)
        known = true_labels_known(dm)
        result = purify(feats, given, self.current_anchors().detach(), self.anchor_labels, self.num_classes,
                        beta=self.beta, k=self.knn_k, m=self.m, block_size=self.block_size,
                        clean_labels=clean if known else None)
        self.purified = PurifiedLabels(
            epoch=self.current_epoch, given=given, true=clean if known else None, clean_mask=result.clean_mask,
            soft_labels=result.soft_labels, q_given=result.q.gather(1, given[:, None]).squeeze(1))
        stats = {STAT_NAMES.get(key, key): float(value) for key, value in result.stats.items()}
        return stats

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        stats = self.purify_training_set()
        self.purification_history.append({"epoch": self.current_epoch, **stats})
        self.log_dict({f"purify/{key}": value for key, value in stats.items()}, on_step=False, on_epoch=True)
        log.info("purification epoch %d: %s", self.current_epoch + 1,
                 ", ".join(f"{key} {value:.4g}" for key, value in stats.items()))

    # ---- training -------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        if self.purified is None:
            raise RuntimeError("training_step before any purification (on_train_epoch_start did not run)")
        x, y = batch["x"], batch["label"]
        idx = batch["index"].to(self.purified.clean_mask.device).long()
        clean = self.purified.clean_mask[idx]
        x_mix, targets_mix, _, _ = mixup(x, self.purified.soft_labels[idx], self.mixup_alpha, self.mix_generator)
        # One forward over clean and mixed images: the encoder has no batch statistics to mix (ViT).
        log_p = self.log_probs(torch.cat([x, x_mix]))
        log_p_clean, log_p_mix = log_p[: len(y)], log_p[len(y):]
        l_clean = masked_cross_entropy(log_p_clean, y, clean)
        l_reg = soft_cross_entropy(log_p_mix, targets_mix.to(log_p_mix.dtype), from_log_probs=True)
        loss = l_clean + l_reg
        self.log_dict({"train/loss": loss, "train/l_clean": l_clean, "train/l_reg": l_reg,
                       "train/clean_in_batch": clean.float().mean()},
                      on_step=False, on_epoch=True, batch_size=len(y))
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False, logger=False, batch_size=len(y))
        return loss

    # ---- state ----------------------------------------------------------------------------------
    def trainable_state_names(self) -> set[str]:
        """The vision tower (parameters and buffers, e.g. a ResNet's BatchNorm statistics), the linear head
        and trainable anchors: everything else is rebuilt from the backbone config."""
        names = {n for n in self.state_dict() if n.startswith(("clip.visual.", "head."))}
        if self.trainable_anchors:
            names.add("anchors")
        return names

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["tango"] = {"purification_history": list(self.purification_history),
                               "mix_generator": self.mix_generator.get_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("tango")
        if state:
            self.purification_history = list(state["purification_history"])
            self.mix_generator.set_state(state["mix_generator"])

    # ---- results --------------------------------------------------------------------------------
    def extra_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"anchors/num_fallback_classes": float(len(self.anchor_fallback))}
        if self.purification_history:
            for tag, stats in (("first", self.purification_history[0]), ("last", self.purification_history[-1])):
                for key in ("clean_fraction", "precision", "recall", "soft_label_acc"):
                    if key in stats:
                        out[f"purify/{key}_{tag}"] = float(stats[key])
        return out

    def extra_results(self) -> dict[str, Any]:
        return {"purification": list(self.purification_history)} if self.purification_history else {}

    def write_artifacts(self, run_dir: Path) -> None:
        self.write_label_issues(Path(run_dir) / "label_issues.csv")

    def write_label_issues(self, path: str | Path, dm: Any = None) -> Path:
        """One row per training sample from the last purification: verdict, q at the given label, Y~'s suggestion.

        Without a purification in this process (a finished run resumed from its last checkpoint trains no
        epoch), one is run now with the current weights over `dm` or the trainer's datamodule.
        """
        if self.purified is None:
            if dm is None and (self._trainer is None or getattr(self.trainer, "datamodule", None) is None):
                raise RuntimeError("write_label_issues needs a purification: fit the model first or pass dm")
            self.purify_training_set(dm)
        p = self.purified
        given = p.given.cpu().tolist()
        verdict = p.clean_mask.cpu().tolist()
        q_given = p.q_given.float().cpu().tolist()
        confidence, suggested = p.soft_labels.float().cpu().max(dim=1)
        true = p.true.cpu().tolist() if p.true is not None else [None] * len(given)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(LABEL_ISSUE_COLUMNS)
            for i, (g, v, q, s, conf, t) in enumerate(zip(given, verdict, q_given, suggested.tolist(),
                                                          confidence.tolist(), true)):
                writer.writerow([i, g, self.classnames[g], int(v), f"{q:.6g}", s, self.classnames[s],
                                 f"{conf:.6g}", "" if t is None else t])
        return path
