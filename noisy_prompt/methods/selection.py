"""Sample selection and the label-issue report, below every method.

Two things live here, shared by every method that trains on labels:

- the per-epoch machinery of the sample-selection methods (TANGO, SSR, LSL, DivideMix, DeFT): the no-grad
  `training_set_pass` over the un-augmented training set, the neutral `Verdicts` record (clean/noisy per
  sample) and the `purification_summary` of its per-epoch history (the `purify/*` metrics);
- the label-issue report every training method writes at the end of training (`label_issues.csv`, one
  schema, `LABEL_ISSUE_COLUMNS`): one pass of the *final classifier* over the training set gives each
  sample a suggested label (its argmax) and a ranking score, the self-confidence p(given label | x)
  (lower = more suspect, the order cleanlab ranks by); methods with clean/noisy verdicts add them.
  `label_issue_metrics` scores the verdicts and the ranking against the true labels where they are known.

Functions of tensors are pure (tested alone in tests/methods/test_selection.py); only `training_set_pass` and
`sample_paths` touch a module or the data, through the `DataSource` protocol (data/facts.py).
"""
from __future__ import annotations

import csv
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor

from noisy_prompt.atomic import replacing
from noisy_prompt.data.facts import DataSource

LABEL_ISSUES_FILE = "label_issues.csv"
# Below this many training images a pass is quick enough that a progress bar is noise.
PROGRESS_MIN_IMAGES = 5000
# The one schema of label_issues.csv (every method; docs/label-issues.md). Rows are in dataset order.
LABEL_ISSUE_COLUMNS = (
    "index",  # position in the training set the run trained on
    "path",  # the image file, where the dataset has files ("" for in-memory or generated images)
    "given_label", "given_class",  # the (possibly noisy) label trained on
    "suggested_label", "suggested_class",  # argmax of the final classifier
    "suggested_prob",  # the final classifier's probability of the suggested label
    "score",  # self-confidence: the final classifier's probability of the given label (low = suspect)
    "rank",  # 1 = most suspect (ascending score, ties by index)
    "verdict",  # the method's own decision, clean | noisy; "" for methods that make none
    "method_score",  # the method's own clean score at the given label (e.g. TANGO's q); "" without verdicts
    "method_label",  # the label the method's own selection would use (e.g. TANGO's argmax Y~); "" without
    "true_label", "true_class",  # where the true labels are known; "" otherwise
)
# Fixed ranking depths of the precision@k / recall@k metrics, beside k = the number of noisy samples.
RANK_KS = (10, 100)
METRIC_PREFIX = "label_issues/"
PURIFICATION_SUMMARY_KEYS = ("clean_fraction", "precision", "recall", "soft_label_acc")


# ------------------------------------------------------------------------------------ the verdicts


@dataclass
class Verdicts:
    """A method's clean/noisy decision over the training set, in dataset order (tensors on any device)."""

    epoch: int
    given: Tensor  # (N,) the noisy labels trained on
    true: Tensor | None  # (N,) clean labels where known (diagnostics only)
    clean_mask: Tensor  # (N,) bool
    score: Tensor  # (N,) the method's clean score at the given label (label_issues' method_score)
    suggested: Tensor  # (N,) the label the method would use (label_issues' method_label)
    confidence: Tensor  # (N,) the method's confidence in `suggested`


def purification_summary(history: list[dict[str, Any]]) -> dict[str, float]:
    """results.json metrics of a run that judged its labels each epoch: purify/<key>_first and
    purify/<key>_last from the first and last epoch's verdict statistics (TANGO and the baselines)."""
    out: dict[str, float] = {}
    if history:
        for tag, stats in (("first", history[0]), ("last", history[-1])):
            for key in PURIFICATION_SUMMARY_KEYS:
                if key in stats:
                    out[f"purify/{key}_{tag}"] = float(stats[key])
    return out


def sample_paths(dm: DataSource) -> list[str] | None:
    """The training images' files as the data publishes them (`train_paths()`), None where it has none."""
    paths = dm.train_paths()
    return list(paths) if paths else None


