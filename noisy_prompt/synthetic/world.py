"""A procedural world of patterned coloured shapes: 8 colours x 4 patterns x 8 shapes = 256 classes,
rendered at 32x32 RGB.

Every image is a pure function of (world seed, split, index, style, class): its randomness comes from
a private `np.random.Generator` seeded with those values, never from global RNG state, so the same
image comes back in any process, worker or order.

A class is what the shape *is* (colour, fill pattern, outline); a photo's *conditions* are how it was
taken: a warm tint, blur, dim light and background clutter, each a continuous strength. Pretraining
photos get random conditions (none, some or all, at any strength); the downstream splits (style
"field") get all four at mild strengths, so every class loses a little and none breaks: the
conditions never change the shape or its pattern, and a tint moves a colour's hue by a few degrees,
so only shapes whose hue already lies near a colour boundary can look like the neighbouring colour
(`Scene.apparent_colour`). See `captions.py` for how captions talk about conditions.
"""
from __future__ import annotations

import colorsys
import zlib
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

IMAGE_SIZE = 32

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon")
# Prototype hue (degrees), saturation and value of each colour name.
COLOUR_HSV: dict[str, tuple[float, float, float]] = {
    "red": (0.0, 0.88, 0.88),
    "orange": (30.0, 0.90, 0.95),
    "yellow": (57.0, 0.85, 0.95),
    "green": (125.0, 0.80, 0.72),
    "cyan": (185.0, 0.85, 0.85),
    "blue": (228.0, 0.82, 0.88),
    "purple": (278.0, 0.70, 0.80),
    "pink": (325.0, 0.55, 0.95),
}
COLOURS: tuple[str, ...] = tuple(COLOUR_HSV)
# Fill patterns; a solid shape's class name does not mention its pattern ("red circle"), the way
# people name plain things ("red striped circle" otherwise).
PATTERNS: tuple[str, ...] = ("solid", "striped", "spotted", "checkered")


def classname_of(colour: str, pattern: str, shape: str) -> str:
    return f"{colour} {shape}" if pattern == "solid" else f"{colour} {pattern} {shape}"


# Class id = (colour, pattern, shape) in row-major order.
CLASS_ATTRS: tuple[tuple[str, str, str], ...] = tuple((c, p, s) for c in COLOURS for p in PATTERNS for s in SHAPES)
CLASSNAMES: tuple[str, ...] = tuple(classname_of(*a) for a in CLASS_ATTRS)
NUM_CLASSES = len(CLASSNAMES)

# Styles of a dataset split: "plain" (no conditions) or "field" (the downstream conditions).
STYLES: tuple[str, ...] = ("plain", "field")
DOWNSTREAM_STYLE = "field"
CONDITIONS: tuple[str, ...] = ("tint", "blur", "dim", "clutter")

# Downstream ("field") condition strengths, each drawn uniformly per image: mild and continuous.
# Set after pretraining so that zero-shot lands in target T2's band (45-75%, docs/synthetic-world.md): the milder first
# choice (tint 0.5-1, blur 0.55-0.95, dim 0.6-0.8, clutter 2-4) gave 82% zero-shot.
FIELD_RANGES: dict[str, tuple[float, float]] = {
    "tint": (0.6, 1.1),  # fraction of the full tint (TINT_HUE_DEGREES, TINT_LIGHT)
    "blur": (0.8, 1.2),  # Gaussian sigma in pixels
    "dim": (0.45, 0.65),  # brightness factor (1 = unchanged)
    "clutter": (3.0, 5.0),  # number of background blobs (rounded)
}
# Pretraining: each condition is present with probability PRETRAIN_P_CONDITION at a strength from
# these ranges, which cover the downstream ones with room on both sides.
PRETRAIN_RANGES: dict[str, tuple[float, float]] = {
    "tint": (0.2, 1.3),
    "blur": (0.4, 1.4),
    "dim": (0.35, 0.9),
    "clutter": (1.0, 6.0),
}
PRETRAIN_P_CONDITION = 0.4

