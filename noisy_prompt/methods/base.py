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

from noisy_prompt import atomic
from noisy_prompt.clip.factory import ClipBundle, create_clip, freeze
from noisy_prompt.data.facts import DataFacts, DataSource
from noisy_prompt.data.readers.templates import DEFAULT_TEMPLATES, clean_classname
from noisy_prompt.methods.selection import LABEL_ISSUES_FILE
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
PREDICTOR_FILE = "predictor.pt"  # what `python -m noisy_prompt.predict` needs, saved by rank 0 after testing
PREDICTOR_FORMAT = "noisy_prompt.predictor/1"


def plain(value: Any, where: str = "hparams") -> Any:
    """`value` as plain dicts, lists, strings, numbers, bools and None (what torch.load(weights_only=True) reads
    back); anything else is an error naming where it sits."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    try:  # an OmegaConf container from a composed config
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return plain(OmegaConf.to_container(value, resolve=True), where)
    except ImportError:
        pass
    raise TypeError(f"{where} = {value!r} ({type(value).__name__}) cannot be stored in the predictor file; "
                    "constructor arguments must be plain values")
# Every test item's top-k classes and probabilities, per test set (rank 0, after testing); loads with
# torch.load(weights_only=True): {"classnames": [...], "sets": {name: {"index", "label", "topk", "topk_prob"}}}.
TEST_PREDICTIONS_FILE = "test_predictions.pt"


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def range_problems(node: dict, key: str, rules: dict[str, tuple[float, float, bool, str]]) -> list[str]:
    """One line per entry of `node` outside its rule {name: (low, high, low_inclusive, expected)}; absent keys
    are skipped (their defaults are valid). Each line names the full key, the value and what was expected."""
    out = []
    for name, (low, high, low_inclusive, expected) in rules.items():
        if name not in node or node[name] is None:
            continue
        v = _number(node[name])
        if v is None or v != v or not (v >= low if low_inclusive else v > low) or not v <= high:
            out.append(f"{key}.{name}={node[name]!r}: expected {expected}")
    return out


OPTIM_RULES = {"lr": (0.0, float("inf"), False, "a learning rate > 0"),
               "momentum": (0.0, 1.0, True, "a number in [0, 1]"),
               "weight_decay": (0.0, float("inf"), True, "a number >= 0"),
               "warmup_epochs": (0.0, float("inf"), True, "an integer >= 0"),
               "warmup_lr": (0.0, float("inf"), True, "a number >= 0")}


class ClassifierModule(L.LightningModule):
    """Base class. Subclasses implement `logits(x)` and, if they train, `training_step`.

    `REPORT_ATTRS` are written by rank 0 to `<default_root_dir>/module_report.json` after testing, so the
    process that writes results.json sees them even when the ranks ran in spawned processes (ddp_spawn).

    Checkpoints hold only trainable state (`trainable_state_names`), because the frozen CLIP weights are
    reloaded from the backbone config; `strict_loading=False` lets those frozen keys be absent.
    """

    # test_predictions: per test set, the top-k classes and probabilities of every item (predictions_<set>.csv,
    # test_predictions.pt); label_issues_record: the label-issue report's summary and metrics.
    REPORT_ATTRS = ("test_report", "val_history", "history", "test_predictions", "label_issues_record")
    # Whether the task calls `trainer.fit` before testing; zero-shot / eval-only modules set False.
    # A module that trains on labels also writes the label-issue report after testing.
    trains: bool = True
    # The label-issue report's summary (file, flags, metrics), set by `write_label_issues`; a class-level
    # empty default so that the hooks answer {} before any report (never mutated in place).
    label_issues_record: dict[str, Any] = {}

    def __init__(self, backbone: dict, classnames: list[str], templates: list[str] | None = None,
                 test_sets: list[str] | None = None, input: str = "features", optim: dict | None = None,
                 max_epochs: int = 1, seed: int = 1, class_descriptions: dict[str, list[str]] | None = None,
                 clip_bundle: ClipBundle | None = None, facts: DataFacts | None = None):
        super().__init__()
        # The prebuilt CLIP (handed over by the task so a run loads its weights once), the dataset's
        # descriptions and its facts are objects, not hyperparameters: checkpoints keep primitives only.
        self.save_hyperparameters(ignore=["clip_bundle", "class_descriptions", "facts"])
        self.strict_loading = False
        self.classnames = list(classnames)
        self.num_classes = len(self.classnames)
        self.templates = list(templates or DEFAULT_TEMPLATES)
        self.test_set_names = list(test_sets or ["test"])
        self.input = input
        self.optim = dict(optim or {})
        self.max_epochs = int(max_epochs)
        self.seed = int(seed)
        # Class name -> description sentences, when the dataset publishes them (None otherwise).
        self.class_descriptions = dict(class_descriptions) if class_descriptions else None
        # What the data publishes (data/facts.py), handed over by the task beside the class names: a method
        # reads its data's facts here, never from the datamodule and never by the dataset's name. A module
        # built without them (library use) takes its datamodule's when it is fitted (`setup`).
        self.facts = facts if facts is not None else DataFacts()
        self._facts_given = facts is not None
        bundle = clip_bundle if clip_bundle is not None else create_clip(**backbone)
        self.clip = freeze(bundle.model)
        self.tokenizer = bundle.tokenizer
        self.clip_identity = bundle.identity
        # The evaluation preprocessing of this backbone (data/transforms.test_transform), for the predictor file.
        self.preprocess = {"image_size": int(bundle.image_size), "mean": [float(v) for v in bundle.mean],
                           "std": [float(v) for v in bundle.std]}
        self.val_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.test_report: dict[str, dict[str, Any]] = {}
        self.val_history: list[float] = []
        self.history: dict[str, list[float]] = {}
        self.report_path: str | None = None  # set by the task wrapper: where rank 0 leaves REPORT_ATTRS  # per-epoch means of train/* metrics, for the curves figure
        self.test_predictions: dict[str, dict[str, list]] = {}
        # Set by the task wrapper: where rank 0 saves the predictor after testing, and the run's facts it
        # records (weights digest, feature precision, ...). None: no predictor file (tests, library use).
        self.predictor_path: str | None = None
        self.predictor_meta: dict[str, Any] = {}

    @classmethod
    def config_problems(cls, config: dict) -> list[str]:
        """Problems with this method's constructor arguments (the resolved model config plus max_epochs),
        each naming its key and what was expected; [] when fine. The preflight calls it before anything is
        built; a method adds its own keys' checks by extending it (and may call it from its constructor)."""
        optim = config.get("optim") or {}
        out = range_problems(optim, "model.optim", OPTIM_RULES)
        if "name" in optim and optim["name"] not in ("sgd", "adamw"):
            out.append(f"model.optim.name={optim['name']!r}: expected 'sgd' or 'adamw'")
        return out

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
        names = [clean_classname(c) for c in (classnames or self.classnames)]
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
        prob, top = torch.softmax(logits, dim=-1).topk(k, dim=-1)
        self._test_buffer.setdefault(name, []).append(
            (batch["index"].cpu(), top.cpu(), batch["label"].cpu(), prob.cpu()))

    def on_test_epoch_start(self) -> None:
        self._test_buffer: dict[str, list] = {}
        self.test_predictions: dict[str, dict[str, list]] = {}

    def _gather_exact(self, name: str) -> tuple[torch.Tensor, ...] | None:
        """(index, top-k predictions, labels, top-k probabilities) of every test item exactly once, in index
        order: gathered from all ranks and de-duplicated by dataset index, so DistributedSampler padding can
        never count an item twice and the number in a table equals the single-process number."""
        parts = self._test_buffer.get(name, [])
        width = len(parts[0]) if parts else 0
        local = [torch.cat([p[i] for p in parts]) for i in range(width)] if parts else None
        if torch.distributed.is_available() and torch.distributed.is_initialized() and self.trainer.world_size > 1:
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, local)
            gathered = [g for g in gathered if g is not None]
        else:
            gathered = [local] if local is not None else []
        if not gathered:
            return None
        index, topk, label, prob = (torch.cat([g[i] for g in gathered]) for i in range(4))
        unique, first = _first_occurrence(index)
        return unique, topk[first], label[first], prob[first]

    def on_test_epoch_end(self) -> None:
        for name in self.test_set_names:
            exact = self._gather_exact(name)
            if exact is None:
                continue
            index, topk, label, prob = exact
            self.test_report[name] = classification_report(topk, label, self.num_classes)
            self.test_predictions[name] = {"index": index.tolist(), "label": label.tolist(), "topk": topk.tolist(),
                                           "prob": [[round(float(p), 6) for p in row] for row in prob.tolist()]}
            self.log(f"{name}/acc", self.test_report[name]["acc"], sync_dist=False, rank_zero_only=True)
        if self.trainer.is_global_zero and self.report_path is not None:
            run_dir = Path(self.report_path).parent
            # Inside the rank-0 worker, where method state (e.g. TANGO's purification) lives, also when
            # the ranks were spawned processes whose module objects never return to the task. The
            # label-issue report comes first: its metrics travel in the module report.
            if self.trains:
                self.write_label_issues(run_dir / LABEL_ISSUES_FILE)
            self.save_test_predictions(run_dir / TEST_PREDICTIONS_FILE)
            self.save_report(Path(self.report_path))
            self.write_artifacts(run_dir)
        if self.trainer.is_global_zero and self.predictor_path is not None:
            self.save_predictor(Path(self.predictor_path))

    def save_test_predictions(self, path: Path) -> Path | None:
        """TEST_PREDICTIONS_FILE: what the report's confusion matrix (and a check of a predictor) reads."""
        if not self.test_predictions:
            return None
        sets = {name: {"index": torch.tensor(p["index"]), "label": torch.tensor(p["label"]),
                       "topk": torch.tensor(p["topk"]), "topk_prob": torch.tensor(p["prob"])}
                for name, p in self.test_predictions.items()}
        return atomic.torch_save({"classnames": list(self.classnames), "sets": sets}, path)

    # ---- the label-issue report (methods/selection.py) ------------------------------------------------
    def label_issue_verdicts(self, dm: Any = None):
        """The method's own clean/noisy verdicts over the training set (`selection.Verdicts`), or None for
        a method that makes none (prompt tuning, plain fine-tuning): its report has an empty verdict column."""
        return None

    def label_issue_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The final classifier's log-probabilities: what the report ranks and suggests by."""
        return F.log_softmax(self.logits(x).float(), dim=-1)

    def label_issue_report(self, dm: Any = None):
        """One no-grad pass of the final classifier over the un-augmented training set (cached features for
        prompt methods, images for fine-tuning methods), with the method's verdicts where it has them."""
        from noisy_prompt.methods import selection

        if dm is None and self.data_source() is None:
            raise RuntimeError(f"{type(self).__name__}.write_label_issues needs the training set: fit the model "
                               "first or pass dm")
        out, given, clean, dm = selection.training_set_pass(
            self, lambda x: {"log_probs": self.label_issue_log_probs(x)}, dm, desc="label issues: training set")
        verdicts = self.label_issue_verdicts(dm)
        if verdicts is not None and not torch.equal(verdicts.given.cpu(), given.cpu()):
            raise RuntimeError(f"{type(self).__name__}: the verdicts were made on other given labels than the "
                               "training set served now")
        true = self.known_true(clean)
        return selection.report_from_log_probs(out["log_probs"], given, true, verdicts, selection.sample_paths(dm))

    def write_label_issues(self, path: str | Path, dm: Any = None) -> Path:
        """label_issues.csv (`selection.LABEL_ISSUE_COLUMNS`) from the current weights; its summary and
        metrics go to results.json (`label_issues_record`)."""
        from noisy_prompt.methods import selection

        report = self.label_issue_report(dm)
        path = selection.write_label_issues_csv(path, self.classnames, report)
        self.label_issues_record = {
            "file": Path(path).name, "num_train": int(report.given.numel()),
            "verdict": report.verdicts is not None, "true_labels": report.true is not None,
            "paths": report.paths is not None, "score": "self_confidence", "metrics": report.metrics()}
        return path

    # ---- hooks the task calls (declared here, so the task never probes with getattr) ----------------
    def extra_metrics(self) -> dict[str, float]:
        """Method-specific numbers merged into results.json["metrics"] (aggregatable as table metrics):
        here the label-issue report's `label_issues/*` metrics, where there is a report."""
        return dict(self.label_issues_record.get("metrics", {}))

    def extra_results(self) -> dict[str, Any]:
        """Method-specific records merged at the top level of results.json (e.g. TANGO's purification);
        here `label_issues`: the report's file and flags (the record that marks a run as carrying one)."""
        rec = self.label_issues_record
        return {"label_issues": {k: v for k, v in rec.items() if k != "metrics"}} if rec else {}

    def write_artifacts(self, run_dir: Path) -> None:
        """Extra files in the run dir, written by rank 0 inside the worker after testing."""

    # ---- prediction after the run (noisy_prompt.predict) -------------------------------------------
    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of preprocessed images, whatever the method trained on: a method on cached features
        (input=features) gets its frozen encoder's features, rounded as the run's feature cache stored them."""
        if self.input != "features":
            return self.logits(images).float()
        feats = self.clip.visual(images).float()
        dtype = self.predictor_meta.get("feature_dtype", "float32")
        if dtype != "float32":
            feats = feats.to(getattr(torch, dtype)).float()
        return self.logits(feats).float()

    def predictor_state_names(self) -> set[str]:
        """The tensors prediction needs beyond what the constructor rebuilds from the hyperparameters and the
        backbone: the trained state, plus the classifier's own buffers (text anchors encoded at construction
        from sentence files, so that predicting never needs those files again)."""
        return set(self.trainable_state_names()) | {n for n, _ in self.named_buffers(recurse=False)}

    def predictor_init(self) -> tuple[str, dict[str, Any]]:
        """(class path, constructor keyword arguments) that rebuild this classifier for prediction; the
        stored predictor state is loaded into it afterwards. A method whose constructor reads files or
        sources that prediction should not need (TANGO's description file) overrides this."""
        kwargs = plain(dict(self.hparams))
        kwargs["class_descriptions"] = plain(self.class_descriptions, "class_descriptions")
        return f"{type(self).__module__}.{type(self).__qualname__}", kwargs

    def predictor_payload(self) -> dict[str, Any]:
        """Everything `python -m noisy_prompt.predict` needs, as plain values and tensors (weights_only=True)."""
        target, kwargs = self.predictor_init()
        extra: dict[str, Any] = {"state_dict": {}}
        self.on_save_checkpoint(extra)  # the method's extra state (e.g. DeFT's phase), as a resumed run gets it
        extra.pop("state_dict", None)
        tensors = {**self.state_dict(), **dict(self.named_buffers(recurse=False))}
        state = {n: tensors[n].detach().cpu().clone() for n in sorted(self.predictor_state_names())}
        return {"format": PREDICTOR_FORMAT, "target": target, "init": kwargs, "state": state, "extra": extra,
                "classnames": list(self.classnames), "input": self.input, "preprocess": dict(self.preprocess),
                "clip_identity": self.clip_identity, "meta": plain(self.predictor_meta, "predictor_meta")}

    def save_predictor(self, path: Path) -> Path:

        return atomic.torch_save(self.predictor_payload(), path)

    def load_predictor_state(self, payload: dict[str, Any]) -> None:
        """Put a predictor file's state into this freshly built classifier (the inverse of predictor_payload)."""
        self.on_load_checkpoint({**payload.get("extra", {}), "state_dict": {}})
        for name, tensor in payload["state"].items():
            owner_name, _, attr = name.rpartition(".")
            owner = self.get_submodule(owner_name) if owner_name else self
            if attr in owner._parameters:
                owner._parameters[attr] = nn.Parameter(tensor.clone(), requires_grad=False)
            elif attr in owner._buffers:
                owner._buffers[attr] = tensor.clone()
            else:
                raise KeyError(f"predictor state {name!r} is neither a parameter nor a buffer of "
                               f"{type(self).__name__}")
        self.predictor_meta = dict(payload.get("meta") or {})

    def save_report(self, path: Path) -> None:
        from noisy_prompt.cell import write_json

        write_json(path, {k: getattr(self, k) for k in self.REPORT_ATTRS})  # atomic

    def load_report(self, path: Path) -> None:
        for key, value in json.loads(Path(path).read_text()).items():
            setattr(self, key, value)

    # ---- the data (data/facts.py) ----------------------------------------------------------------------
    def data_source(self) -> DataSource | None:
        """The data this module is fitted with (the trainer's datamodule), through the one protocol a method
        may use; None outside a fit, or when the trainer was given plain dataloaders."""
        if self._trainer is None:
            return None
        dm = self.trainer.datamodule
        return dm if isinstance(dm, DataSource) else None

    def known_true(self, clean: torch.Tensor) -> torch.Tensor | None:
        """The served clean labels where they are ground truth (`facts.clean_labels_known`), else None: real
        noise without annotation serves the noisy labels as `clean_label`, and scoring against them would
        be meaningless."""
        return clean if self.facts.clean_labels_known else None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        source = self.data_source()
        if source is None:
            return
        facts = source.facts()
        if not self._facts_given:
            self.facts, self._facts_given = facts, True
        elif facts != self.facts:
            raise ValueError(f"{type(self).__name__} was built for other data than the datamodule it runs with "
                             f"(module != datamodule: {'; '.join(self.facts.differences(facts))}); build the "
                             "module with facts=dm.facts() of the data it runs on")

    # ---- training plumbing ------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        source = self.data_source()
        if source is not None:  # the epoch's augmented view and batch order
            source.set_epoch(self.current_epoch)

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
