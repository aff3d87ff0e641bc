"""Words about the synthetic world: pretraining captions and per-class descriptions.

Caption convention (this is what makes downstream prompt learning worthwhile): a caption either
mentions how the photo was taken ("a tinted photo of a red circle.") and then names the true
colour, or it does not, and then it names the colour the shape *appears* to have, the way people
caption what they see. Under the warm tint some reds look orange and purples look red, so the plain
template "a photo of a {}." misreads tinted images, while a context that says "tinted" reads them
right; a learned prompt context can find that.
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

from .world import COLOURS, SHAPES, STYLES, Scene, split_classname

# How each style is named when a caption mentions it; "{x}" is the object phrase ("red circle",
# possibly with size words), "{a}" its article.
STYLE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "dim": (
        "a dim photo of {a} {x}.",
        "a dark photo of {a} {x}.",
        "{a} {x} in dim light.",
        "a photo of {a} {x} in the dark.",
        "a low-light photo of {a} {x}.",
    ),
    "blurry": (
        "a blurry photo of {a} {x}.",
        "a blurred photo of {a} {x}.",
        "{a} {x}, out of focus.",
        "an out-of-focus photo of {a} {x}.",
        "a blurry {x}.",
    ),
    "striped": (
        "a photo of {a} {x} on a striped background.",
        "{a} {x} on a striped background.",
        "{a} {x} in front of stripes.",
        "a photo of {a} {x} on stripes.",
        "{a} {x} against a striped pattern.",
    ),
    "dotted": (
        "a photo of {a} {x} on a dotted background.",
        "{a} {x} on a dotted background.",
        "{a} {x} in front of dots.",
        "a photo of {a} {x} on polka dots.",
        "{a} {x} against a dotted pattern.",
    ),
    "tinted": (
        "a tinted photo of {a} {x}.",
        "{a} {x} in a tinted photo.",
        "a warm tinted photo of {a} {x}.",
        "a tinted picture of {a} {x}.",
        "a photo of {a} {x} with a warm tint.",
    ),
}

PLAIN_TEMPLATES: tuple[str, ...] = (
    "a photo of {a} {x}.",
    "{a} {x}.",
    "a picture of {a} {x}.",
    "an image of {a} {x}.",
    "a photo of the {x}.",
    "there is {a} {x} in the image.",
    "a drawing of {a} {x}.",
    "{x}.",
)


@dataclass(frozen=True)
class CaptionMix:
    """How pretraining captions are drawn (recorded in train_config.json)."""

    # Probability that a caption of a non-plain image names its style.
    p_mention_style: dict[str, float] = field(
        default_factory=lambda: {"dim": 0.6, "blurry": 0.6, "striped": 0.6, "dotted": 0.6, "tinted": 0.5}
    )
    p_size: float = 0.25  # add "small"/"large"
    p_position: float = 0.2  # add "on the left", ...
    p_bare_article: float = 0.3  # write "a" before a vowel too, as the plain template does

    def to_dict(self) -> dict:
        return asdict(self)


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def pretraining_caption(scene: Scene, rng: np.random.Generator, mix: CaptionMix = CaptionMix()) -> str:
    """One caption for `scene`, drawn with `rng` under the convention described in the module doc."""
    mentions = scene.style != "plain" and rng.random() < mix.p_mention_style.get(scene.style, 0.0)
    colour = scene.colour if (mentions or scene.style == "plain") else scene.apparent_colour
    obj = f"{colour} {scene.shape}"
    if rng.random() < mix.p_size:
        obj = f"{scene.size_word} {obj}"
    article = "a" if rng.random() < mix.p_bare_article else _article(obj)
    templates = STYLE_TEMPLATES[scene.style] if mentions else PLAIN_TEMPLATES
    text = templates[int(rng.integers(len(templates)))].format(a=article, x=obj)
    if rng.random() < mix.p_position:
        text = f"{text[:-1]} {scene.position_phrase}."
    return text


# ---------------------------------------------------------------------------------------------
# Class descriptions (anchors for TANGO): attributes in varied wording.

SHAPE_FACTS: dict[str, tuple[str, ...]] = {
    "circle": (
        "a round shape",
        "a shape with no corners",
        "a perfectly round disc",
        "a shape with one smooth curved edge",
        "a filled round disc",
    ),
    "square": (
        "a shape with four equal sides",
        "a shape with four right-angled corners",
        "a box-like shape with straight edges",
        "a four-sided shape",
        "a block with four corners",
    ),
    "triangle": (
        "a shape with three corners",
        "a shape with three straight sides",
        "a three-sided shape",
        "a pointed shape with three edges",
        "a wedge with three tips",
    ),
    "star": (
        "a shape with five points",
        "a shape with five pointed tips",
        "a spiky five-pointed shape",
        "a shape with sharp points around its centre",
        "a shape like a twinkling star",
    ),
    "cross": (
        "a plus sign",
        "a shape made of two crossing bars",
        "a shape with four arms meeting in the middle",
        "a shape like a plus symbol",
        "two bars crossing at right angles",
    ),
    "ring": (
        "a hollow circle",
        "a round shape with a hole in the middle",
        "a donut-shaped outline",
        "a circular band",
        "a thick round loop",
    ),
}

COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "bright red", "deep red", "tomato red", "cherry red"),
    "orange": ("orange", "bright orange", "deep orange", "tangerine orange", "pumpkin orange"),
    "yellow": ("yellow", "bright yellow", "lemon yellow", "golden yellow", "sunny yellow"),
    "green": ("green", "bright green", "grass green", "leaf green", "deep green"),
    "cyan": ("cyan", "bright cyan", "aqua cyan", "turquoise cyan", "deep cyan"),
    "blue": ("blue", "bright blue", "royal blue", "deep blue", "cobalt blue"),
    "purple": ("purple", "bright purple", "violet purple", "deep purple", "plum purple"),
}

DESCRIPTION_TEMPLATES: tuple[str, ...] = (
    "{fact} coloured {col}.",
    "a {name} is {fact} that is {col}.",
    "a {col} {shape}, which is {fact}.",
    "{fact}, painted {col}.",
    "a picture of {fact} in {col}.",
    "the {shape} is {col} and looks like {fact}.",
    "a {name} looks like {fact} with a {col} fill.",
    "{fact} whose colour is {col}.",
)

assert set(SHAPE_FACTS) == set(SHAPES) and set(COLOUR_WORDS) == set(COLOURS) and set(STYLE_TEMPLATES) | {"plain"} == set(STYLES)


def max_descriptions() -> int:
    return len(DESCRIPTION_TEMPLATES) * 5 * 5


def class_descriptions(classname: str, k: int = 40) -> list[str]:
    """`k` distinct descriptive sentences of a class, the same list on every call.

    Each sentence names the colour and describes the shape by its attributes (corners, points,
    holes), like the LLM-written descriptions used for real datasets.
    """
    colour, shape = split_classname(classname)
    facts, cols = SHAPE_FACTS[shape], COLOUR_WORDS[colour]
    combos = [(t, f, c) for t in DESCRIPTION_TEMPLATES for f in facts for c in cols]
    if not 1 <= k <= len(combos):
        raise ValueError(f"class_descriptions: k={k} but this world has 1..{len(combos)} sentences per class")
    rng = np.random.default_rng(zlib.crc32(f"{colour} {shape}".encode()))
    # Round-robin over templates (in a per-class shuffled order) so that even a small k varies the
    # wording instead of repeating one template with different facts.
    rounds: dict[int, list[int]] = {}
    uses: dict[str, int] = {}
    for i in rng.permutation(len(combos)):
        template = combos[i][0]
        rounds.setdefault(uses.get(template, 0), []).append(int(i))
        uses[template] = uses.get(template, 0) + 1
    chosen = [i for r in sorted(rounds) for i in rounds[r]]
    out = []
    for i in chosen[:k]:
        t, f, c = combos[i]
        out.append(t.format(fact=f, col=c, shape=shape, name=f"{colour} {shape}"))
    return out
