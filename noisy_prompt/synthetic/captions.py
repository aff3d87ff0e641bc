"""Words about the synthetic world: pretraining captions and per-class descriptions.

Captions are varied on purpose (dozens of templates, distractor words before and after the object
phrase, irrelevant attributes, sometimes a partial object phrase), so that the text tower learns to
find the class phrase wherever it sits: that is the language prior that keeps a learned prompt
context from erasing the class name.

Caption convention (what gives downstream prompt learning something to learn): a caption may name
the photo's conditions ("a blurry, tinted photo of a red star."); when it names the tint it gives the
shape's true colour, and when it does not it names the colour the shape *appears* to have under the
tint, the way people caption what they see. A context that says "tinted" therefore reads shifted
images a little better than the plain template.
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

from .world import BACKGROUNDS, COLOURS, CONDITIONS, LIGHTS, OUTLINES, PATTERNS, SHAPES, Scene, split_classname

# Adjectives for the photo when a caption names a condition.
CONDITION_WORDS: dict[str, tuple[str, ...]] = {
    "tint": ("tinted", "warm-tinted", "tinted", "warm"),
    "blur": ("blurry", "blurred", "out-of-focus", "blurry"),
    "dim": ("dim", "dark", "low-light", "dim"),
    "clutter": ("cluttered", "messy", "cluttered", "busy"),
}
# The phrase the calibration's "template that names the shift" uses, in this fixed order.
SHIFT_TEMPLATE = "a tinted, blurry, dim, cluttered photo of a {}."

# "{p}" is the photo phrase with its condition adjectives ("blurry, dim photo"), "{pa}" its article,
# "{a}" the article of the object phrase "{x}".
PHOTO_TEMPLATES: tuple[str, ...] = (
    "{pa} {p} of {a} {x}.",
    "{pa} {p} showing {a} {x}.",
    "this is {pa} {p} of {a} {x}.",
    "{a} {x} in {pa} {p}.",
    "{pa} {p} of the {x}.",
    "my {p} of {a} {x}.",
    "{pa} {p} with {a} {x} in it.",
    "{a} {x}, {p}.",
    "{pa} {p} that shows {a} {x}.",
    "here is {pa} {p} of {a} {x}.",
)
PLAIN_TEMPLATES: tuple[str, ...] = (
    "a photo of {a} {x}.",
    "{a} {x}.",
    "a picture of {a} {x}.",
    "an image of {a} {x}.",
    "a photo of the {x}.",
    "there is {a} {x} in the image.",
    "a drawing of {a} {x}.",
    "{x}.",
    "a snapshot of {a} {x}.",
    "this is {a} {x}.",
    "a picture showing {a} {x}.",
    "{a} {x} on a grey background.",
    "look at this {x}.",
    "a rendering of {a} {x}.",
    "the {x}.",
    "an example of {a} {x}.",
    "a photo that shows {a} {x}.",
    "i saw {a} {x}.",
    "a sketch of {a} {x}.",
    "a {x} in the picture.",
    "it is {a} {x}.",
    "a cropped photo of {a} {x}.",
    "a good photo of {a} {x}.",
    "a nice picture of the {x}.",
)
PHOTO_WORDS: tuple[str, ...] = ("photo", "picture", "image", "shot", "snapshot")
# Distractor words before and after the caption (none of them names a colour, pattern or shape).
LEADS: tuple[str, ...] = (
    "look:", "wow,", "today:", "new post:", "from my album:", "item 42:", "found this:", "see here,", "fig. 3:",
    "photo 17:", "hey,", "ok,", "random:", "caption:", "at home:", "my favourite:", "in the lab:", "art class:",
)
TAILS: tuple[str, ...] = (
    "on the table", "from the archive", "taken yesterday", "in high resolution", "for sale", "drawn by hand",
    "with a soft shadow", "on grey paper", "at noon", "by a friend", "nice", "in the museum", "from the catalogue",
    "again", "in my notebook", "near the window", "at the fair", "on the wall",
)
PATTERN_WORDS: dict[str, tuple[str, ...]] = {
    "solid": ("solid", "plain", "flat"),
    "striped": ("striped",),
    "spotted": ("spotted",),
    "checkered": ("checkered",),
}


# World 3's instance attributes in words (phrases that follow the object phrase). A grey background,
# no outline and no directional light are not named: captions name what stands out.
BACKGROUND_PHRASES: dict[str, tuple[str, ...]] = {
    "grass": ("on grass", "on the lawn", "on green grass"),
    "sky": ("against the sky", "against a blue sky", "in the sky"),
    "bricks": ("on a brick wall", "against bricks", "on red bricks"),
    "tiles": ("on tiles", "on a tiled floor", "on white tiles"),
    "sand": ("on sand", "on the beach", "on yellow sand"),
    "wood": ("on wood", "on a wooden table", "on wooden boards"),
    "snow": ("in the snow", "on snow", "on white snow"),
    "night": ("at night", "in the dark night", "under the stars"),
}
OUTLINE_PHRASES: dict[str, tuple[str, ...]] = {
    "thin": ("with a thin dark outline", "with a thin black edge", "outlined thinly"),
    "thick": ("with a thick dark outline", "with a thick black edge", "outlined in bold black"),
}
LIGHT_PHRASES: dict[str, tuple[str, ...]] = {
    side: (f"lit from the {side}", f"with light from the {side}", f"bright on the {side}")
    for side in ("left", "right", "top", "bottom")
}
SHADOW_PHRASES: tuple[str, ...] = ("casting a shadow", "with a shadow", "with a dark shadow")
OCCLUDER_PHRASES: tuple[str, ...] = ("partly hidden by a grey bar", "behind a grey bar", "crossed by a grey bar")
COMPANION_TEMPLATES: tuple[str, ...] = ("next to a small {c} {s}", "with a small {c} {s} in the {k}",
                                        "and a little {c} {s}", "beside a tiny {c} {s}")


@dataclass(frozen=True)
class CaptionMix:
    """How pretraining captions are drawn (recorded in train_config.json)."""

    # Probability that a caption names a condition the photo has (per condition).
    p_mention: dict[str, float] = field(default_factory=lambda: {c: 0.5 for c in CONDITIONS})
    p_size: float = 0.25  # "small"/"large" before the object phrase
    p_position: float = 0.2  # "on the left", ...
    p_solid_word: float = 0.15  # "a solid red circle" (solid class names omit it)
    p_drop_colour: float = 0.06  # partial phrases ("a striped circle"), as real captions are partial
    p_drop_pattern: float = 0.06
    p_lead: float = 0.25  # a distractor before the caption
    p_tail: float = 0.25  # a distractor after it
    p_bare_article: float = 0.3  # write "a" before a vowel too, as the plain template does
    p_instance: float = 0.4  # world 3: probability that a caption names each instance attribute the photo has
    max_instance: int = 2  # at most this many per caption (captions stay within the 32-token context)

    def to_dict(self) -> dict:
        return asdict(self)


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def object_phrase(scene: Scene, colour: str, rng: np.random.Generator, mix: CaptionMix) -> str:
    words = []
    if rng.random() < mix.p_size:
        words.append(scene.size_word)
    drop_colour = rng.random() < mix.p_drop_colour
    drop_pattern = rng.random() < mix.p_drop_pattern
    if not drop_colour or (drop_pattern and scene.pattern != "solid"):
        words.append(colour)
    if scene.pattern != "solid" and not (drop_pattern and not drop_colour):
        words.append(scene.pattern)
    elif scene.pattern == "solid" and rng.random() < mix.p_solid_word:
        words.append(PATTERN_WORDS["solid"][int(rng.integers(3))])
    words.append(scene.shape)
    return " ".join(words)


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def instance_phrases(scene: Scene, rng: np.random.Generator, mix: CaptionMix) -> list[str]:
    """Phrases naming some of the scene's instance attributes (world 3; none for world 2)."""
    inst = scene.instance
    if not inst:
        return []
    present: list[str] = []
    if inst["background"] != "grey":
        present.append(_pick(BACKGROUND_PHRASES[inst["background"]], rng))
    if inst["companion"]:
        shape, colour, corner = inst["companion"]
        present.append(_pick(COMPANION_TEMPLATES, rng).format(c=colour, s=shape, k=corner))
    if inst["outline"] != "none":
        present.append(_pick(OUTLINE_PHRASES[inst["outline"]], rng))
    if inst["light"] != "none":
        present.append(_pick(LIGHT_PHRASES[inst["light"]], rng))
    if inst["shadow"]:
        present.append(_pick(SHADOW_PHRASES, rng))
    if inst["occluder"]:
        present.append(_pick(OCCLUDER_PHRASES, rng))
    named = [p for p in present if rng.random() < mix.p_instance]
    if len(named) > mix.max_instance:
        keep = sorted(rng.choice(len(named), mix.max_instance, replace=False))
        named = [named[i] for i in keep]
    return named


