"""Benchmarks (not tests: they print numbers). `python -m noisy_prompt.bench <what> [--help]`:

prompt  DP-SEP step time and memory of the three text paths (dassl / cut / prefix), CPU or GPU (`make bench`)
gpu     the device suite, under 5 minutes on one GPU (`make bench-gpu`)
loader  images/s of the training loader on a generated tree of JPEGs against the decode limit of this machine
tango   TANGO's training epoch against a plain CE fine-tuning epoch (ViT-B/16, random weights, CPU)
cell    one cell's wall-time breakdown by phase, and old-vs-new comparisons of whole cells (metrics must match)

Each module imports only `prompt` (the shared helpers), never another benchmark: no import circle.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {"prompt": "prompt", "gpu": "gpu", "loader": "loader", "tango": "tango", "cell": "cell"}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        raise SystemExit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    what, rest = argv[0], argv[1:]
    module = importlib.import_module(f"noisy_prompt.bench.{COMMANDS[what]}")
    prog = f"python -m noisy_prompt.bench {what}"
    module.main(rest, prog=prog)
