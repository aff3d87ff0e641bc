"""Which classifier head can fit wrong labels on the built-in world's frozen image features?

The world's prompt-tuning cells predict almost none of their wrong training labels, where real CoOp
predicts ~15-25% at 50% noise. This command separates *why*: it trains several heads on the very same
cached 16-shot features (same views per epoch, batch order, optimiser, schedule and loss as the run
command's CoOp/PTNL) and reports, per head, how the trained head predicts its own training images
(`train_fit`: fit_noisy = wrong labels predicted, the run command's `train_fit/noisy` in %), its last-epoch train loss against ln C, and
its test accuracy:
  linear  free class vectors, one per class (a cosine classifier at the method's logit scale, started
          from the zero-shot text features): what any text tower could at best give a prompt;
  csc     class-specific contexts (CoOp's CSC): each class moves its own text feature, through the tower;
  coop    one shared context (CoOp / PTNL as the run command trains it).
If even `linear` fits no wrong label, the image features are the bottleneck; if `linear` and `csc` fit
but `coop` does not, the shared context through this text tower is. It also prints statistics of the
image features (within/between-class cosine, effective rank, within-class variance share) and, with
`--jacobian`, how freely a shared context can move the class text features class by class.

    python -m noisy_prompt.tools.headfit --heads linear csc coop -- model=coop noise=sym50 seed=1

Everything after `--` is a run-command override (default `backbone=synthetic data=synthetic
model=coop`); `model=ptnl` trains every head with GCE. `--scale-factor` and `--field` are the probe's
changes (`noisy_prompt.tools.probe`: the config key backbone.logit_scale_factor, and the field ranges made in
this process only); outputs (feature cache and one
JSON per call) go under ROOT/<change> as the probe's do, never under the default dirs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("linear", "csc", "coop")
DEFAULT_OVERRIDES = ("backbone=synthetic", "data=synthetic", "model=coop")


# ---- image-feature statistics (pure) -------------------------------------------------------------
def effective_rank(eigenvalues: torch.Tensor) -> float:
    """exp(entropy) of the normalised spectrum (Roy & Vetterli): 1 for one direction, d for an isotropic d-dim cloud."""
    ev = eigenvalues.clamp(min=0).double()
    p = ev / ev.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def feature_stats(feats: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Geometry of L2-normalised image features of a labelled set: mean within-class and between-class
    cosine (over image pairs), the share of variance within classes, and effective ranks of the
    centred features and of their within-class residuals (images minus their class mean)."""
    x = F.normalize(feats.double(), dim=-1)
    labels = torch.as_tensor(labels)
    cos = x @ x.t()
    same = labels[:, None] == labels[None, :]
    off = ~torch.eye(len(x), dtype=torch.bool)
    classes = labels.unique()
    means = torch.stack([x[labels == c].mean(0) for c in classes])
    resid = x - means[torch.searchsorted(classes, labels)]
    centred = x - x.mean(0)
    total, within = float((centred ** 2).sum()), float((resid ** 2).sum())
    return {
        "dim": int(x.shape[1]), "images": int(x.shape[0]), "classes": int(len(classes)),
        "cos_within": float(cos[same & off].mean()), "cos_between": float(cos[~same].mean()),
        "within_var_share": within / total,
        "erank_all": effective_rank(torch.linalg.eigvalsh(centred.t() @ centred)),
        "erank_within": effective_rank(torch.linalg.eigvalsh(resid.t() @ resid)),
        "erank_class_means": effective_rank(torch.linalg.eigvalsh((means - means.mean(0)).t() @ (means - means.mean(0)))),
    }


def spread_features(feats: torch.Tensor, labels: torch.Tensor, means: torch.Tensor, k: float) -> torch.Tensor:
    """Images of a class made k times less alike around the same class centres: each normalised feature's
    offset from its (true) class's mean direction is scaled by k (k = 1 leaves the normalised feature
    unchanged; k > 1 lowers the within-class cosine, the class centres and their geometry stay)."""
    x = F.normalize(feats.float(), dim=-1)
    centre = means[torch.as_tensor(labels, dtype=torch.long)]
    return centre + float(k) * (x - centre)


def apply_spread(dm, k: float) -> None:
    """`spread_features` on every split the heads see (train views, train eval, val, test), with the class
    means of the training images' test-transform features under their true labels."""
    if k == 1.0:
        return
    base = F.normalize(dm.train_eval_set.views[0].float(), dim=-1)
    clean = torch.as_tensor(dm.train_clean, dtype=torch.long)
    means = torch.stack([base[clean == c].mean(0) for c in range(len(dm.classnames))])
    sets = [dm.train_set, dm.train_eval_set, *dm.test_sets.values()] + ([dm.val_set] if dm.val_set is not None else [])
    for ds in sets:
        ds.views = torch.stack([spread_features(v, ds.clean, means, k) for v in ds.views])


