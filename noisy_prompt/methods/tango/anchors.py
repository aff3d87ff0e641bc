"""Anchor sentences for TANGO: CuPL-style description files and the template fallback.

Text only: encoding the sentences into anchors is the model's job. The project ships no
third-party sentences; a user points `model.anchors.path` at a JSON file
`{class name: [sentence, ...]}` (e.g. one generated with CuPL).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Mapping, Sequence

log = logging.getLogger(__name__)

# Written for this project: varied photo conditions, viewpoints and media, so that the K anchors
# of a class spread around its name the way LLM descriptions do.
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a cropped photo of a {}.",
    "a low resolution photo of the {}.",
    "a high resolution photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a photo of the {} in the wild.",
    "a photo of one {}.",
    "a photo of many {}.",
    "a black and white photo of a {}.",
    "a pixelated photo of the {}.",
    "a grainy photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a bad photo of the {}.",
    "a centered photo of a {}.",
    "a photo of a {} taken from above.",
    "a photo of a {} seen from the side.",
    "a photo of a {} in the distance.",
    "an outdoor photo of a {}.",
    "an indoor photo of the {}.",
    "a snapshot of a {}.",
    "a picture of a {}.",
    "an image showing a {}.",
    "an image of the {}.",
    "a rendering of a {}.",
    "a 3d model of a {}.",
    "a drawing of a {}.",
    "a sketch of the {}.",
    "a painting of a {}.",
    "a cartoon of a {}.",
    "an illustration of a {}.",
    "a sculpture of the {}.",
    "a toy {}.",
    "a plastic {}.",
    "an origami {}.",
    "a tattoo of a {}.",
    "embroidery of a {}.",
    "graffiti of a {}.",
    "a photo of a {} partly hidden behind something.",
    "a photo of a {} on a plain background.",
    "a photo of a {} in its usual surroundings.",
    "a photo of a typical {}.",
    "a photo of an unusual {}.",
    "a zoomed-in photo of part of a {}.",
    "a {} in a photo.",
)

def normalise_key(name: str) -> str:
    """Case-insensitive, `_` == space, runs of whitespace collapsed (some files hold 'head of a  crocodile')."""
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip().lower()


def load_cupl(path: str | Path) -> dict[str, list[str]]:
    """Read a description file `{class name: [sentence, ...]}`; clear errors name the path and key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"anchor description file not found: {path} (expected a JSON object "
            "{class name: [sentence, ...]}, e.g. generated with CuPL; set model.anchors.path, "
            "or leave it empty to use template sentences)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a JSON object {{class name: [sentence, ...]}}, got a {type(data).__name__}"
        )
    for key, sentences in data.items():
        if not isinstance(sentences, list):
            raise ValueError(
                f"{path}: entry {key!r} must be a list of sentences, got a {type(sentences).__name__}"
            )
        for i, sentence in enumerate(sentences):
            if not isinstance(sentence, str):
                raise ValueError(
                    f"{path}: entry {key!r} item {i} must be a string, got {type(sentence).__name__} {sentence!r}"
                )
    return data


def template_sentences(classname: str, k: int) -> list[str]:
    """k template sentences for a class; the template list is cycled when k exceeds its length."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    name = re.sub(r"\s+", " ", classname.replace("_", " ")).strip()
    return [TEMPLATES[i % len(TEMPLATES)].format(name) for i in range(k)]


def _index_descriptions(descriptions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for key, sentences in descriptions.items():
        norm = normalise_key(key)
        if norm in index:
            # Two spellings of one class (e.g. "car_side" and "Car side"): keep both sets in file order.
            log.warning("anchor descriptions: keys normalising to %r appear more than once; merging them", norm)
            index[norm].extend(sentences)
        else:
            index[norm] = list(sentences)
    return index


def match_descriptions(
    classnames: Sequence[str],
    descriptions: Mapping[str, Sequence[str]] | None,
    k: int = 40,
    aliases: Mapping[str, str] | None = None,
) -> tuple[list[list[str]], list[str]]:
    """Per class, up to k description sentences (file order), or k templates when it has none.

    Keys match case-insensitively with `_` == space; `aliases` maps a class name to the file key
    to use instead (tried first, then the class name itself). descriptions=None means no file:
    every class falls back. Returns (sentences per class, class names that fell back), and logs
    the fallen-back classes.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    index = _index_descriptions(descriptions) if descriptions is not None else {}
    alias_index = {normalise_key(name): normalise_key(key) for name, key in (aliases or {}).items()}
    sentences: list[list[str]] = []
    fell_back: list[str] = []
    for classname in classnames:
        norm = normalise_key(classname)
        candidates = [alias_index[norm], norm] if norm in alias_index else [norm]
        found: list[str] = []
        for candidate in candidates:
            found = [s for s in index.get(candidate, []) if s.strip()]
            if found:
                break
        if found:
            sentences.append(found[:k])
        else:
            sentences.append(template_sentences(classname, k))
            fell_back.append(classname)
    if fell_back:
        reason = "no description file" if descriptions is None else "no descriptions in the file"
        log.warning(
            "anchors: %d of %d classes use template sentences (%s): %s",
            len(fell_back),
            len(classnames),
            reason,
            ", ".join(fell_back),
        )
    return sentences, fell_back