# Full tint: hue rotation (degrees) and a warm light multiplying the channels.
TINT_HUE_DEGREES = 14.0
TINT_LIGHT = np.array([1.0, 0.95, 0.88], dtype=np.float32)

MAX_TILT = np.deg2rad(25.0)  # shapes are tilted by at most this much

# ---------------------------------------------------------------------------------------------
# Instance attributes (world 3): what varies from one photo of a class to the next, besides the
# conditions, in ways captions can name. The probes (docs/world-probes.md) found that world 2's
# images of a class differ along only ~11 directions (its shared field conditions), so no head could
# fit arbitrary wrong labels; each attribute below changes a different part of the picture, drawn
# independently per image, and captions name each one in some of the photos that have it.
BACKGROUNDS: tuple[str, ...] = ("grey", "grass", "sky", "bricks", "tiles", "sand", "wood", "snow", "night")
OUTLINES: tuple[str, ...] = ("none", "thin", "thick")
LIGHTS: tuple[str, ...] = ("none", "left", "right", "top", "bottom")
CORNERS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
P_COMPANION, P_SHADOW, P_OCCLUDER = 0.5, 0.4, 0.25
OUTLINE_P = (0.5, 0.25, 0.25)
LIGHT_P = (0.4, 0.15, 0.15, 0.15, 0.15)


@dataclass(frozen=True)
class WorldSpec:
    """One version of the world: which images its names and keys stand for.

    Versions coexist so that the weights pretrained on one (and the records made with them) stay
    usable after the next: `backbone=synthetic_v2` renders world 2, the default backbone world 3.
    """

    version: int
    radius: tuple[float, float]  # range of the class shape's radius in pixels
    instance: bool  # draw instance attributes (background, companion, outline, light, shadow, occluder)
    key_prefix: str  # first part of every image key (keys also seed augmentations: never change one)
    field_ranges: dict = field(hash=False, default_factory=dict)  # downstream condition strengths


WORLDS: dict[int, WorldSpec] = {
    2: WorldSpec(2, (8.5, 13.0), False, "synthetic-v3", FIELD_RANGES),
    # Smaller class shapes leave room for a companion object in a corner.
    3: WorldSpec(3, (7.0, 11.0), True, "world3", FIELD_RANGES),
}
# The world of the default backbone (conf/backbone/synthetic.yaml). World 3 stays a named alternative
# (backbone=synthetic_v3): calibrated, it held fewer targets than world 2 (docs/synthetic-world.md).
DEFAULT_WORLD = 2


def world_spec(version: int) -> WorldSpec:
    if int(version) not in WORLDS:
        raise ValueError(f"unknown synthetic world version {version!r}: expected one of {sorted(WORLDS)}")
    return WORLDS[int(version)]


# Split streams: one id per split so that splits never share a generator state.
_SPLIT_IDS = {"train": 1, "val": 2, "test": 3, "pretrain": 4}
_SUPERSAMPLE = 2
# Generator streams of one image beyond the renderer's 0 (content) and 1 (pixels): world 3's instance
# attributes and their pixels. (Pretraining uses 3 and 4 for captions.)
_INSTANCE_STREAM, _INSTANCE_PIXELS_STREAM = 5, 6


def class_index(colour: str, shape: str, pattern: str = "solid") -> int:
    return (COLOURS.index(colour) * len(PATTERNS) + PATTERNS.index(pattern)) * len(SHAPES) + SHAPES.index(shape)


def split_classname(classname: str) -> tuple[str, str, str]:
    """'red circle' -> ('red', 'solid', 'circle'); 'red striped circle' -> ('red', 'striped', 'circle')."""
    parts = classname.strip().lower().split()
    ok = len(parts) in (2, 3) and parts[0] in COLOUR_HSV and parts[-1] in SHAPES
    if ok and len(parts) == 3:
        ok = parts[1] in PATTERNS and parts[1] != "solid"
    if not ok:
        raise ValueError(
            f"unknown synthetic class name {classname!r}: expected '<colour> <shape>' or '<colour> <pattern> <shape>' "
            f"with colour in {list(COLOURS)}, pattern in {list(PATTERNS[1:])} and shape in {list(SHAPES)}"
        )
    return parts[0], (parts[1] if len(parts) == 3 else "solid"), parts[-1]


