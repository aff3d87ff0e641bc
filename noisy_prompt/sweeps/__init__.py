"""Sweeps: the sweep file format (`plan`: read, check, expand and filter `sweeps/<table>.yaml`; pure) and
the runner that launches a plan as Hydra multiruns and reports each cell (`launch`). The YAML files
themselves live in the repository's top-level sweeps/ folder (`plan.SWEEPS_DIR`).

Nothing is imported here, so `from noisy_prompt.sweeps import plan` (the reporting code does) never
loads the launcher."""
