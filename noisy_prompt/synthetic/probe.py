"""What-if probes of the built-in world, for whoever designs the next one (README section 7).

Runs one cell of the run command with a change that no config can express, made in memory:
  --scale-factor F   the logit scale every method sees is multiplied by F (F < 1: a compressed
                     image-text geometry like real CLIP's, whose true-class cosines spread over
                     about 0.08 against this world's 0.45; F > 1: a sharper one);
  --field JSON       downstream field-condition ranges replacing world.FIELD_RANGES entries,
                     e.g. '{"tint": [0.8, 1.3], "clutter": [5, 8]}' (strengths beyond the
                     pretraining ranges: a wider gap between pretraining and the field).
Every probe also reports how the trained classifier fits its own training labels (`train/fit_*` in
its results.json metrics, printed at the end): does a method take in the wrong labels (memorise) or
predict the true ones through them?
A probe is evidence about the world, not a method or a world: the calibration (`make calibrate`)
judges only the world as committed. Neither change is in the config hash, and a field change is
not in the world's data digest (the source is unchanged), so a probe's runs and cached features go
under a folder of their own, named after the change, never under the default log and cache dirs.

    python -m noisy_prompt.synthetic.probe --scale-factor 0.3 -- \\
        backbone=synthetic data=synthetic model=ptnl noise=sym80 seed=1 data.recipe.prompt.lr=0.02
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch


def probe_tag(scale_factor: float, field: dict) -> str:
    """A folder name per change: runs of different changes never share a cell dir or a cache."""
    text = json.dumps({"scale_factor": scale_factor, "field": field}, sort_keys=True)
    return f"f{scale_factor:g}-" + hashlib.sha256(text.encode()).hexdigest()[:10]


def parse_field(text: str | None) -> dict[str, tuple[float, float]]:
    from .world import FIELD_RANGES

    if not text:
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--field: not JSON ({err}): {text!r}") from None
    out = {}
    for name, rng in (raw.items() if isinstance(raw, dict) else [(None, None)]):
        if name not in FIELD_RANGES:
            raise SystemExit(f"--field: unknown condition {name!r}; expected an object over {sorted(FIELD_RANGES)}")
        if not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(v, (int, float)) for v in rng) and rng[0] <= rng[1]):
            raise SystemExit(f"--field: {name} must be [low, high] with low <= high, got {rng!r}")
        out[name] = (float(rng[0]), float(rng[1]))
    return out


def apply(scale_factor: float, field: dict[str, tuple[float, float]]) -> None:
    """Make the change in this process (the run command then runs in it)."""
    from ..methods import base
    from . import world

    if scale_factor <= 0:
        raise SystemExit(f"--scale-factor must be > 0, got {scale_factor}")
    if scale_factor != 1.0:
        base.ClassifierModule.logit_scale = property(lambda self: self.clip.logit_scale.detach().exp() * scale_factor)
    world.FIELD_RANGES.update(field)


@torch.no_grad()
def train_fit(module, dm) -> dict[str, float]:
    """How the trained classifier predicts its training images (one pass, the test transform), in %:
    fit_noisy — mislabelled images predicted as their given, wrong label (memorised noise);
    fit_true_of_noisy — mislabelled images predicted as their true class; fit_clean — correctly
    labelled images predicted right. Chance is 100 / classes."""
    was = module.training
    module.eval()
    pred, given, true = [], [], []
    for batch in dm.train_eval_dataloader():
        pred.append(module.logits(batch["x"].to(getattr(module, "device", "cpu"))).argmax(1).cpu())
        given.append(batch["label"])
        true.append(batch["clean_label"])
    module.train(was)
    pred, given, true = torch.cat(pred), torch.cat(given), torch.cat(true)
    wrong = given != true

    def pct(mask: torch.Tensor, hit: torch.Tensor) -> float:
        return float(100.0 * hit[mask].float().mean()) if bool(mask.any()) else float("nan")

    return {"train/fit_noisy": pct(wrong, pred == given), "train/fit_true_of_noisy": pct(wrong, pred == true),
            "train/fit_clean": pct(~wrong, pred == given), "train/mislabelled": float(100.0 * wrong.float().mean())}


def _report_fit() -> None:
    """Add train_fit to the metrics the run records (task.collect_metrics is looked up at call time)."""
    from .. import task

    collect = task.collect_metrics

    def collect_with_fit(module, dm):
        metrics = collect(module, dm)
        metrics.update(train_fit(module, dm))
        print("probe: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if k.startswith("train/")), flush=True)
        return metrics

    task.collect_metrics = collect_with_fit


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, overrides = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(prog="python -m noisy_prompt.synthetic.probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale-factor", type=float, default=1.0)
    ap.add_argument("--field", default=None, help="JSON object: condition -> [low, high]")
    ap.add_argument("--root", default=os.environ.get("NOISY_PROMPT_PROBES", str(Path.home() / "noisy_prompt" / "probes")),
                    help="probe runs and caches go under ROOT/<change> (env NOISY_PROMPT_PROBES)")
    args = ap.parse_args(ours)
    field = parse_field(args.field)
    if any(o in ("-m", "--multirun") for o in overrides):
        # a launcher may run cells in other processes, which would not carry the in-memory change
        raise SystemExit("probe: one cell per call (no -m / --multirun): the change lives in this process only")
    if any(o.split("=", 1)[0].lstrip("+") in ("paths.log_dir", "paths.cache_dir") for o in overrides):
        raise SystemExit("probe: paths.log_dir / paths.cache_dir are set by the probe (--root), not on its command line")
    apply(args.scale_factor, field)
    _report_fit()
    where = Path(args.root) / probe_tag(args.scale_factor, field)
    print(f"probe: scale factor {args.scale_factor:g}, field {field or 'as committed'}; runs under {where}", flush=True)
    from ..run import main as run_main

    sys.argv = [sys.argv[0], *overrides, f"paths.log_dir={where / 'runs'}", f"paths.cache_dir={where / 'cache'}"]
    run_main()


if __name__ == "__main__":
    main()