def pretraining_caption(scene: Scene, rng: np.random.Generator, mix: CaptionMix = CaptionMix()) -> str:
    """One caption for `scene`, drawn with `rng` under the convention described in the module doc."""
    named = [c for c in CONDITIONS if c in scene.conditions and rng.random() < mix.p_mention.get(c, 0.0)]
    colour = scene.colour if "tint" in named else scene.apparent_colour
    obj = object_phrase(scene, colour, rng, mix)
    extra = instance_phrases(scene, rng, mix)
    if extra:
        obj = f"{obj} {', '.join(extra)}"
    article = "a" if rng.random() < mix.p_bare_article else _article(obj)
    if named:
        order = rng.permutation(len(named))
        adjs = ", ".join(CONDITION_WORDS[named[i]][int(rng.integers(4))] for i in order)
        photo = f"{adjs} {PHOTO_WORDS[int(rng.integers(len(PHOTO_WORDS)))]}"
        t = PHOTO_TEMPLATES[int(rng.integers(len(PHOTO_TEMPLATES)))]
        pa = "a" if rng.random() < mix.p_bare_article else _article(photo)
        text = t.format(p=photo, pa=pa, a=article, x=obj)
    else:
        text = PLAIN_TEMPLATES[int(rng.integers(len(PLAIN_TEMPLATES)))].format(a=article, x=obj)
    if rng.random() < mix.p_position:
        text = f"{text[:-1]} {scene.position_phrase}."
    if rng.random() < mix.p_tail:
        text = f"{text[:-1]} {TAILS[int(rng.integers(len(TAILS)))]}."
    if rng.random() < mix.p_lead:
        text = f"{LEADS[int(rng.integers(len(LEADS)))]} {text}"
    return text