def check_style(style: str) -> str:
    if style not in STYLES:
        raise ValueError(f"unknown synthetic style {style!r}: expected one of {list(STYLES)}")
    return style


def downstream_classes(world_seed: int = 0, num_classes: int = 64) -> tuple[int, ...]:
    """The class ids of the downstream datasets: a fixed random subset per world seed (sorted).

    Pretraining sees all NUM_CLASSES classes; downstream cells use a subset so that prompt tuning
    (one text-tower pass per class per step) stays cheap on a CPU.
    """
    if not 2 <= num_classes <= NUM_CLASSES:
        raise ValueError(f"num_classes must be in 2..{NUM_CLASSES}, got {num_classes}")
    if num_classes == NUM_CLASSES:
        return tuple(range(NUM_CLASSES))
    rng = np.random.default_rng([int(world_seed), 9_000_009])
    return tuple(sorted(int(i) for i in rng.choice(NUM_CLASSES, size=num_classes, replace=False)))


def _split_id(split: str) -> int:
    if split in _SPLIT_IDS:
        return _SPLIT_IDS[split]
    # Other stream names (e.g. a probe) still get a stable, process-independent id.
    return 1000 + zlib.crc32(split.encode("utf-8"))


def scene_rng(world_seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    """The private generator of one image (stream 0: content, 1: rendering, 2+: free for callers)."""
    if index < 0:
        raise ValueError(f"image index must be >= 0, got {index}")
    return np.random.default_rng([int(world_seed), _split_id(split), int(index), int(stream)])


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one image and to describe it in words."""

    label: int  # global class id
    colour: str
    pattern: str
    shape: str
    conditions: dict = field(hash=False)  # condition name -> strength, only the ones present
    rgb: tuple[float, float, float]  # fill colour before the conditions
    radius: float  # pixels
    center: tuple[float, float]  # (x, y) in pixels
    angle: float  # radians
    seed_words: tuple[int, int, int]  # (world seed, split id, index): seeds the texture/noise draws
    world: int = 2  # the WorldSpec version that drew it
    # Instance attributes (world 3; empty in world 2): background, companion (shape, colour, corner) or
    # None, outline, light, shadow (bool), occluder (bool).
    instance: dict = field(hash=False, default_factory=dict)

    @property
    def classname(self) -> str:
        return classname_of(self.colour, self.pattern, self.shape)

    @property
    def size_word(self) -> str:
        if self.radius < 9.0:
            return "small"
        if self.radius > 11.5:
            return "large"
        return "medium-sized"

    @property
    def position_phrase(self) -> str:
        dx, dy = self.center[0] - IMAGE_SIZE / 2, self.center[1] - IMAGE_SIZE / 2
        if max(abs(dx), abs(dy)) < 2.5:
            return "in the centre"
        if abs(dx) >= abs(dy):
            return "on the left" if dx < 0 else "on the right"
        return "at the top" if dy < 0 else "at the bottom"

    @property
    def apparent_colour(self) -> str:
        """The colour name a viewer would give the shape as it looks under the photo's tint."""
        t = self.conditions.get("tint", 0.0)
        if t <= 0:
            return self.colour
        return nearest_colour_name(tint_pixels(np.asarray(self.rgb, dtype=np.float32)[None], t)[0])


def _draw_conditions(rng: np.random.Generator, style: str, field_ranges: dict = FIELD_RANGES) -> dict:
    if style == "field":
        return {c: float(rng.uniform(*field_ranges[c])) for c in CONDITIONS}
    if style == "plain":
        return {}
    if style == "pretrain":
        out = {}
        for c in CONDITIONS:
            present = rng.random() < PRETRAIN_P_CONDITION
            strength = float(rng.uniform(*PRETRAIN_RANGES[c]))  # drawn either way: fixed stream layout
            if present:
                out[c] = strength
        return out
    raise ValueError(f"unknown synthetic style {style!r}: expected one of {list(STYLES)} or 'pretrain'")


def _draw_instance(rng: np.random.Generator) -> dict:
    """World 3's instance attributes, from their own stream (world 2's draws stay as they were)."""
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    companion_present = rng.random() < P_COMPANION
    companion = (SHAPES[int(rng.integers(len(SHAPES)))], COLOURS[int(rng.integers(len(COLOURS)))],
                 CORNERS[int(rng.integers(len(CORNERS)))])  # drawn either way: fixed stream layout
    outline = OUTLINES[int(rng.choice(len(OUTLINES), p=OUTLINE_P))]
    light = LIGHTS[int(rng.choice(len(LIGHTS), p=LIGHT_P))]
    shadow = bool(rng.random() < P_SHADOW)
    occluder = bool(rng.random() < P_OCCLUDER)
    return {"background": background, "companion": companion if companion_present else None, "outline": outline,
            "light": light, "shadow": shadow, "occluder": occluder}


def sample_scene(world_seed: int, split: str, index: int, style: str, label: int, world: int = 2) -> Scene:
    """Scene `index` of `split`, showing class `label` (a global class id) under `style`'s conditions,
    as world version `world` draws it."""
    if not 0 <= int(label) < NUM_CLASSES:
        raise ValueError(f"class id must be in 0..{NUM_CLASSES - 1}, got {label}")
    spec = world_spec(world)
    rng = scene_rng(world_seed, split, index)
    colour, pattern, shape = CLASS_ATTRS[int(label)]
    hue, sat, val = COLOUR_HSV[colour]
    hue = (hue + rng.uniform(-7.0, 7.0)) % 360.0
    sat = float(np.clip(sat * rng.uniform(0.85, 1.1), 0.0, 1.0))
    val = float(np.clip(val * rng.uniform(0.85, 1.06), 0.0, 1.0))
    rgb = colorsys.hsv_to_rgb(hue / 360.0, sat, val)
    radius = float(rng.uniform(*spec.radius))
    margin = radius + 1.0
    center = (float(rng.uniform(margin, IMAGE_SIZE - margin)), float(rng.uniform(margin, IMAGE_SIZE - margin)))
    angle = float(rng.uniform(-MAX_TILT, MAX_TILT))
    conditions = _draw_conditions(rng, style, spec.field_ranges)
    instance = _draw_instance(scene_rng(world_seed, split, index, _INSTANCE_STREAM)) if spec.instance else {}
    return Scene(
        label=int(label), colour=colour, pattern=pattern, shape=shape, conditions=conditions,
        rgb=tuple(float(x) for x in rgb), radius=radius, center=center, angle=angle,
        seed_words=(int(world_seed), _split_id(split), int(index)), world=spec.version, instance=instance,
    )


# ---------------------------------------------------------------------------------------------
# Colour helpers


def _rgb_to_hue_degrees(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    d = np.where(mx - mn > 1e-6, mx - mn, 1.0)
    h = np.where(mx == r, (g - b) / d % 6.0, np.where(mx == g, (b - r) / d + 2.0, (r - g) / d + 4.0))
    return (h * 60.0) % 360.0


_PROTO_HUES = np.array([COLOUR_HSV[c][0] for c in COLOURS], dtype=np.float32)


def nearest_colour_name(rgb: np.ndarray) -> str:
    """Name of the colour whose prototype hue is closest (circularly) to the hue of `rgb`."""
    hue = float(_rgb_to_hue_degrees(np.asarray(rgb, dtype=np.float32)))
    dist = np.abs((_PROTO_HUES - hue + 180.0) % 360.0 - 180.0)
    return COLOURS[int(dist.argmin())]


def _hue_rotation_matrix(degrees: float) -> np.ndarray:
    # Rotation about the grey axis of RGB space: greys stay grey, hues turn by about `degrees`.
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    k = 1.0 / 3.0
    sq = np.sqrt(k)
    return np.array(
        [
            [c + (1 - c) * k, k * (1 - c) - sq * s, k * (1 - c) + sq * s],
            [k * (1 - c) + sq * s, c + k * (1 - c), k * (1 - c) - sq * s],
            [k * (1 - c) - sq * s, k * (1 - c) + sq * s, c + k * (1 - c)],
        ],
        dtype=np.float32,
    )


def tint_pixels(rgb: np.ndarray, strength: float) -> np.ndarray:
    """A warm tint of `strength` (1 = full) on an (..., 3) float array: hue rotation, then warm light."""
    light = 1.0 + strength * (TINT_LIGHT - 1.0)
    m = (_hue_rotation_matrix(TINT_HUE_DEGREES * strength).T * light[None, :]).astype(np.float32)
    return np.clip(rgb @ m * (1.0 + 0.06 * strength) + 0.03 * strength, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Rendering

_SUB = IMAGE_SIZE * _SUPERSAMPLE
_SUB_COORDS = (np.arange(_SUB, dtype=np.float32) + 0.5) / _SUPERSAMPLE
_SUB_X, _SUB_Y = np.meshgrid(_SUB_COORDS, _SUB_COORDS)
_PIX = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5
_PIX_X, _PIX_Y = np.meshgrid(_PIX, _PIX)


def _upsample_matrix(n_in: int, n_out: int) -> np.ndarray:
    # Linear interpolation from n_in control points to n_out pixels, as a matrix (fast texture).
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    w = pos - lo
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] = 1 - w
    m[np.arange(n_out), lo + 1] = w
    return m


_UP4 = _upsample_matrix(4, IMAGE_SIZE)


def _shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in the shape's own frame, where the shape fits the unit disc."""
    rho2 = u * u + v * v
    if shape == "circle":
        return rho2 <= 0.92
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.74
    if shape == "triangle":
        # Equilateral, circumradius 1: three half-planes at the apothem distance 0.5.
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            phi = np.pi / 2 + 2 * np.pi * k / 3
            inside &= u * np.cos(phi) + v * np.sin(phi) <= 0.5
        return inside
    if shape == "star":
        theta = np.arctan2(v, u)
        sector = (theta % (2 * np.pi / 5)) / (2 * np.pi / 5)  # 0..1 within one point's sector
        tri = np.abs(sector - 0.5) * 2  # 1 at the tip, 0 between tips
        return np.sqrt(rho2) <= 0.42 + 0.58 * tri
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.32) & (av <= 0.95)) | ((av <= 0.32) & (au <= 0.95))
    if shape == "ring":
        return (rho2 <= 1.0) & (rho2 >= 0.3)
    if shape == "diamond":
        return np.abs(u) / 0.75 + np.abs(v) <= 1.0
    if shape == "hexagon":
        # Regular hexagon with circumradius 0.95: three pairs of half-planes at the apothem.
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            phi = np.pi / 6 + np.pi * k / 3
            inside &= np.abs(u * np.cos(phi) + v * np.sin(phi)) <= 0.95 * np.sqrt(3) / 2
        return inside
    raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")


