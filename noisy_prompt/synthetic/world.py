"""A procedural world of coloured shapes: 6 shapes x 7 colours = 42 classes, rendered at 32x32 RGB.

Every image is a pure function of (world seed, split, index, style): its randomness comes from a
private `np.random.Generator` seeded with those values, never from global RNG state, so the same
image comes back in any process, worker or order.

Styles change how a scene is photographed, not what it shows. One of them, "tinted", rotates hues
and casts a warm light over the whole image, so some shapes *look* like a neighbouring colour
(`Scene.apparent_colour`). That is what gives prompt learning something to learn downstream: see
`captions.py` for how captions talk about tinted photos.
"""
from __future__ import annotations

import colorsys
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGE_SIZE = 32

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
# Prototype hue (degrees), saturation and value of each colour name.
COLOUR_HSV: dict[str, tuple[float, float, float]] = {
    "red": (0.0, 0.88, 0.88),
    "orange": (30.0, 0.90, 0.95),
    "yellow": (56.0, 0.85, 0.95),
    "green": (125.0, 0.80, 0.72),
    "cyan": (185.0, 0.85, 0.85),
    "blue": (228.0, 0.82, 0.88),
    "purple": (280.0, 0.70, 0.78),
}
COLOURS: tuple[str, ...] = tuple(COLOUR_HSV)
CLASSNAMES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
NUM_CLASSES = len(CLASSNAMES)

STYLES: tuple[str, ...] = ("plain", "dim", "blurry", "striped", "dotted", "tinted")
# The style of the downstream splits: the plain template "a photo of a {}." does not mention it.
DOWNSTREAM_STYLE = "tinted"

# Tinted photos: hue rotation (degrees) and a warm light multiplying the channels.
TINT_HUE_DEGREES = 14.0
TINT_LIGHT = np.array([1.0, 0.86, 0.62], dtype=np.float32)

MAX_TILT = np.deg2rad(20.0)  # shapes are tilted by at most this much

# Split streams: one id per split so that splits never share a generator state.
_SPLIT_IDS = {"train": 1, "val": 2, "test": 3, "pretrain": 4}
_SUPERSAMPLE = 2


def class_index(colour: str, shape: str) -> int:
    return COLOURS.index(colour) * len(SHAPES) + SHAPES.index(shape)


def split_classname(classname: str) -> tuple[str, str]:
    """'red circle' -> ('red', 'circle'); a clear error for names outside this world."""
    parts = classname.strip().lower().split()
    if len(parts) != 2 or parts[0] not in COLOUR_HSV or parts[1] not in SHAPES:
        raise ValueError(
            f"unknown synthetic class name {classname!r}: expected '<colour> <shape>' with colour in "
            f"{list(COLOURS)} and shape in {list(SHAPES)}"
        )
    return parts[0], parts[1]


def check_style(style: str) -> str:
    if style not in STYLES:
        raise ValueError(f"unknown synthetic style {style!r}: expected one of {list(STYLES)}")
    return style


def _split_id(split: str) -> int:
    if split in _SPLIT_IDS:
        return _SPLIT_IDS[split]
    # Other stream names (e.g. a probe) still get a stable, process-independent id.
    return 1000 + zlib.crc32(split.encode("utf-8"))


