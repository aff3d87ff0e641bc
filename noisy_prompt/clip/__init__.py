"""CLIP access: one factory over open_clip, the prompt text encoder, and cached image features."""
from noisy_prompt.clip.factory import ClipBundle, create_clip, resolve_model_name
from noisy_prompt.clip.prompt_encoder import PromptTextEncoder

__all__ = ["ClipBundle", "create_clip", "resolve_model_name", "PromptTextEncoder"]
