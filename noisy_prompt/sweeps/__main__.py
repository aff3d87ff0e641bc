"""`python -m noisy_prompt.sweeps ...` = `python -m noisy_prompt.sweep ...` (noisy_prompt/sweeps/launch.py)."""
from noisy_prompt.sweeps.launch import main

if __name__ == "__main__":
    raise SystemExit(main())
