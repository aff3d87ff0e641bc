"""`python -m noisy_prompt.sweep <table> [--stage N|NAME] [--cells key=v1,v2 ...] [--dry-run] [--launcher slurm] [--force] [-- overrides]`

The command, kept at its name: the sweep file format is noisy_prompt/sweeps/plan.py, the runner
noisy_prompt/sweeps/launch.py. The names below are re-exported for code that imports `noisy_prompt.sweep`."""
from noisy_prompt.sweeps.launch import (  # noqa: F401
    CONF_DIR,
    check_extra_overrides,
    compose_run_dirs,
    hydra_command,
    main,
    run_plan,
    slurm_plugin_available,
)
from noisy_prompt.sweeps.plan import (  # noqa: F401
    REPO_ROOT,
    SWEEPS_DIR,
    CellFilterError,
    Grid,
    Job,
    SweepFileError,
    SweepPlan,
    filter_plan,
    filter_stage,
    format_value,
    load_sweep,
    override_key,
    parse_cell_filters,
    read_layouts,
)

if __name__ == "__main__":
    raise SystemExit(main())
