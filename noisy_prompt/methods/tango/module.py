"""TANGO as a LightningModule (docs/methods.md, TANGO): the CLIP vision encoder is fine-tuned under label noise
with a text-anchored classifier (TAC) and anchor-guided purification before every epoch.

The ablation presets are configs of this module: `classifier` (tac | linear), `beta` (visual-only 0,
semantic-only 1), `trainable_anchors`, and `anchors.source` (cupl | templates | dataset).
The readings of docs/methods.md (TANGO) are config values too: `tac_form` (logsumexp | literal), `mixup`
(beta11 | ssr), `lreg_weight`, `knn_vote` (uniform | weighted) and `k` (an integer or auto).
"""
from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisy_prompt.losses import masked_cross_entropy, mixup, soft_cross_entropy
from noisy_prompt.methods.epoch_curve import EpochCurveModule
from noisy_prompt.methods.selection import Verdicts, purification_summary, training_set_pass

from .anchors import load_cupl, match_descriptions, template_sentences
from .purification import KNN_VOTES, purify, resolve_k
from .tac import TAC_FORMS, class_anchor_table, tac_log_probs, tac_temperature

log = logging.getLogger(__name__)

ANCHOR_SOURCES = ("cupl", "templates", "dataset")
# Older configs named the synthetic world's descriptions "synthetic"; they come through the dataset now.
ANCHOR_SOURCE_ALIASES = {"synthetic": "dataset"}
# Mixup readings (docs/methods.md, TANGO): name -> (default alpha, lambda = max(lambda, 1 - lambda)).
MIXUP_FORMS = {"beta11": (1.0, False), "ssr": (4.0, True)}
ANCHOR_KEYS = {"source", "path", "k", "encode_batch_size"}
CLASSIFIERS = ("tac", "linear")
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
                     dataset: str | None = None,
                     class_descriptions: dict[str, list[str]] | None = None,
                     aliases: Mapping[str, str] | None = None) -> tuple[list[list[str]], list[str]]:
    """Per class, its anchor sentences, and the classes that fell back to templates.

    cupl: the description file at `path` (no path = templates for all classes, logged as fallen back);
    templates: template sentences; dataset: the descriptions the dataset itself publishes
    (`class_descriptions`, handed over by the task; e.g. the synthetic world's), matched to the
    class names like a description file. `aliases` (the data's `description_aliases` fact) maps class
    names that description files phrase differently; `dataset` only names the data in messages.
    """
    source = ANCHOR_SOURCE_ALIASES.get(source, source)
    if source == "cupl":
        descriptions = load_cupl(path) if path else None
        return match_descriptions(classnames, descriptions, k, aliases=aliases)
    if source == "templates":
        return [template_sentences(c, k) for c in classnames], []
    if source == "dataset":
        if not class_descriptions:
            raise ValueError(
                f"model.anchors.source=dataset needs the dataset's own class descriptions, but data "
                f"{dataset or '(unnamed)'!r} publishes none (its reader's class_descriptions is empty); "
                "use model.anchors.source=cupl with model.anchors.path=<descriptions.json>, or templates")
        return match_descriptions(classnames, class_descriptions, k, aliases=aliases)
    raise ValueError(f"model.anchors.source must be one of {', '.join(ANCHOR_SOURCES)}, got {source!r}")


def _encode_device() -> torch.device:
    # The text tower runs once over K*C sentences (40 000 for ImageNet): on the run's GPU when there is one.
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


@dataclass
class PurifiedLabels:
    """TANGO's training state from the last purification, indexed by training-set index (tensors on the
    model's device): the clean set I_c and the soft labels Y~ it trains on."""

    epoch: int
    given: Tensor  # (N,) long, the noisy labels the model trains on
    true: Tensor | None  # (N,) long, the clean labels where known (diagnostics only)
    clean_mask: Tensor  # (N,) bool, I_c
    soft_labels: Tensor  # (N, C) Y~
    q_given: Tensor  # (N,) q at the given label

    def verdicts(self) -> Verdicts:
        """The neutral record: clean = I_c, score = q at the given label, suggested = argmax Y~."""
        confidence, suggested = self.soft_labels.float().max(dim=1)
        return Verdicts(epoch=self.epoch, given=self.given, true=self.true, clean_mask=self.clean_mask,
                        score=self.q_given, suggested=suggested, confidence=confidence)


