"""Zero-shot prompt templates per dataset, keyed by our data config name.

The CoOp datasets use exactly the single template of CoOp's zero-shot CLIP (`CUSTOM_TEMPLATES` in
CoOp's trainers/zsclip.py) so that zero-shot numbers are comparable with the papers. The full-data
datasets have no such reference; their templates follow the same "a photo of a {}, a type of X."
pattern. A template has one `{}` slot for the class name (with `_` already replaced by a space).
"""
from __future__ import annotations

DEFAULT_TEMPLATES: list[str] = ["a photo of a {}."]

TEMPLATES: dict[str, list[str]] = {
    # CoOp zero-shot CLIP (CUSTOM_TEMPLATES), one template per dataset
    "imagenet": ["a photo of a {}."],
    "caltech101": ["a photo of a {}."],
    "oxford_pets": ["a photo of a {}, a type of pet."],
    "oxford_flowers": ["a photo of a {}, a type of flower."],
    "food101": ["a photo of {}, a type of food."],
    "dtd": ["{} texture."],
    "ucf101": ["a photo of a person doing {}."],
    "stanford_cars": ["a photo of a {}."],
    "fgvc_aircraft": ["a photo of a {}, a type of aircraft."],
    "sun397": ["a photo of a {}."],
    "eurosat": ["a centered satellite photo of {}."],
    # full-data / real-noise datasets (our choice, same pattern)
    "cifar100": ["a photo of a {}."],
    "cifar100n": ["a photo of a {}."],
    "animal10n": ["a photo of a {}, a type of animal."],
    "webvision": ["a photo of a {}."],  # ImageNet classes, so ImageNet's template
    "food101n": ["a photo of {}, a type of food."],  # Food-101 classes, so Food-101's template
    "clothing1m": ["a photo of a {}, a type of clothing."],
}


def templates_for(name: str) -> list[str]:
    """The templates of a dataset config name (a copy), or the plain CLIP template if unknown."""
    return list(TEMPLATES.get(name, DEFAULT_TEMPLATES))
