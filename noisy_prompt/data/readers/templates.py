"""Zero-shot prompt templates and description-file aliases per dataset, keyed by the reader's name.

The CoOp datasets use exactly the single template of CoOp's zero-shot CLIP (`CUSTOM_TEMPLATES` in
CoOp's trainers/zsclip.py) so that zero-shot numbers are comparable with the papers. The full-data
datasets have no such reference; their templates follow the same "a photo of a {}, a type of X."
pattern. A template has one `{}` slot for the class name (with `_` already replaced by a space).
"""
from __future__ import annotations

DEFAULT_TEMPLATES: list[str] = ["a photo of a {}."]


def clean_classname(name: str) -> str:
    """A class name as prompts write it: folder names use underscores for spaces ('sea_lion')."""
    return name.replace("_", " ")


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


# Per dataset: class name (as its reader gives it, normalised: lower case, `_` = space) -> the key public
# description files (CuPL-style {class name: [sentence, ...]}, TANGO's anchors) use for it, for names that
# `_`/space and case folding do not reconcile. Keep to names that are known to differ. The reader publishes
# its entry (DatasetSplits.description_aliases), so a method never looks a dataset up by name.
DESCRIPTION_ALIASES: dict[str, dict[str, str]] = {
    # CoOp's Caltech-101 names are the folder names; CLIP-style files (which CuPL-like generators
    # use) phrase some classes differently. CoOp keeps "Faces" (renamed "face") and drops
    # "Faces_easy"; in CLIP's list "Faces" is "off-center face".
    "caltech101": {
        "face": "off-center face",
        "car side": "side of a car",
        "cougar body": "body of a cougar cat",
        "cougar face": "face of a cougar cat",
        "crocodile head": "head of a crocodile",
        "flamingo head": "head of a flamingo",
        "snoopy": "snoopy (cartoon beagle)",
        "yin yang": "yin and yang symbol",
    },
    # CLIP's ImageNet list names two pairs of classes identically ("missile" for n03773504 and
    # n04008634, "sunglasses" for n04355933 and n04356056), so a file keyed by those names has a
    # single entry per pair. Both members share it: the WordNet names of the second members map
    # onto it (CLIP names match it directly).
    "imagenet": {
        "projectile": "missile",
        "sunglass": "sunglasses",
    },
}


def description_aliases_for(name: str) -> dict[str, str]:
    """The description-file aliases of a reader name (a copy); empty when its class names need none."""
    return dict(DESCRIPTION_ALIASES.get(name, {}))
