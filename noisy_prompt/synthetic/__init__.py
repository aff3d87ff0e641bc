"""Built-in synthetic world: patterned coloured shapes, their captions and descriptions, and a small
CLIP pretrained on them, so that the default run, the demo and the tests need no download."""
from ..clip.factory import BUILTIN_WEIGHTS_DIR
from .captions import class_descriptions
from .dataset import RENDER_VERSION, read_synthetic
from .world import CLASSNAMES, COLOURS, DOWNSTREAM_STYLE, PATTERNS, SHAPES, STYLES, downstream_classes

# open_clip `local-dir:` folder of the committed weights: open_clip.create_model("local-dir:" + str(...)).
SYNTHETIC_CLIP_DIR = BUILTIN_WEIGHTS_DIR / "synthetic-clip"

__all__ = [
    "CLASSNAMES", "COLOURS", "DOWNSTREAM_STYLE", "PATTERNS", "RENDER_VERSION", "SHAPES", "STYLES", "SYNTHETIC_CLIP_DIR",
    "class_descriptions", "downstream_classes", "read_synthetic",
]