# ---------------------------------------------------------------------------------------------
# Class descriptions (anchors for TANGO): attributes in varied wording, true of every photo of the
# class whatever its conditions (they never mention light, tint, blur or clutter).

SHAPE_FACTS: dict[str, tuple[str, ...]] = {
    "circle": ("a round shape", "a shape with no corners", "a perfectly round disc", "a filled round disc"),
    "square": ("a shape with four equal sides", "a shape with four right-angled corners", "a four-sided block",
               "a box-like shape with straight edges"),
    "triangle": ("a shape with three corners", "a shape with three straight sides", "a three-sided shape",
                 "a pointed wedge with three tips"),
    "star": ("a shape with five points", "a spiky five-pointed shape", "a shape with five pointed tips",
             "a shape with sharp points around its centre"),
    "cross": ("a plus sign", "a shape made of two crossing bars", "a shape with four arms meeting in the middle",
              "two bars crossing at right angles"),
    "ring": ("a hollow circle", "a round shape with a hole in the middle", "a donut-shaped band",
             "a thick round loop"),
    "diamond": ("a rhombus standing on one tip", "a shape with four slanted sides", "a tall four-pointed shape",
                "a kite-like shape with four corners"),
    "hexagon": ("a shape with six sides", "a six-cornered shape", "a shape like a honeycomb cell",
                "a six-sided flat shape"),
}
PATTERN_FACTS: dict[str, tuple[str, ...]] = {
    "solid": ("in one flat colour", "with no pattern", "filled evenly", "with a plain fill"),
    "striped": ("covered in stripes", "with parallel bands", "with a striped fill", "marked with lines"),
    "spotted": ("covered in spots", "with a dotted fill", "with round spots", "marked with dots"),
    "checkered": ("with a checkerboard fill", "covered in small squares", "with a chequered pattern",
                  "marked like a chessboard"),
}
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "bright red", "deep red", "cherry red"),
    "orange": ("orange", "bright orange", "tangerine orange", "pumpkin orange"),
    "yellow": ("yellow", "bright yellow", "lemon yellow", "golden yellow"),
    "green": ("green", "bright green", "grass green", "leaf green"),
    "cyan": ("cyan", "bright cyan", "aqua cyan", "turquoise cyan"),
    "blue": ("blue", "bright blue", "royal blue", "cobalt blue"),
    "purple": ("purple", "violet purple", "deep purple", "plum purple"),
    "pink": ("pink", "light pink", "rose pink", "soft pink"),
}
DESCRIPTION_TEMPLATES: tuple[str, ...] = (
    "{fact} coloured {col}, {pat}.",
    "a {name} is {fact} that is {col} and {pat}.",
    "a {col} {shape} {pat}, which is {fact}.",
    "{fact}, painted {col}, {pat}.",
    "a picture of {fact} in {col}, {pat}.",
    "the {shape} is {col}, {pat}, and looks like {fact}.",
)

