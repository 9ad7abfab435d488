"""The shapes world: seeded scenes of 1-3 flat shapes with exact ground truth, and their captions.

    >>> from lab.world import make_scene, render
    >>> scene = make_scene(seed=0)
    >>> scene.caption                                   # doctest: +SKIP
    'a small red circle to the left of a large blue arrow pointing right on a white background'
    >>> image = render(scene)                           # (128, 128, 3) uint8
    >>> make_scene(seed=0, world=2).background          # doctest: +SKIP
    'navy and white striped'

API: ``make_scene(seed, split=..., world=1)``, ``render(scene)``, ``masks(scene)``, ``keypoints_visible(scene)``,
``Scene``/``Obj`` dataclasses with ``caption``, ``bbox``, ``keypoints``; ``SHAPES``, ``COLOURS``, ``BACKGROUNDS``,
``HELDOUT_PAIRS``, ``WORLDS``.

Worlds. ``world=1`` (the default, what the shipped models were trained on and every study measures) has flat black,
grey or white backgrounds and objects that never touch; its scenes, pixels and captions never change. ``world=2``
(``lab.world.world2``) keeps the objects, keypoints, captions' grammar and held-out compositions, and puts them on
backgrounds that vary (``lab.world.backgrounds``), with occlusion. A scene carries its world, so ``render``,
``masks`` and ``parse(image, world=...)`` follow it.

Every object is an upright polygon (or a disc) drawn without anti-aliasing, so the instance mask and the rendered
pixels agree exactly. Keypoints have names that follow meaning: an arrow's ``tip`` is where it points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 128

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (40, 70, 230),
    "yellow": (240, 210, 20),
    "purple": (150, 40, 200),
    "orange": (250, 130, 10),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "grey": (128, 128, 128), "white": (255, 255, 255)}
SIZES: dict[str, float] = {"small": 13.0, "large": 22.0}  # circumradius in pixels at IMAGE_SIZE = 128
SIZE_THRESHOLD = 17.5  # a fitted radius above this reads as "large"

# Unit polygons (circumradius 1, y down) and named keypoints in the same frame.
_HEX = [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in range(0, 360, 60)]
POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.72, -0.72), (0.72, -0.72), (0.72, 0.72), (-0.72, 0.72)],
    "triangle": [(0.0, -0.95), (0.9, 0.75), (-0.9, 0.75)],
    "hexagon": _HEX,
    "trapezoid": [(-0.45, -0.6), (0.45, -0.6), (0.95, 0.6), (-0.95, 0.6)],
    # pointing right; the left-pointing arrow is its mirror image
    "arrow": [(-0.95, -0.3), (0.05, -0.3), (0.05, -0.78), (0.95, 0.0), (0.05, 0.78), (0.05, 0.3), (-0.95, 0.3)],
}
KEYPOINTS: dict[str, dict[str, tuple[float, float]]] = {
    "circle": {"centre": (0, 0), "top": (0, -1), "bottom": (0, 1), "left": (-1, 0), "right": (1, 0)},
    "square": {"centre": (0, 0), "top_left": (-0.72, -0.72), "top_right": (0.72, -0.72),
               "bottom_right": (0.72, 0.72), "bottom_left": (-0.72, 0.72)},
    "triangle": {"centre": (0, 0.18), "apex": (0, -0.95), "bottom_right": (0.9, 0.75), "bottom_left": (-0.9, 0.75)},
    "hexagon": {"centre": (0, 0), "left": (-1, 0), "right": (1, 0)},
    "trapezoid": {"centre": (0, 0), "top_left": (-0.45, -0.6), "top_right": (0.45, -0.6),
                  "bottom_right": (0.95, 0.6), "bottom_left": (-0.95, 0.6)},
    "arrow": {"tip": (0.95, 0), "tail": (-0.95, 0), "barb_top": (0.05, -0.78), "barb_bottom": (0.05, 0.78),
              "centre": (0, 0)},
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "hexagon", "trapezoid", "arrow")

# Compositional hold-out: these (colour, shape) pairs and these relation phrasings never occur in training.
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("green", "triangle"), ("blue", "square"), ("yellow", "circle"), ("purple", "arrow")})
HELDOUT_RELATIONS: frozenset[str] = frozenset({"to the right of", "below"})
SPLITS = ("train", "test", "heldout")
WORLDS = (1, 2)


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    x: float  # centre, pixels
    y: float
    radius: float  # circumradius, pixels
    direction: str | None = None  # "left" / "right" for arrows, else None

    @property
    def phrase(self) -> str:
        """'small red arrow pointing left': the words that name this object in a caption."""
        words = f"{self.size} {self.colour} {self.shape}"
        return words + (f" pointing {self.direction}" if self.direction else "")

    def polygon(self) -> list[tuple[float, float]]:
        sign = -1.0 if self.direction == "left" else 1.0
        return [(self.x + sign * u * self.radius, self.y + v * self.radius) for u, v in POLYGONS[self.shape]]

    @property
    def keypoints(self) -> dict[str, tuple[float, float]]:
        """Named keypoints in pixel (x, y); an arrow's 'tip' is where it points, mirrored or not."""
        sign = -1.0 if self.direction == "left" else 1.0
        return {k: (self.x + sign * u * self.radius, self.y + v * self.radius)
                for k, (u, v) in KEYPOINTS[self.shape].items()}

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the mask, inclusive-exclusive, in pixels."""
        ys, xs = np.nonzero(draw_mask(self, IMAGE_SIZE))
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str
    relation: str | None = None  # for two objects: how objects[0] stands to objects[1]
    seed: int = -1
    split: str = "train"
    size: int = IMAGE_SIZE
    caption: str = field(default="")
    world: int = 1
    backdrop: "Background | None" = None  # noqa: F821  world 2: the background's geometry (lab.world.backgrounds)
    drawn: tuple[int, ...] = ()  # world 2: painting order, back to front (world 1 paints in caption order)


SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: smooth edges, as a camera would see them


def coverage(obj: Obj, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size) float32 in [0, 1]: the fraction of each pixel the object covers."""
    canvas = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    _draw(ImageDraw.Draw(canvas), obj, 255, SUPERSAMPLE)
    return np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float32) / 255.0