def _shape_frame(scene: Scene, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(scene.angle), np.sin(scene.angle)
    dx, dy = x - scene.center[0], y - scene.center[1]
    return (c * dx + s * dy) / scene.radius, (-s * dx + c * dy) / scene.radius


def shape_alpha(scene: Scene) -> np.ndarray:
    """Anti-aliased coverage (32x32 in [0, 1]) of the scene's shape, by 2x2 supersampling."""
    u, v = _shape_frame(scene, _SUB_X, _SUB_Y)
    inside = _shape_inside(scene.shape, u, v).astype(np.float32)
    return inside.reshape(IMAGE_SIZE, _SUPERSAMPLE, IMAGE_SIZE, _SUPERSAMPLE).mean(axis=(1, 3))


def pattern_marks(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Where the fill pattern darkens the shape (32x32 in [0, 1]; zeros for a solid shape)."""
    if scene.pattern == "solid":
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    # In pixels, in the shape's rotated frame, so the pattern turns with the shape.
    c, s = np.cos(scene.angle), np.sin(scene.angle)
    dx, dy = _SUB_X - scene.center[0], _SUB_Y - scene.center[1]
    u, v = c * dx + s * dy, -s * dx + c * dy
    if scene.pattern == "striped":
        period = rng.uniform(4.0, 5.0)
        m = np.mod(u / period + rng.uniform(), 1.0) < 0.45
    elif scene.pattern == "spotted":
        spacing = rng.uniform(4.2, 5.0)
        fu = np.mod(u + rng.uniform(0, spacing), spacing) - spacing / 2
        fv = np.mod(v + rng.uniform(0, spacing), spacing) - spacing / 2
        m = fu * fu + fv * fv <= rng.uniform(1.2, 1.45) ** 2
    elif scene.pattern == "checkered":
        cell = rng.uniform(2.6, 3.2)
        m = (np.floor(u / cell + rng.uniform()) + np.floor(v / cell + rng.uniform())) % 2 == 0
    else:
        raise ValueError(f"unknown pattern {scene.pattern!r}; expected one of {list(PATTERNS)}")
    return m.astype(np.float32).reshape(IMAGE_SIZE, _SUPERSAMPLE, IMAGE_SIZE, _SUPERSAMPLE).mean(axis=(1, 3))


def _background(rng: np.random.Generator) -> np.ndarray:
    grey = rng.uniform(0.35, 0.75)
    base = grey + rng.uniform(-0.04, 0.04, size=3)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(theta) * (_PIX_X - 16) + np.sin(theta) * (_PIX_Y - 16)) / 16.0
    texture = _UP4 @ rng.normal(0.0, 1.0, size=(4, 4)).astype(np.float32) @ _UP4.T
    lum = rng.uniform(0.03, 0.12) * ramp + rng.uniform(0.02, 0.06) * texture
    return (base[None, None, :] + lum[:, :, None]).astype(np.float32)


def _clutter(img: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` small, muted blobs on the background (drawn before the shape, so they never hide it)."""
    for _ in range(n):
        cx, cy = rng.uniform(0, IMAGE_SIZE, size=2)
        r = rng.uniform(1.3, 2.6)
        rgb = np.asarray(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.1, 0.3), rng.uniform(0.25, 0.85)), dtype=np.float32)
        a = np.clip(r + 0.5 - np.sqrt((_PIX_X - cx) ** 2 + (_PIX_Y - cy) ** 2), 0.0, 1.0)[:, :, None]
        img = img * (1 - a) + rgb[None, None, :] * a
    return img


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    taps = np.arange(-3, 4, dtype=np.float32)
    k = np.exp(-0.5 * (taps / sigma) ** 2)
    k /= k.sum()
    p = np.pad(img, ((3, 3), (3, 3), (0, 0)), mode="edge")
    rows = sum(w * p[:, i : i + IMAGE_SIZE] for i, w in enumerate(k))
    return sum(w * rows[i : i + IMAGE_SIZE] for i, w in enumerate(k)).astype(np.float32)


