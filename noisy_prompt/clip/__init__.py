"""CLIP access: one factory over open_clip (`create_clip`: built-in, local, file or open_clip-tag weights,
with their digest) and the learnable-prompt text encoder with its exact fast paths (`prefix_forward`).
Image features are cached by the data layer (noisy_prompt/data/features.py), not here."""
from noisy_prompt.clip.factory import ClipBundle, create_clip, resolve_model_name
from noisy_prompt.clip.prompt_encoder import PromptTextEncoder

__all__ = ["ClipBundle", "create_clip", "resolve_model_name", "PromptTextEncoder"]