def _check_args(input: str, classifier: str, trainable_anchors: bool, beta: float, k: int | str, m: int | None,
                block_size: int, mixup_alpha: float | None, tac_form: str = "logsumexp", mixup_form: str = "beta11",
                lreg_weight: float = 1.0, knn_vote: str = "uniform") -> None:
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
    if k != "auto":
        resolve_k(k, 1, 1)  # the error names model.k and the accepted forms
    if int(block_size) < 1 or (m is not None and int(m) < 1):
        raise ValueError(f"model.m and model.block_size must be >= 1, got m={m}, block_size={block_size}")
    if mixup_alpha is not None and float(mixup_alpha) < 0:
        raise ValueError(f"model.mixup_alpha must be >= 0 (0 = no mixing), got {mixup_alpha}")
    if tac_form not in TAC_FORMS:
        raise ValueError(f"model.tac_form must be one of {', '.join(TAC_FORMS)}, got {tac_form!r}")
    if mixup_form not in MIXUP_FORMS:
        raise ValueError(f"model.mixup must be one of {', '.join(MIXUP_FORMS)}, got {mixup_form!r}")
    if float(lreg_weight) < 0:
        raise ValueError(f"model.lreg_weight must be >= 0, got {lreg_weight}")
    if knn_vote not in KNN_VOTES:
        raise ValueError(f"model.knn_vote must be one of {', '.join(KNN_VOTES)}, got {knn_vote!r}")