assert set(SHAPE_FACTS) == set(SHAPES) and set(COLOUR_WORDS) == set(COLOURS) and set(PATTERN_FACTS) == set(PATTERNS)
assert set(CONDITION_WORDS) == set(CONDITIONS)
assert set(BACKGROUND_PHRASES) == set(BACKGROUNDS) - {"grey"} and set(OUTLINE_PHRASES) == set(OUTLINES) - {"none"}
assert set(LIGHT_PHRASES) == set(LIGHTS) - {"none"}


def max_descriptions() -> int:
    return len(DESCRIPTION_TEMPLATES) * 4 * 4 * 4


def class_descriptions(classname: str, k: int = 40) -> list[str]:
    """`k` distinct descriptive sentences of a class, the same list on every call.

    Each sentence names the colour, describes the shape by its attributes (corners, points, holes)
    and the fill pattern, like the LLM-written descriptions used for real datasets.
    """
    colour, pattern, shape = split_classname(classname)
    facts, cols, pats = SHAPE_FACTS[shape], COLOUR_WORDS[colour], PATTERN_FACTS[pattern]
    combos = [(t, f, c, p) for t in DESCRIPTION_TEMPLATES for f in facts for c in cols for p in pats]
    if not 1 <= k <= len(combos):
        raise ValueError(f"class_descriptions: k={k} but this world has 1..{len(combos)} sentences per class")
    rng = np.random.default_rng(zlib.crc32(classname.strip().lower().encode()))
    # Round-robin over templates (in a per-class shuffled order) so that even a small k varies the
    # wording instead of repeating one template with different facts.
    rounds: dict[int, list[int]] = {}
    uses: dict[str, int] = {}
    for i in rng.permutation(len(combos)):
        template = combos[i][0]
        rounds.setdefault(uses.get(template, 0), []).append(int(i))
        uses[template] = uses.get(template, 0) + 1
    chosen = [i for r in sorted(rounds) for i in rounds[r]]
    name = " ".join(classname.strip().lower().split())
    return [combos[i][0].format(fact=combos[i][1], col=combos[i][2], pat=combos[i][3], shape=shape, name=name)
            for i in chosen[:k]]