# ------------------------------------------------------------------------------ the training-set pass


def _training_set_loader(module, dm: DataSource | None):
    if dm is None:
        dm = module.data_source()
    if not isinstance(dm, DataSource):
        raise RuntimeError(f"{type(module).__name__} scores the whole training set: fit it with a datamodule that "
                           "is a data.facts.DataSource (train_eval_dataloader(): the training set, no "
                           f"augmentation), or pass one as dm (got {type(dm).__name__})")
    return dm, dm.train_eval_dataloader()


@torch.no_grad()
def training_set_pass(module, outputs: Callable[[Tensor], dict[str, Tensor]], dm: DataSource | None = None,
                      desc: str = "scoring the training set") -> tuple[dict[str, Tensor], Tensor, Tensor, Any]:
    """Run `outputs(x)` over the un-augmented training set in eval mode, under the trainer's precision.

    Returns ({name: (N, ...) tensor on the module's device, in dataset order}, given labels (N,),
    clean labels (N,), the datamodule). Every module's train/eval mode is restored afterwards. Raises when
    the loader does not yield each index 0..N-1 exactly once.
    """
    dm, loader = _training_set_loader(module, dm)
    n = len(loader.dataset) if hasattr(loader, "dataset") else 0
    batches: Iterable[dict] = loader
    if (module._trainer is None or module.trainer.is_global_zero) and n >= PROGRESS_MIN_IMAGES:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc=desc, leave=False)
    plugin = module.trainer.precision_plugin if module._trainer is not None else None
    modes = {mod: mod.training for mod in module.modules()}
    module.eval()
    parts: dict[str, list[Tensor]] = {}
    labels, clean, order = [], [], []
    try:
        with plugin.forward_context() if plugin is not None else nullcontext():
            for batch in batches:
                x = batch["x"].to(module.device, non_blocking=True)
                out = outputs(plugin.convert_input(x) if plugin is not None else x)
                for key, value in out.items():
                    parts.setdefault(key, []).append(value.float() if value.is_floating_point() else value)
                labels.append(torch.as_tensor(batch["label"]))
                clean.append(torch.as_tensor(batch["clean_label"]))
                order.append(torch.as_tensor(batch["index"]))
    finally:
        for mod, mode in modes.items():
            mod.train(mode)
    index = torch.cat(order).long() if order else torch.empty(0, dtype=torch.long)
    n = index.numel()
    if n == 0 or not torch.equal(torch.sort(index).values, torch.arange(n)):
        raise ValueError(f"the training-set loader must yield each index 0..N-1 exactly once; got {n} items "
                         "with missing or repeated indices")
    dev_index = index.to(module.device)
    placed = {}
    for key, chunks in parts.items():
        values = torch.cat(chunks).to(module.device)
        out = torch.empty_like(values)
        out[dev_index] = values
        placed[key] = out
    given, true = torch.empty(n, dtype=torch.long), torch.empty(n, dtype=torch.long)
    given[index], true[index] = torch.cat(labels).long(), torch.cat(clean).long()
    return placed, given.to(module.device), true.to(module.device), dm


# ----------------------------------------------------------------------------- the label-issue report


@dataclass
class LabelIssueReport:
    """The final classifier's view of every training sample (CPU tensors, dataset order), with the method's
    verdicts where it has them."""

    given: Tensor  # (N,) long
    suggested: Tensor  # (N,) long, argmax of the final classifier
    suggested_prob: Tensor  # (N,) float
    score: Tensor  # (N,) float, self-confidence p(given | x)
    true: Tensor | None = None  # (N,) long where the true labels are known
    verdicts: Verdicts | None = None
    paths: list[str | None] | None = None

    def __post_init__(self):
        n = self.given.numel()
        for name in ("suggested", "suggested_prob", "score", "true"):
            t = getattr(self, name)
            if t is not None and t.shape != (n,):
                raise ValueError(f"LabelIssueReport.{name} must have shape ({n},), got {tuple(t.shape)}")
        if self.verdicts is not None and self.verdicts.clean_mask.shape != (n,):
            raise ValueError(f"verdicts over {self.verdicts.clean_mask.numel()} samples, report over {n}")
        if self.paths is not None and len(self.paths) != n:
            raise ValueError(f"{len(self.paths)} paths for {n} training samples")

    @property
    def noisy_verdict(self) -> Tensor | None:
        return None if self.verdicts is None else ~self.verdicts.clean_mask.bool().cpu()

    def ranks(self) -> Tensor:
        return suspicion_ranks(self.score)

    def metrics(self, ks: Sequence[int] = RANK_KS) -> dict[str, float]:
        return label_issue_metrics(self.score, self.given, self.true, self.noisy_verdict, self.suggested, ks)