def instance_offsets(n: int, dim: int, norm: float, stream: str) -> torch.Tensor:
    """One fixed random direction per image (norm `norm`, isotropic in all `dim` dimensions), seeded by the
    split's name: an instance signature that every augmented view of the image shares."""
    gen = torch.Generator().manual_seed(int(hashlib.sha256(stream.encode()).hexdigest()[:15], 16))
    return F.normalize(torch.randn(n, dim, generator=gen), dim=-1) * float(norm)


def apply_instance(dm, norm: float) -> None:
    """Adds `instance_offsets` to the normalised features of every split (train views and train eval share
    the training images' offsets; each test/val image gets its own): per-image variation of full rank."""
    if norm == 0.0:
        return
    dim = dm.train_eval_set.views.shape[-1]
    train = instance_offsets(len(dm.train_eval_set), dim, norm, f"train-seed{dm.seed}")
    named = [(dm.train_set, train), (dm.train_eval_set, train)]
    named += [(ds, instance_offsets(len(ds), dim, norm, name)) for name, ds in dm.test_sets.items()]
    if dm.val_set is not None:
        named.append((dm.val_set, instance_offsets(len(dm.val_set), dim, norm, "val")))
    for ds, off in named:
        ds.views = F.normalize(ds.views.float(), dim=-1) + off[None]


