"""Moved to `noisy_prompt.methods.selection` (the one module below every method); kept as an alias so that
imports of the old name keep working."""
from noisy_prompt.methods.selection import PROGRESS_MIN_IMAGES, training_set_pass  # noqa: F401
