"""What-if probes of the built-in world, for whoever designs the next one (docs/world-probes.md).

Runs one cell of the run command with a change to the world or its geometry:
  --scale-factor F   the logit scale every method sees is multiplied by F: the config key
                     `+backbone.logit_scale_factor=F` (F < 1: a compressed image-text geometry like real
                     CLIP's, whose true-class cosines spread over about 0.08 against this world's 0.45;
                     F > 1: a sharper one). It is a setting like any other: its own run dir and config hash.
  --field JSON       downstream field-condition ranges replacing world.FIELD_RANGES entries,
                     e.g. '{"tint": [0.8, 1.3], "clutter": [5, 8]}' (strengths beyond the
                     pretraining ranges: a wider gap between pretraining and the field). The world has no
                     config key for them, so this one change is made in this process's memory.
Every prompt-tuning run records how the trained classifier predicts its own training labels
(`train_fit/*` and `train/loss_final` in its results.json, the TrainFit callback); the probe prints them
at the end: does a method take in the wrong labels (memorise) or predict the true ones through them?
A probe is evidence about the world, not a method or a world: the calibration (`make calibrate`) judges
only the world as committed. A field change is in neither the config hash nor the world's data digest
(the source is unchanged), so probe runs and cached features go under a folder of their own, named after
the field change, never under the default log and cache dirs.

    python -m noisy_prompt.tools.probe --scale-factor 0.3 -- \\
        backbone=synthetic data=synthetic model=ptnl noise=sym80 seed=1 data.recipe.prompt.lr=0.02
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path


def probe_tag(field: dict) -> str:
    """A folder name per field change: runs of different worlds never share a cell dir or a cache."""
    text = json.dumps({"field": {k: list(v) for k, v in sorted(field.items())}}, sort_keys=True)
    return ("field-" + hashlib.sha256(text.encode()).hexdigest()[:10]) if field else "as-committed"


def parse_field(text: str | None) -> dict[str, tuple[float, float]]:
    from noisy_prompt.synthetic.world import FIELD_RANGES

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


def apply_field(field: dict[str, tuple[float, float]]) -> None:
    """Make the field change in this process (the run command then runs in it)."""
    from noisy_prompt.synthetic import world

    world.FIELD_RANGES.update(field)


def scale_overrides(scale_factor: float) -> list[str]:
    """The override that multiplies the logit scale (none for 1: the preset's run dir and hash)."""
    if not (0 < scale_factor < math.inf):
        raise SystemExit(f"--scale-factor must be a finite number > 0, got {scale_factor}")
    return [] if scale_factor == 1.0 else [f"+backbone.logit_scale_factor={scale_factor:g}"]


def check_overrides(overrides: list[str], prog: str) -> None:
    if any(o in ("-m", "--multirun") for o in overrides):
        # a launcher may run cells in other processes, which would not carry the in-memory field change
        raise SystemExit(f"{prog}: one cell per call (no -m / --multirun): the field change lives in this process only")
    if any(o.split("=", 1)[0].lstrip("+") in ("paths.log_dir", "paths.cache_dir") for o in overrides):
        raise SystemExit(f"{prog}: paths.log_dir / paths.cache_dir are set by {prog} (--root), not on its command line")
    if any(o.split("=", 1)[0].lstrip("+") == "backbone.logit_scale_factor" for o in overrides):
        raise SystemExit(f"{prog}: give the scale factor as --scale-factor, not as an override")


def fit_line(results: dict) -> str:
    m = results.get("metrics") or {}
    parts = [f"{k} {float(v):.4f}" for k, v in sorted(m.items()) if k.startswith("train_fit/") or k == "train/loss_final"]
    return ", ".join(parts) or "no train_fit metrics (a model that does not train, or labels without known truth)"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, overrides = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(prog="python -m noisy_prompt.tools.probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale-factor", type=float, default=1.0, help="multiplies the logit scale (backbone.logit_scale_factor)")
    ap.add_argument("--field", default=None, help="JSON object: condition -> [low, high]")
    ap.add_argument("--root", default=os.environ.get("NOISY_PROMPT_PROBES", str(Path.home() / "noisy_prompt" / "probes")),
                    help="probe runs and caches go under ROOT/<field change> (env NOISY_PROMPT_PROBES)")
    args = ap.parse_args(ours)
    check_overrides(overrides, "probe")
    field = parse_field(args.field)
    overrides = [*overrides, *scale_overrides(args.scale_factor)]
    apply_field(field)
    where = Path(args.root) / probe_tag(field)
    print(f"probe: scale factor {args.scale_factor:g}, field {field or 'as committed'}; runs under {where}", flush=True)
    from noisy_prompt.run import main as run_main
    from noisy_prompt.tools.headfit import compose

    overrides += [f"paths.log_dir={where / 'runs'}", f"paths.cache_dir={where / 'cache'}"]
    run_dir = Path(str(compose(overrides).run_dir))
    sys.argv = [sys.argv[0], *overrides]
    try:
        run_main()
    except SystemExit as err:  # Hydra's main exits on a user error; the probe's own report follows a success only
        if err.code not in (None, 0):
            raise
    results = run_dir / "results.json"
    if results.is_file():
        print(f"probe: {fit_line(json.loads(results.read_text()))} ({results})", flush=True)


if __name__ == "__main__":
    main()