def scene_rng(world_seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    """The private generator of one image (stream 0: content, 1: style, 2+: free for callers)."""
    if index < 0:
        raise ValueError(f"image index must be >= 0, got {index}")
    return np.random.default_rng([int(world_seed), _split_id(split), int(index), int(stream)])


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one image and to describe it in words."""

    label: int
    colour: str
    shape: str
    style: str
    rgb: tuple[float, float, float]  # fill colour before the style is applied
    radius: float  # pixels
    center: tuple[float, float]  # (x, y) in pixels
    angle: float  # radians
    seed_words: tuple[int, int, int]  # (world seed, split id, index): seeds the texture/noise draws

    @property
    def classname(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def size_word(self) -> str:
        if self.radius < 8.5:
            return "small"
        if self.radius > 11.0:
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
        """The colour name a viewer would give the shape as it looks after the style."""
        if self.style != "tinted":
            return self.colour
        return nearest_colour_name(_tint_pixels(np.asarray(self.rgb, dtype=np.float32)[None])[0])


def label_of(index: int) -> int:
    """Classes cycle with the index, so every split is balanced and labels need no rendering."""
    return index % NUM_CLASSES


def sample_scene(world_seed: int, split: str, index: int, style: str) -> Scene:
    check_style(style)
    rng = scene_rng(world_seed, split, index)
    label = label_of(index)
    colour, shape = COLOURS[label // len(SHAPES)], SHAPES[label % len(SHAPES)]
    hue, sat, val = COLOUR_HSV[colour]
    hue = (hue + rng.uniform(-7.0, 7.0)) % 360.0
    sat = float(np.clip(sat * rng.uniform(0.8, 1.1), 0.0, 1.0))
    val = float(np.clip(val * rng.uniform(0.8, 1.08), 0.0, 1.0))
    rgb = colorsys.hsv_to_rgb(hue / 360.0, sat, val)
    # Shapes stay roughly upright and not tiny: the task's difficulty is meant to come from the
    # style (see module doc), and a CPU-sized CLIP learns upright shapes within its budget.
    radius = float(rng.uniform(8.5, 13.0))
    margin = radius + 1.0
    center = (float(rng.uniform(margin, IMAGE_SIZE - margin)), float(rng.uniform(margin, IMAGE_SIZE - margin)))
    return Scene(
        label=label,
        colour=colour,
        shape=shape,
        style=style,
        rgb=tuple(float(x) for x in rgb),
        radius=radius,
        center=center,
        angle=float(rng.uniform(-MAX_TILT, MAX_TILT)),
        seed_words=(int(world_seed), _split_id(split), int(index)),
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
    m = np.array(
        [
            [c + (1 - c) * k, k * (1 - c) - sq * s, k * (1 - c) + sq * s],
            [k * (1 - c) + sq * s, c + k * (1 - c), k * (1 - c) - sq * s],
            [k * (1 - c) - sq * s, k * (1 - c) + sq * s, c + k * (1 - c)],
        ],
        dtype=np.float32,
    )
    return m


_TINT_MATRIX = (_hue_rotation_matrix(TINT_HUE_DEGREES).T * TINT_LIGHT[None, :]).astype(np.float32)


def _tint_pixels(rgb: np.ndarray) -> np.ndarray:
    """Tinted style on an (..., 3) float array: hue rotation, then a warm light, then a lift."""
    return np.clip(rgb @ _TINT_MATRIX * 1.08 + 0.04, 0.0, 1.0)


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
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if shape == "ring":
        return (rho2 <= 1.0) & (rho2 >= 0.3)
    raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")


def shape_alpha(scene: Scene) -> np.ndarray:
    """Anti-aliased coverage (32x32 in [0, 1]) of the scene's shape, by 2x2 supersampling."""
    c, s = np.cos(scene.angle), np.sin(scene.angle)
    dx, dy = _SUB_X - scene.center[0], _SUB_Y - scene.center[1]
    u = (c * dx + s * dy) / scene.radius
    v = (-s * dx + c * dy) / scene.radius
    inside = _shape_inside(scene.shape, u, v).astype(np.float32)
    return inside.reshape(IMAGE_SIZE, _SUPERSAMPLE, IMAGE_SIZE, _SUPERSAMPLE).mean(axis=(1, 3))


def _background(rng: np.random.Generator) -> np.ndarray:
    grey = rng.uniform(0.35, 0.75)
    base = grey + rng.uniform(-0.04, 0.04, size=3)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(theta) * (_PIX_X - 16) + np.sin(theta) * (_PIX_Y - 16)) / 16.0
    texture = _UP4 @ rng.normal(0.0, 1.0, size=(4, 4)).astype(np.float32) @ _UP4.T
    lum = rng.uniform(0.03, 0.12) * ramp + rng.uniform(0.02, 0.06) * texture
    return (base[None, None, :] + lum[:, :, None]).astype(np.float32)


def _pattern(style: str, rng: np.random.Generator) -> np.ndarray | None:
    """Luminance offsets (32x32) of a striped or dotted background, else None."""
    if style == "striped":
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(4.0, 7.0)
        phase = np.cos(theta) * _PIX_X + np.sin(theta) * _PIX_Y
        stripes = (np.mod(phase / period + rng.uniform(), 1.0) < 0.5).astype(np.float32)
        return (stripes - 0.5) * rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.4)
    if style == "dotted":
        spacing = rng.uniform(4.5, 7.0)
        ox, oy = rng.uniform(0, spacing, size=2)
        fx = np.mod(_PIX_X - ox, spacing) - spacing / 2
        fy = np.mod(_PIX_Y - oy, spacing) - spacing / 2
        dots = (fx * fx + fy * fy <= rng.uniform(1.0, 1.7) ** 2).astype(np.float32)
        return dots * rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.4)
    return None


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    taps = np.arange(-3, 4, dtype=np.float32)
    k = np.exp(-0.5 * (taps / sigma) ** 2)
    k /= k.sum()
    p = np.pad(img, ((3, 3), (3, 3), (0, 0)), mode="edge")
    rows = sum(w * p[:, i : i + IMAGE_SIZE] for i, w in enumerate(k))
    return sum(w * rows[i : i + IMAGE_SIZE] for i, w in enumerate(k)).astype(np.float32)


def render_scene(scene: Scene) -> np.ndarray:
    """The scene as a (32, 32, 3) uint8 array."""
    rng = np.random.default_rng([*scene.seed_words, 1])
    img = _background(rng)
    pattern = _pattern(scene.style, rng)
    if pattern is not None:
        img = img + pattern[:, :, None]
    alpha = shape_alpha(scene)[:, :, None]
    # A soft light across the shape so it is not a flat stamp.
    shade = 1.0 + rng.uniform(0.0, 0.12) * np.cos(rng.uniform(0, 2 * np.pi) - np.arctan2(_PIX_Y - 16, _PIX_X - 16))
    fill = np.asarray(scene.rgb, dtype=np.float32)[None, None, :] * shade[:, :, None]
    img = img * (1.0 - alpha) + fill * alpha
    if scene.style == "dim":
        img = img * rng.uniform(0.3, 0.45)
    elif scene.style == "blurry":
        img = _blur(img, rng.uniform(0.9, 1.4))
    elif scene.style == "tinted":
        img = _tint_pixels(img)
    noise = rng.normal(0.0, rng.uniform(0.01, 0.035), size=img.shape)
    img = np.clip(img + noise, 0.0, 1.0)
    return (img * 255.0 + 0.5).astype(np.uint8)


def render(world_seed: int, split: str, index: int, style: str) -> np.ndarray:
    """Image `index` of `split` in `style` as a (32, 32, 3) uint8 array."""
    return render_scene(sample_scene(world_seed, split, index, style))


def render_pil(world_seed: int, split: str, index: int, style: str) -> Image.Image:
    return Image.fromarray(render(world_seed, split, index, style), mode="RGB")