def draw_mask(obj: Obj, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size) bool mask of one object: the pixels it covers by half or more."""
    return coverage(obj, size) >= 0.5


def _draw(draw: ImageDraw.ImageDraw, obj: Obj, fill, scale: float = 1.0) -> None:
    if obj.shape == "circle":
        x, y, r = obj.x * scale, obj.y * scale, obj.radius * scale
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    else:
        draw.polygon([(x * scale, y * scale) for x, y in obj.polygon()], fill=fill)


def render(scene: Scene) -> np.ndarray:
    """(H, W, 3) uint8 image of the scene, objects painted over the background in caption order (world 1) or in
    ``scene.drawn`` order (world 2)."""
    if scene.world == 2:
        from . import world2
        return world2.render(scene)
    image = np.empty((scene.size, scene.size, 3), np.float32)
    image[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        alpha = coverage(obj, scene.size)[..., None]  # (H, W, 1)
        image = image * (1 - alpha) + np.asarray(COLOURS[obj.colour], np.float32) * alpha
    return np.round(image).astype(np.uint8)


def masks(scene: Scene) -> np.ndarray:
    """(n_objects, H, W) bool instance masks, in caption order (world 2: the visible pixels, see world2.masks)."""
    if scene.world == 2:
        from . import world2
        return world2.masks(scene)
    return np.stack([draw_mask(o, scene.size) for o in scene.objects])


def relation_of(a: Obj, b: Obj) -> str:
    """How a stands to b along the dominant axis: 'to the left of', 'to the right of', 'above' or 'below'."""
    dx, dy = b.x - a.x, b.y - a.y
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def caption_of(objects: tuple[Obj, ...], background: str, relation: str | None) -> str:
    named = [f"a {o.phrase}" for o in objects]
    if len(named) == 1:
        body = named[0]
    elif len(named) == 2:
        body = f"{named[0]} {relation} {named[1]}"
    else:
        body = f"{named[0]}, {named[1]} and {named[2]}"
    return f"{body} on a {background} background"


def keypoints_visible(scene: Scene) -> list[dict[str, bool]]:
    """For each object (caption order), keypoint name -> visible. In world 1 nothing is ever covered."""
    if scene.world == 2:
        from . import world2
        return world2.keypoints_visible(scene)
    return [{k: True for k in o.keypoints} for o in scene.objects]


def make_scene(seed: int, split: str = "train", n_objects: int | None = None, size: int = IMAGE_SIZE,
               world: int = 1) -> Scene:
    """A random scene, the same for the same (seed, split, n_objects, world).

    split="train" never uses a held-out (colour, shape) pair or relation phrasing; "test" draws from the same
    distribution as training (use seeds you did not train on); "heldout" always contains at least one held-out
    pair or phrasing. Each world draws from its own random stream: world 2's scene for a seed has nothing to do with
    world 1's.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    if n_objects is not None and n_objects not in (1, 2, 3):
        raise ValueError(f"n_objects={n_objects!r}; a scene holds 1, 2 or 3 objects")
    if world not in WORLDS:
        raise ValueError(f"world={world!r} is not one of {WORLDS}")
    if world == 2:
        from .world2 import draw_scene
    rng = np.random.default_rng([seed, SPLITS.index(split)] + ([] if world == 1 else [world]))
    draw = _draw_scene if world == 1 else draw_scene
    for _ in range(1000):
        scene = draw(rng, n_objects or int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2])), size, seed, split)
        if scene is not None and _fits_split(scene, split):
            return scene
    raise RuntimeError(f"could not draw a {split} scene for seed {seed}")  # pragma: no cover