def _hsv(h: float, sat: float, val: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, sat, val), dtype=np.float32)


def _scene_background(kind: str, rng: np.random.Generator) -> np.ndarray:
    """World 3's backgrounds: muted textures a caption can name ("on grass", "at night")."""
    if kind == "grey":
        return _background(rng)
    noise = rng.normal(0.0, 1.0, size=(IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    smooth = _UP4 @ rng.normal(0.0, 1.0, size=(4, 4)).astype(np.float32) @ _UP4.T
    y = _PIX_Y / IMAGE_SIZE
    if kind == "grass":
        base = _hsv(rng.uniform(0.25, 0.33), rng.uniform(0.35, 0.5), rng.uniform(0.4, 0.55))
        streaks = np.repeat(rng.normal(0.0, 1.0, size=(1, IMAGE_SIZE)), IMAGE_SIZE, 0).astype(np.float32)
        lum = 1.0 + 0.12 * streaks + 0.08 * noise
    elif kind == "sky":
        base = _hsv(rng.uniform(0.55, 0.6), rng.uniform(0.25, 0.4), rng.uniform(0.8, 0.92))
        lum = 1.0 - 0.25 * y + 0.04 * smooth
    elif kind == "bricks":
        base = _hsv(rng.uniform(0.0, 0.05), rng.uniform(0.4, 0.55), rng.uniform(0.5, 0.62))
        row = np.floor(_PIX_Y / 5.0)
        mortar = (np.mod(_PIX_Y, 5.0) < 1.0) | (np.mod(_PIX_X + 4.0 * np.mod(row, 2), 8.0) < 1.0)
        lum = np.where(mortar, 1.45, 1.0) + 0.05 * noise
    elif kind == "tiles":
        base = _hsv(rng.uniform(0.1, 0.15), rng.uniform(0.08, 0.15), rng.uniform(0.75, 0.85))
        cell = rng.uniform(7.0, 9.0)
        grout = (np.mod(_PIX_X, cell) < 1.0) | (np.mod(_PIX_Y, cell) < 1.0)
        lum = np.where(grout, 0.65, 1.0) + 0.03 * noise
    elif kind == "sand":
        base = _hsv(rng.uniform(0.1, 0.13), rng.uniform(0.3, 0.42), rng.uniform(0.75, 0.85))
        lum = 1.0 + 0.1 * noise + 0.05 * smooth
    elif kind == "wood":
        base = _hsv(rng.uniform(0.06, 0.09), rng.uniform(0.5, 0.65), rng.uniform(0.45, 0.58))
        grain = np.sin(_PIX_Y * rng.uniform(0.9, 1.3) + 2.5 * smooth)
        lum = 1.0 + 0.15 * grain + 0.04 * noise
    elif kind == "snow":
        base = _hsv(rng.uniform(0.55, 0.62), rng.uniform(0.03, 0.1), rng.uniform(0.88, 0.96))
        lum = 1.0 + 0.04 * noise + 0.04 * smooth
    elif kind == "night":
        base = _hsv(rng.uniform(0.6, 0.68), rng.uniform(0.4, 0.6), rng.uniform(0.12, 0.2))
        stars = (rng.random((IMAGE_SIZE, IMAGE_SIZE)) < 0.02).astype(np.float32)
        lum = 1.0 + 0.1 * smooth + 4.0 * stars
    else:
        raise ValueError(f"unknown background {kind!r}; expected one of {list(BACKGROUNDS)}")
    return np.clip(base[None, None, :] * lum[:, :, None], 0.0, 1.0).astype(np.float32)


_CORNER_XY = {"top left": (5.5, 5.5), "top right": (26.5, 5.5), "bottom left": (5.5, 26.5), "bottom right": (26.5, 26.5)}


def _composite(img: np.ndarray, alpha: np.ndarray, colour) -> np.ndarray:
    a = alpha[:, :, None]
    return img * (1.0 - a) + np.asarray(colour, dtype=np.float32)[None, None, :] * a


def _render_instance_under(scene: Scene, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What lies under the class shape: the companion object, then the shape's shadow."""
    inst = scene.instance
    if inst.get("companion"):
        shape, colour, corner = inst["companion"]
        cx, cy = _CORNER_XY[corner]
        small = replace(scene, shape=shape, radius=float(rng.uniform(3.2, 4.3)), angle=float(rng.uniform(-0.4, 0.4)),
                        center=(cx + float(rng.uniform(-1, 1)), cy + float(rng.uniform(-1, 1))))
        h, sat, val = COLOUR_HSV[colour]
        img = _composite(img, shape_alpha(small), _hsv(h / 360.0, sat, val))
    if inst.get("shadow"):
        d = float(rng.uniform(1.5, 2.5))
        shadow = shape_alpha(replace(scene, center=(scene.center[0] + d, scene.center[1] + d)))
        img = img * (1.0 - 0.5 * shadow[:, :, None])
    return img


def _render_instance_over(scene: Scene, img: np.ndarray, alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What lies over the class shape: its outline, an occluding bar, and a directional light."""
    inst = scene.instance
    if inst.get("outline", "none") != "none":
        grow = 1.0 if inst["outline"] == "thin" else 2.0
        ring = np.clip(shape_alpha(replace(scene, radius=scene.radius + grow)) - alpha, 0.0, 1.0)
        img = _composite(img, ring, (0.08, 0.08, 0.1))
    if inst.get("occluder"):
        offset = float(rng.uniform(-0.5, 0.5)) * scene.radius
        half = float(rng.uniform(1.5, 2.2))
        grey = float(rng.uniform(0.4, 0.6))
        coord = _PIX_X - scene.center[0] if rng.random() < 0.5 else _PIX_Y - scene.center[1]
        bar = np.clip(half + 0.5 - np.abs(coord - offset), 0.0, 1.0).astype(np.float32)
        img = _composite(img, bar, (grey, grey, grey))
    light = inst.get("light", "none")
    if light != "none":
        t = {"left": -(_PIX_X - 16), "right": _PIX_X - 16, "top": -(_PIX_Y - 16), "bottom": _PIX_Y - 16}[light] / 16.0
        img = img * (1.0 + float(rng.uniform(0.25, 0.35)) * t)[:, :, None]
    return np.clip(img, 0.0, 1.0)


def render_scene(scene: Scene) -> np.ndarray:
    """The scene as a (32, 32, 3) uint8 array."""
    rng = np.random.default_rng([*scene.seed_words, 1])
    # World 3's instance pixels draw from their own stream, so world 2's pixel draws are unchanged.
    irng = np.random.default_rng([*scene.seed_words, _INSTANCE_PIXELS_STREAM]) if scene.instance else None
    cond = scene.conditions
    img = _scene_background(scene.instance["background"], rng) if scene.instance else _background(rng)
    n_clutter = int(round(cond.get("clutter", 0.0)))
    if n_clutter:
        img = _clutter(img, n_clutter, rng)
    if scene.instance:
        img = _render_instance_under(scene, img, irng)
    alpha = shape_alpha(scene)[:, :, None]
    marks = pattern_marks(scene, rng)
    # A soft light across the shape so it is not a flat stamp; pattern marks are a darker shade of the fill.
    shade = 1.0 + rng.uniform(0.0, 0.12) * np.cos(rng.uniform(0, 2 * np.pi) - np.arctan2(_PIX_Y - 16, _PIX_X - 16))
    shade = shade * (1.0 - 0.55 * marks)
    fill = np.asarray(scene.rgb, dtype=np.float32)[None, None, :] * shade[:, :, None]
    img = img * (1.0 - alpha) + fill * alpha
    if scene.instance:
        img = _render_instance_over(scene, img, alpha[:, :, 0], irng)
    if "tint" in cond:
        img = tint_pixels(img, cond["tint"])
    if "blur" in cond:
        img = _blur(img, cond["blur"])
    if "dim" in cond:
        img = img * cond["dim"] + 0.04 * (1 - cond["dim"])  # darker and a little flatter
    noise = rng.normal(0.0, rng.uniform(0.01, 0.035), size=img.shape)
    img = np.clip(img + noise, 0.0, 1.0)
    return (img * 255.0 + 0.5).astype(np.uint8)


def render(world_seed: int, split: str, index: int, style: str, label: int, world: int = 2) -> np.ndarray:
    """Image `index` of `split` in `style`, showing global class `label`, as a (32, 32, 3) uint8 array."""
    return render_scene(sample_scene(world_seed, split, index, style, label, world))


def render_pil(world_seed: int, split: str, index: int, style: str, label: int, world: int = 2) -> Image.Image:
    return Image.fromarray(render(world_seed, split, index, style, label, world), mode="RGB")