def report_from_log_probs(log_probs: Tensor, given: Tensor, true: Tensor | None = None,
                          verdicts: Verdicts | None = None, paths: list[str | None] | None = None) -> LabelIssueReport:
    """The report of a classifier's (N, C) log-probabilities (any normalisation: log_softmax is applied)."""
    if log_probs.dim() != 2 or log_probs.shape[0] != given.numel():
        raise ValueError(f"log_probs must be (N, C) with N = {given.numel()}, got {tuple(log_probs.shape)}")
    probs = torch.softmax(log_probs.detach().float().cpu(), dim=1)
    given = given.detach().long().cpu()
    suggested_prob, suggested = probs.max(dim=1)
    score = probs.gather(1, given[:, None]).squeeze(1)
    return LabelIssueReport(given=given, suggested=suggested, suggested_prob=suggested_prob, score=score,
                            true=None if true is None else true.detach().long().cpu(), verdicts=verdicts, paths=paths)


def suspicion_order(score: Tensor) -> Tensor:
    """Sample indices from most to least suspect: ascending score, ties by index (deterministic)."""
    score = score.detach().double().cpu()
    index = torch.arange(score.numel())
    # A stable sort of scores listed in index order keeps ties in index order.
    return index[torch.sort(score, stable=True).indices]


def suspicion_ranks(score: Tensor) -> Tensor:
    """rank[i] = 1 + position of sample i in `suspicion_order` (1 = most suspect)."""
    order = suspicion_order(score)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(1, order.numel() + 1)
    return ranks