def _fits_split(scene: Scene, split: str) -> bool:
    novel = any((o.colour, o.shape) in HELDOUT_PAIRS for o in scene.objects) or scene.relation in HELDOUT_RELATIONS
    return novel if split == "heldout" else not novel


def _draw_scene(rng: np.random.Generator, n: int, size: int, seed: int, split: str) -> Scene | None:
    scale = size / IMAGE_SIZE
    objects: list[Obj] = []
    for _ in range(n):
        shape = str(rng.choice(SHAPES))
        size_name = str(rng.choice(list(SIZES)))
        radius = SIZES[size_name] * scale * float(rng.uniform(0.92, 1.08))
        for _attempt in range(50):
            x, y = rng.uniform(radius + 2, size - radius - 2, size=2)
            if all(math.hypot(x - o.x, y - o.y) > radius + o.radius + 4 * scale for o in objects):
                break
        else:
            return None
        direction = str(rng.choice(["left", "right"])) if shape == "arrow" else None
        objects.append(Obj(shape, str(rng.choice(list(COLOURS))), size_name, float(x), float(y), radius, direction))
    objects.sort(key=lambda o: o.x)  # captions name objects from left to right...
    relation = None
    if n == 2:
        a, b = objects
        if abs(abs(b.x - a.x) - abs(b.y - a.y)) < 12 * scale or (a.colour, a.shape) == (b.colour, b.shape):
            return None  # a relation must be unambiguous, and checkable on an image
        relation = relation_of(a, b)
        if relation == "below" and split != "heldout":
            objects.reverse()  # ...except "above", which names the upper object first
            relation = "above"
    background = str(rng.choice(list(BACKGROUNDS)))
    if split == "heldout" and n == 2 and rng.random() < 0.5:  # the phrasings training never saw
        objects.reverse()
        relation = relation_of(objects[0], objects[1])
    objs = tuple(objects)
    return Scene(objs, background, relation, seed, split, size, caption_of(objs, background, relation))