# ---- heads ---------------------------------------------------------------------------------------
class FreeClassHead(nn.Module):
    """A free vector per class (cosine classifier): logits = scale * <x/|x|, w_c/|w_c|>."""

    def __init__(self, init: torch.Tensor, logit_scale: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(init.detach().clone().float())
        self.register_buffer("scale", torch.as_tensor(logit_scale).detach().float().clone())

    def class_features(self) -> torch.Tensor:
        return F.normalize(self.weight, dim=-1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x.float(), dim=-1) @ self.class_features().t()


class PromptHead(nn.Module):
    """A CoOp module seen as a head: its context (shared or class-specific) is the only parameter."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def class_features(self) -> torch.Tensor:
        return self.module.text_features(self.module.ctx)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.logits(x)


def class_specific_context(module, seed: int) -> torch.Tensor:
    """CSC's start: an independent N(0, ctx_std^2) context per class (CoOp's CSC initialisation)."""
    gen = torch.Generator().manual_seed(int(seed))
    enc = module.prompt_encoder
    return torch.randn(module.num_classes, enc.n_ctx, enc.width, generator=gen) * float(module.hparams.ctx_std)


def loss_of(name: str, gce_q: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    from noisy_prompt.losses import gce_loss

    if name == "ce":
        return F.cross_entropy
    return lambda logits, y: gce_loss(logits, y, q=gce_q)


def train_head(head: nn.Module, dm, loss_fn, optim: dict, epochs: int) -> list[float]:
    """The run command's training loop for a features-input prompt learner, without Lightning: one cached
    view per epoch (dm.set_epoch), the datamodule's seeded batch order, the method's optimiser and
    per-epoch schedule. Returns the per-epoch mean train loss (weighted by batch size, as logged)."""
    from tqdm.auto import tqdm

    from noisy_prompt.methods.base import build_optimizer

    params = [p for p in head.parameters() if p.requires_grad]
    opt, sched = build_optimizer(params, optim, epochs)
    loader = dm.train_dataloader()
    history = []
    head.train()
    for epoch in tqdm(range(epochs), desc="epochs", leave=False):
        dm.set_epoch(epoch)
        total, count = 0.0, 0
        for batch in loader:
            loss = loss_fn(head.logits(batch["x"]), batch["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch["label"])
            count += len(batch["label"])
        sched.step()
        history.append(total / count)
    head.eval()
    return history


@torch.no_grad()
def test_accuracy(head: nn.Module, dm) -> float:
    hits, n = 0, 0
    for batch in dm.test_dataloader()[0]:
        hits += int((head.logits(batch["x"]).argmax(1) == batch["label"]).sum())
        n += len(batch["label"])
    return 100.0 * hits / n


def offdiag_cosine(class_feats: torch.Tensor) -> float:
    f = F.normalize(class_feats.detach().float(), dim=-1)
    c = f @ f.t()
    n = len(c)
    return float((c.sum() - c.diagonal().sum()) / (n * (n - 1)))


@torch.no_grad()
def context_jacobian(module, ctx: torch.Tensor, directions: int = 64, eps: float = 1e-3, seed: int = 0) -> dict[str, float]:
    """How a shared context moves the C normalised class text features, from a sketch of the Jacobian J
    (C*D x n_ctx*width) at `ctx`: J v for `directions` random unit directions v (central differences).
    Reports the share of the movement that is class-specific (J v minus its mean over classes; E over
    isotropic v of that ratio is the Frobenius ratio of J): near 0, every context direction moves all
    classes alike (a rigid tower that can only shift or merge the classes together); near 1, a context
    can trade margins class by class. Also the effective rank of the sketch (at most `directions`)."""
    gen = torch.Generator().manual_seed(int(seed))
    ctx = ctx.detach().float()
    rows, spec = [], []
    for _ in range(int(directions)):
        v = torch.randn(ctx.shape, generator=gen)
        v = v / v.norm()
        d = (module.text_features(ctx + eps * v) - module.text_features(ctx - eps * v)).double() / (2 * eps)  # (C, D)
        rows.append(d.reshape(-1))
        spec.append(d - d.mean(0, keepdim=True))
    sketch = torch.stack(rows)
    specific = torch.stack(spec)
    return {"jac_class_specific_share": float((specific ** 2).sum() / (sketch ** 2).sum()),
            "jac_sketch_erank": effective_rank(torch.linalg.svdvals(sketch) ** 2),
            "jac_sketch_erank_class_specific": effective_rank(torch.linalg.svdvals(specific.reshape(len(rows), -1)) ** 2),
            "jac_gain": float(sketch.norm() / math.sqrt(len(rows)))}


# ---- the command ---------------------------------------------------------------------------------
def compose(overrides: Sequence[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import noisy_prompt.config  # noqa: F401  (resolvers)
    from noisy_prompt.sweep import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="run", overrides=list(overrides), return_hydra_config=True)


def parse_lrs(items: Sequence[str]) -> dict[str, float]:
    out = {}
    for item in items:
        head, _, value = item.partition("=")
        if head not in HEADS or not value:
            raise SystemExit(f"--lr: expected HEAD=LR with HEAD in {list(HEADS)}, got {item!r}")
        try:
            out[head] = float(value)
        except ValueError:
            raise SystemExit(f"--lr: {item!r}: {value!r} is not a number") from None
    return out


@torch.no_grad()
def train_fit(module, dm) -> dict[str, float]:
    """How a trained head predicts its training images (one pass, the test transform), in %: fit_noisy,
    fit_true_of_noisy, fit_clean as the run command's `train_fit/*` (noisy_prompt.methods.train_fit),
    and the share of mislabelled images. Chance is 100 / classes."""
    from noisy_prompt.methods.train_fit import fit_fractions

    was = module.training
    module.eval()
    pred, given, true = [], [], []
    for batch in dm.train_eval_dataloader():
        pred.append(module.logits(batch["x"].to(getattr(module, "device", "cpu"))).argmax(1).cpu())
        given.append(torch.as_tensor(batch["label"]))
        true.append(torch.as_tensor(batch["clean_label"]))
    module.train(was)
    pred, given, true = torch.cat(pred), torch.cat(given), torch.cat(true)
    fit = fit_fractions(pred, given, true)
    return {"train/fit_noisy": 100.0 * fit.get("train_fit/noisy", float("nan")),
            "train/fit_true_of_noisy": 100.0 * fit.get("train_fit/true_of_noisy", float("nan")),
            "train/fit_clean": 100.0 * fit.get("train_fit/clean", float("nan")),
            "train/mislabelled": float(100.0 * (given != true).float().mean())}


def run(args: argparse.Namespace, overrides: Sequence[str]) -> dict[str, Any]:
    from noisy_prompt.build import build_clip, build_datamodule, build_module, max_epochs_of
    from noisy_prompt.tools import probe

    field = probe.parse_field(args.field)
    probe.apply_field(field)
    where = Path(args.root) / probe.probe_tag(field)
    cfg = compose([*DEFAULT_OVERRIDES, *overrides, *probe.scale_overrides(args.scale_factor),
                   f"paths.cache_dir={where / 'cache'}", f"paths.log_dir={where / 'runs'}"])
    if cfg.model._target_ != "noisy_prompt.methods.coop.CoOp" or cfg.data.get("input", "features") != "features":
        raise SystemExit(f"headfit: model={cfg.model.name} is not a features-input CoOp learner (use model=coop or model=ptnl)")
    torch.manual_seed(int(cfg.seed))
    epochs = max_epochs_of(cfg)
    bundle = build_clip(cfg)
    dm = build_datamodule(cfg, bundle)
    dm.setup("fit")
    if args.spread <= 0:
        raise SystemExit(f"--spread must be > 0, got {args.spread}")
    apply_spread(dm, args.spread)
    if args.instance < 0:
        raise SystemExit(f"--instance must be >= 0, got {args.instance}")
    apply_instance(dm, args.instance)
    optim = dict(cfg.model.optim)
    lrs = parse_lrs(args.lr)
    loss_fn = loss_of(str(cfg.model.loss), float(cfg.model.gce_q))
    C = len(dm.classnames)
    train_feats = dm.train_eval_set.views[0]
    out: dict[str, Any] = {
        "overrides": list(overrides), "scale_factor": args.scale_factor, "spread": args.spread, "instance": args.instance, "field": field, "heads": {},
        "backbone_model": str(cfg.backbone.model), "loss": str(cfg.model.loss), "epochs": epochs, "ln_C": math.log(C),
        "features_train_clean_labels": feature_stats(train_feats, torch.as_tensor(dm.train_clean)),
        "features_test": feature_stats(dm.test_sets["test"].views[0], dm.test_sets["test"].labels),
    }
    print("headfit: image features (train, clean labels):",
          json.dumps({k: round(v, 3) for k, v in out["features_train_clean_labels"].items()}), flush=True)
    for name in args.heads:
        t0 = time.time()
        module = build_module(cfg, dm, bundle)
        if name == "linear":
            head = FreeClassHead(module.template_text_features(), module.logit_scale)
        else:
            if name == "csc":
                module.ctx = nn.Parameter(class_specific_context(module, int(cfg.seed)))
            head = PromptHead(module)
        zs = offdiag_cosine(head.class_features())
        head_optim = {**optim, **({"lr": lrs[name]} if name in lrs else {})}
        start_ctx = module.ctx.detach().clone()
        history = train_head(head, dm, loss_fn, head_optim, epochs)
        fit = train_fit(head, dm)
        m = fit["train/mislabelled"] / 100.0
        rec = {"test_acc": test_accuracy(head, dm), "train_loss_last": history[-1], "train_loss_first": history[0],
               **{k.split("/", 1)[1]: v for k, v in fit.items()},
               "train_acc_given": fit["train/fit_clean"] * (1 - m) + (fit["train/fit_noisy"] * m if m > 0 else 0.0),
               "class_cos_start": zs, "class_cos_end": offdiag_cosine(head.class_features()),
               "lr": float(head_optim["lr"]), "wall_s": round(time.time() - t0, 1)}
        if args.jacobian and name == "coop":
            rec["jacobian_start"] = context_jacobian(module, start_ctx)
            rec["jacobian_end"] = context_jacobian(module, module.ctx.detach())
        out["heads"][name] = rec
        print(f"headfit: {name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in rec.items()), flush=True)
    key = hashlib.sha256(json.dumps([sorted(vars(args).items()), list(overrides)], default=str).encode()).hexdigest()[:10]
    path = where / "headfit" / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, path)
    print(f"headfit: wrote {path}", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, overrides = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(prog="python -m noisy_prompt.tools.headfit", description=__doc__.split("\n\n")[0])
    ap.add_argument("--heads", nargs="+", choices=HEADS, default=list(HEADS))
    ap.add_argument("--lr", nargs="*", default=[], metavar="HEAD=LR", help="a head's own learning rate (default: the recipe's)")
    ap.add_argument("--scale-factor", type=float, default=1.0, help="as the probe's: multiplies the logit scale")
    ap.add_argument("--field", default=None, help="as the probe's: JSON object condition -> [low, high]")
    ap.add_argument("--spread", type=float, default=1.0,
                    help="scale each image feature's offset from its class mean by this (images of a class less alike)")
    ap.add_argument("--instance", type=float, default=0.0,
                    help="add a fixed random per-image offset of this norm to every normalised feature (full-rank instance variation)")
    ap.add_argument("--jacobian", action="store_true", help="also measure how freely the shared context moves class features")
    ap.add_argument("--root", default=os.environ.get("NOISY_PROMPT_PROBES", str(Path.home() / "noisy_prompt" / "probes")),
                    help="feature cache and results under ROOT/<change> (env NOISY_PROMPT_PROBES)")
    args = ap.parse_args(ours)
    if any(o in ("-m", "--multirun") for o in overrides):
        raise SystemExit("headfit: one cell per call (no -m / --multirun)")
    if any(o.split("=", 1)[0].lstrip("+") in ("paths.log_dir", "paths.cache_dir") for o in overrides):
        raise SystemExit("headfit: paths.log_dir / paths.cache_dir are set by headfit (--root), not on its command line")
    return run(args, overrides)


if __name__ == "__main__":
    main()