def auroc(score: Tensor, positive: Tensor) -> float | None:
    """P(score of a random positive < score of a random negative) + 1/2 P(tie): how well a LOW score ranks the
    positives (here: the truly noisy samples) first. None when either class is empty."""
    positive = positive.bool().cpu()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    s = -score.detach().double().cpu()  # high = suspect
    # Mann-Whitney U with average ranks for ties.
    sorted_s, order = torch.sort(s)
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, s.numel() + 1, dtype=torch.float64)
    uniq, inverse, counts = torch.unique(sorted_s, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts + 1
    avg = (first + (counts - 1) / 2.0).double()
    ranks[order] = avg[inverse]
    u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def label_issue_metrics(score: Tensor, given: Tensor, true: Tensor | None, noisy_verdict: Tensor | None = None,
                        suggested: Tensor | None = None, ks: Sequence[int] = RANK_KS) -> dict[str, float]:
    """results.json metrics of a label-issue report (keys `label_issues/...`; fractions in [0, 1]).

    Positives are the truly noisy samples (given != true). Without true labels only the counts are
    returned. A value that is undefined (a precision with nothing flagged, a recall with no noisy sample,
    k larger than the training set) is left out rather than written as 0.

    - verdict_precision / verdict_recall: of the samples the method judged noisy;
    - precision_at_noisy: precision of the top-K of the ranking with K = the number of noisy samples
      (equal to the recall at that K);
    - precision_at_<k> / recall_at_<k>: of the top-k of the ranking, for each k in `ks`;
    - auroc: of the score as a detector of noisy samples (low score = noisy);
    - suggested_acc / suggested_acc_noisy: the suggested label equals the true one, over all samples / over
      the noisy ones (how often the suggestion would fix a wrong label).
    """
    p = METRIC_PREFIX
    n = given.numel()
    given = given.detach().long().cpu()
    out: dict[str, float] = {f"{p}num_train": float(n)}
    if noisy_verdict is not None:
        noisy_verdict = noisy_verdict.bool().cpu()
        out[f"{p}num_flagged"] = float(noisy_verdict.sum())
    if true is None or n == 0:
        return out
    noisy = given != true.detach().long().cpu()
    num_noisy = int(noisy.sum())
    out[f"{p}num_noisy"] = float(num_noisy)
    out[f"{p}noise_rate"] = num_noisy / n
    if noisy_verdict is not None:
        hits = int((noisy_verdict & noisy).sum())
        flagged = int(noisy_verdict.sum())
        if flagged:
            out[f"{p}verdict_precision"] = hits / flagged
        if num_noisy:
            out[f"{p}verdict_recall"] = hits / num_noisy
    order = suspicion_order(score)
    hits_at = torch.cumsum(noisy[order].long(), 0)  # hits_at[k-1] = noisy samples among the top k
    if num_noisy:
        out[f"{p}precision_at_noisy"] = int(hits_at[num_noisy - 1]) / num_noisy
    for k in ks:
        k = int(k)
        if 1 <= k <= n:
            out[f"{p}precision_at_{k}"] = int(hits_at[k - 1]) / k
            if num_noisy:
                out[f"{p}recall_at_{k}"] = int(hits_at[k - 1]) / num_noisy
    a = auroc(score, noisy)
    if a is not None:
        out[f"{p}auroc"] = a
    if suggested is not None:
        right = suggested.detach().long().cpu() == true.detach().long().cpu()
        out[f"{p}suggested_acc"] = float(right.float().mean())
        if num_noisy:
            out[f"{p}suggested_acc_noisy"] = float(right[noisy].float().mean())
    return {k: v for k, v in out.items() if math.isfinite(v)}


def write_label_issues_csv(path: str | Path, classnames: list[str], report: LabelIssueReport) -> Path:
    """label_issues.csv: one row per training sample in dataset order, `LABEL_ISSUE_COLUMNS`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = report.given.numel()
    given = report.given.tolist()
    suggested = report.suggested.tolist()
    sprob = report.suggested_prob.float().tolist()
    score = report.score.float().tolist()
    ranks = report.ranks().tolist()
    true = report.true.tolist() if report.true is not None else [None] * n
    paths = report.paths if report.paths is not None else [None] * n
    v = report.verdicts
    clean = v.clean_mask.bool().cpu().tolist() if v is not None else [None] * n
    mscore = v.score.float().cpu().tolist() if v is not None else [None] * n
    mlabel = v.suggested.long().cpu().tolist() if v is not None else [None] * n
    with replacing(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:  # never half a file
        writer = csv.writer(fh)
        writer.writerow(LABEL_ISSUE_COLUMNS)
        for i in range(n):
            g, s, t = given[i], suggested[i], true[i]
            writer.writerow([
                i, paths[i] or "", g, classnames[g], s, classnames[s], f"{sprob[i]:.6g}", f"{score[i]:.6g}", ranks[i],
                "" if clean[i] is None else ("clean" if clean[i] else "noisy"),
                "" if mscore[i] is None else f"{mscore[i]:.6g}",
                "" if mlabel[i] is None else mlabel[i],
                "" if t is None else t, "" if t is None else classnames[t],
            ])
    return path


class LabelIssuesFileError(ValueError):
    """label_issues.csv is missing, empty or not of the current schema."""


def read_label_issues_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a label_issues.csv of the current schema (clear error otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise LabelIssuesFileError(f"{path}: no label-issue report (label_issues.csv is written at the end of "
                                   "training by every method that trains on labels)")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in LABEL_ISSUE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise LabelIssuesFileError(f"{path}: not a label-issue report of this version: missing columns "
                                       f"{', '.join(missing)} (expected {', '.join(LABEL_ISSUE_COLUMNS)}); "
                                       "rerun the cell with force=true to rewrite it")
        rows = list(reader)
    if not rows:
        raise LabelIssuesFileError(f"{path}: the label-issue report has no rows")
    return rows
