"""`python -m noisy_prompt.data verify ...`: see noisy_prompt/data/verify.py."""
from noisy_prompt.data.verify import main

if __name__ == "__main__":
    raise SystemExit(main())