class Tango(EpochCurveModule):
    trains = True
    # Per-epoch purification stats and the epoch-0 TAC accuracy reach results.json also when the ranks
    # ran in spawned processes.
    REPORT_ATTRS = (*EpochCurveModule.REPORT_ATTRS, "purification_history", "epoch0_test_acc")

    def __init__(self, anchors: dict | None = None, classifier: str = "tac", tau: float | None = None,
                 trainable_anchors: bool = False, beta: float = 0.5, k: int | str = 200, m: int | None = None,
                 block_size: int = 4096, mixup_alpha: float | None = None, dataset: str | None = None,
                 tac_form: str = "logsumexp", mixup: str = "beta11", lreg_weight: float = 1.0,
                 knn_vote: str = "uniform", **kwargs):
        kwargs.setdefault("input", "images")
        _check_args(kwargs["input"], classifier, trainable_anchors, beta, k, m, block_size, mixup_alpha,
                    tac_form, mixup, lreg_weight, knn_vote)
        super().__init__(**kwargs)
        self.classifier = classifier
        self.beta, self.block_size = float(beta), int(block_size)
        self.knn_k: int | str = k if k == "auto" else int(k)  # "auto" is resolved from N/C at each purification
        self.m = None if m is None else int(m)
        self.mixup_form, self.lreg_weight, self.knn_vote = mixup, float(lreg_weight), knn_vote
        default_alpha, self.mixup_keep_larger = MIXUP_FORMS[mixup]
        self.mixup_alpha = default_alpha if mixup_alpha is None else float(mixup_alpha)
        self.tac_form = tac_form
        self.tau = tac_temperature(tac_form, tau, float(self.logit_scale))
        self.trainable_anchors = bool(trainable_anchors)
        self.epoch0_test_acc: float | None = None

        cfg = {"source": "cupl", "path": None, "k": 40, "encode_batch_size": 256, **dict(anchors or {})}
        unknown = set(cfg) - ANCHOR_KEYS
        if unknown:
            raise ValueError(f"model.anchors: unknown keys {sorted(unknown)}; expected {sorted(ANCHOR_KEYS)}")
        self.anchor_cfg = cfg
        self.anchor_sentences, self.anchor_fallback = anchor_sentences(
            cfg["source"], self.classnames, int(cfg["k"]), cfg["path"], dataset, self.class_descriptions,
            aliases=self.facts.description_aliases)
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
            # Zero-shot start: each class weight is its anchors' mean direction, scaled by tau (CLIP's logit
            # scale unless set; tac_form is a reading of the TAC, not of this head) so the initial logits
            # equal cosine logits at CLIP's temperature rather than a near-uniform softmax.
            head_scale = float(self.logit_scale) if tau is None else float(tau)
            means = torch.zeros(self.num_classes, feats.shape[1]).index_add_(0, labels, feats)
            self.head = nn.Linear(feats.shape[1], self.num_classes)
            with torch.no_grad():
                self.head.weight.copy_(head_scale * F.normalize(means, dim=-1))
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
    def purify_training_set(self, dm: Any = None) -> dict[str, float]:
        """Purification with the current weights over `dm` (default: the data the module is fitted with).

        Sets `self.purified` and returns the stats; the clean labels only feed the stats.
        """
        out, given, clean, dm = training_set_pass(self, lambda x: {"feats": self.image_features(x)}, dm,
                                                  desc=f"purify epoch {self.current_epoch + 1}: features")
        feats = out["feats"]
        true = self.known_true(clean)
        result = purify(feats, given, self.current_anchors().detach(), self.anchor_labels, self.num_classes,
                        beta=self.beta, k=self.knn_k, m=self.m, block_size=self.block_size,
                        clean_labels=true, knn_vote=self.knn_vote)
        self.purified = PurifiedLabels(
            epoch=self.current_epoch, given=given, true=true, clean_mask=result.clean_mask,
            soft_labels=result.soft_labels, q_given=result.q.gather(1, given[:, None]).squeeze(1))
        stats = {STAT_NAMES.get(key, key): float(value) for key, value in result.stats.items()}
        stats["k"] = float(min(resolve_k(self.knn_k, feats.shape[0], self.num_classes), feats.shape[0] - 1))
        return stats

    @torch.no_grad()
    def tac_test_accuracy(self, loader: Iterable[dict]) -> float:
        """Accuracy (%) of the TAC with the current vision tower and anchors over `loader` (eval mode).

        With the pretrained tower (before epoch 1) this is the honest "no training" reference of the
        method (docs/methods.md, TANGO); the linear-head variant is measured with the TAC as well, since the
        reference is the anchors' classifier, not the head's initial state. Counts are summed over
        ranks when a process group is up (the evaluation loaders shard the test set then).
        """
        modes = {mod: mod.training for mod in self.modules()}
        self.eval()
        plugin = self.trainer.precision_plugin if self._trainer is not None else None
        correct = torch.zeros((), dtype=torch.float64, device=self.device)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        try:
            with plugin.forward_context() if plugin is not None else nullcontext():
                for batch in loader:
                    x = batch["x"].to(self.device, non_blocking=True)
                    v = self.image_features(plugin.convert_input(x) if plugin is not None else x)
                    log_p = tac_log_probs(v, self.current_anchors(), self.anchor_labels, self.num_classes, self.tau,
                                          anchor_table=(self.anchor_index, self.anchor_mask))
                    label = torch.as_tensor(batch["label"], device=self.device)
                    correct += (log_p.argmax(dim=1) == label).sum()
                    total += label.numel()
        finally:
            for mod, mode in modes.items():
                mod.train(mode)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(correct)
            torch.distributed.all_reduce(total)
        return float(100.0 * correct / total.clamp_min(1))

    def _epoch0_reference(self) -> None:
        source = self.data_source()
        if source is None:
            return
        loaders = source.test_dataloader()
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        if loaders:
            self.epoch0_test_acc = self.tac_test_accuracy(loaders[0])
            log.info("TAC before training (epoch 0): test acc %.2f", self.epoch0_test_acc)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if self.current_epoch == 0 and self.epoch0_test_acc is None:
            self._epoch0_reference()  # before the first purification and step: the pretrained tower
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
        x_mix, targets_mix, _, _ = mixup(x, self.purified.soft_labels[idx], self.mixup_alpha, self.mix_generator,
                                         keep_larger=self.mixup_keep_larger)
        # One forward over clean and mixed images: the encoder has no batch statistics to mix (ViT).
        log_p = self.log_probs(torch.cat([x, x_mix]))
        log_p_clean, log_p_mix = log_p[: len(y)], log_p[len(y):]
        l_clean = masked_cross_entropy(log_p_clean, y, clean)
        l_reg = soft_cross_entropy(log_p_mix, targets_mix.to(log_p_mix.dtype), from_log_probs=True)
        loss = l_clean + self.lreg_weight * l_reg
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

    def predictor_init(self) -> tuple[str, dict[str, Any]]:
        # The predictor file stores the anchors (the module's own buffers, or the trainable anchors), so the
        # classifier is rebuilt with one template sentence per class: no description file, no re-encoding.
        target, kwargs = super().predictor_init()
        kwargs["anchors"] = {**(kwargs.get("anchors") or {}), "source": "templates", "path": None, "k": 1}
        kwargs["class_descriptions"] = None
        return target, kwargs

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["tango"] = {"purification_history": list(self.purification_history),
                               "mix_generator": self.mix_generator.get_state(),
                               "epoch0_test_acc": self.epoch0_test_acc}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("tango")
        if state:
            self.purification_history = list(state["purification_history"])
            self.mix_generator.set_state(state["mix_generator"])
            self.epoch0_test_acc = state.get("epoch0_test_acc")

    # ---- results --------------------------------------------------------------------------------
    def extra_metrics(self) -> dict[str, float]:
        out: dict[str, float] = dict(super().extra_metrics())  # best/last test accuracy (EpochCurveModule)
        out["anchors/num_fallback_classes"] = float(len(self.anchor_fallback))
        if self.epoch0_test_acc is not None:
            out["test/acc_epoch0"] = float(self.epoch0_test_acc)
        out.update(purification_summary(self.purification_history))
        return out

    def extra_results(self) -> dict[str, Any]:
        out = dict(super().extra_results())
        if self.purification_history:
            out["purification"] = list(self.purification_history)
        return out

    def label_issue_verdicts(self, dm: Any = None) -> Verdicts:
        """The last purification's verdicts; without a purification in this process (a finished run resumed
        from its last checkpoint trains no epoch), one is run now with the current weights over `dm`."""
        if self.purified is None:
            self.purify_training_set(dm)
        return self.purified.verdicts()
