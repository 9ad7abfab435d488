"""World 2: world 1's objects and keypoints on backgrounds that vary, with occlusion (``make_scene(seed, world=2)``).

    >>> from lab.world import make_scene, render, masks, keypoints_visible
    >>> scene = make_scene(0, world=2)
    >>> scene.caption                                              # doctest: +SKIP
    'a large orange arrow pointing left on a navy and white striped background'
    >>> render(scene).shape, masks(scene).shape[1:]
    ((128, 128, 3), (128, 128))

What differs from world 1 (whose scenes, pixels and captions do not change):
- the background is one of ``backgrounds.NAMES`` (flat colours, gradients, stripes, clouds), named in the caption;
- an object's colour keeps ``backgrounds.MIN_DISTANCE`` from every colour its background uses;
- objects may overlap. ``Scene.drawn`` is the order they are painted in (back to front), independent of the
  caption's order. Overlap is allowed only between objects of different colours, and only while every object keeps
  at least ``MIN_VISIBLE`` of its area in one piece, so each stays readable.
- ``masks(scene)`` are the visible pixels of each object: drawn at 4x4 samples per pixel, each sample takes the
  colour of the last object drawn over it, and a pixel belongs to an object when half or more of its samples
  show it. The rendered pixel is exactly ``background * (1 - sum(v)) + sum(v_i * colour_i)`` for the visible
  shares ``v`` (``visible_coverage``).
- Keypoints keep their positions; ``keypoints_visible(scene)`` marks one hidden when a later-drawn object covers
  any part of the 3x3 pixels around it (so a keypoint at an occluder's edge is not trusted either).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from . import backgrounds
from .scenes import COLOURS, IMAGE_SIZE, SHAPES, SIZES, SUPERSAMPLE, Obj, Scene, _draw, caption_of, relation_of

MIN_VISIBLE = 0.8  # share of an object's area that stays visible under occlusion
GAP = 4.0  # pixels (at 128 px) between objects that do not overlap


def _samples(obj: Obj, size: int) -> np.ndarray:
    """(size*4, size*4) bool: the object's supersamples."""
    canvas = Image.new("1", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    _draw(ImageDraw.Draw(canvas), obj, 1, SUPERSAMPLE)
    return np.asarray(canvas, dtype=bool)


def _box(samples: np.ndarray, size: int) -> np.ndarray:
    """(size, size) float32: the share of each pixel's 4x4 samples that are set (exact: sixteenths)."""
    rows = samples.astype(np.uint8).reshape(size, SUPERSAMPLE, size * SUPERSAMPLE).sum(1, dtype=np.uint8)
    return rows.reshape(size, size, SUPERSAMPLE).sum(2, dtype=np.uint8).astype(np.float32) / SUPERSAMPLE**2


def _visible(objects: tuple[Obj, ...], drawn: tuple[int, ...], size: int) -> np.ndarray:
    """(n, H, W) float32: the share of each pixel where each object (caption order) shows, after occlusion."""
    samples = [_samples(o, size) for o in objects]
    out = np.zeros((len(objects), size, size), np.float32)
    on_top = np.zeros((size * SUPERSAMPLE,) * 2, bool)
    for i in reversed(drawn):  # front to back: each object shows where nothing in front of it is
        out[i] = _box(samples[i] & ~on_top, size)
        on_top |= samples[i]
    return out


def visible_coverage(scene: Scene) -> np.ndarray:
    """(n_objects, H, W) float32 in [0, 1], caption order: the share of each pixel showing each object."""
    return _visible(scene.objects, scene.drawn, scene.size)


def render(scene: Scene) -> np.ndarray:
    """(H, W, 3) uint8 image of a world-2 scene."""
    vis = visible_coverage(scene)  # (n, H, W)
    colours = np.array([COLOURS[o.colour] for o in scene.objects], np.float32)  # (n, 3)
    image = backgrounds.paint(scene.backdrop, scene.size) * (1 - vis.sum(0))[..., None]
    image += np.einsum("nhw,nc->hwc", vis, colours)  # (H, W, 3)
    return np.round(image).astype(np.uint8)


def masks(scene: Scene) -> np.ndarray:
    """(n_objects, H, W) bool visible masks, caption order; a pixel half or more of whose samples show the object
    (a pixel split evenly between two objects goes to the one in front)."""
    ms = visible_coverage(scene) >= 0.5
    for rank, i in enumerate(scene.drawn):
        for j in scene.drawn[rank + 1:]:
            ms[i] &= ~ms[j]
    return ms


def keypoints_visible(scene: Scene) -> list[dict[str, bool]]:
    """For each object (caption order), keypoint name -> whether it is visible (not under a later-drawn object)."""
    size, out = scene.size, []
    for rank, i in enumerate(scene.drawn):
        later = [scene.objects[j] for j in scene.drawn[rank + 1:]]
        cover = np.zeros((size, size), bool)
        for o in later:
            cover |= _box(_samples(o, size), size) > 0
        near = ndimage.maximum_filter(cover, size=3)  # (H, W): within a pixel of a later object
        out.append((i, {k: not near[min(int(y), size - 1), min(int(x), size - 1)]
                        for k, (x, y) in scene.objects[i].keypoints.items()}))
    return [v for _, v in sorted(out, key=lambda p: p[0])]


def _compatible(a: Obj, b: Obj, scale: float) -> bool:
    """Objects of one colour keep GAP apart (touching, they would read as one); others may touch or overlap, and
    are checked for what stays visible once the scene is drawn."""
    return a.colour != b.colour or math.hypot(a.x - b.x, a.y - b.y) - a.radius - b.radius > GAP * scale


def _readable(objects: tuple[Obj, ...], drawn: tuple[int, ...], size: int) -> bool:
    """Every object keeps MIN_VISIBLE of its area, in one piece."""
    if all(math.hypot(a.x - b.x, a.y - b.y) > a.radius + b.radius + 1 for i, a in enumerate(objects)
           for b in objects[i + 1:]):
        return True  # no two circumcircles meet: nothing is covered
    vis = _visible(objects, drawn, size)
    for o, v in zip(objects, vis):
        full = _box(_samples(o, size), size)
        if v.sum() < MIN_VISIBLE * full.sum() or ndimage.label(v >= 0.5)[1] != 1:
            return False
    return True


def draw_scene(rng: np.random.Generator, n: int, size: int, seed: int, split: str) -> Scene | None:
    """One attempt at a world-2 scene (None when the draw breaks a rule; make_scene draws again)."""
    scale = size / IMAGE_SIZE
    backdrop = backgrounds.sample(rng)
    palette = [c for c in COLOURS if backgrounds.allowed(backdrop, c)]
    objects: list[Obj] = []
    for _ in range(n):
        shape = str(rng.choice(SHAPES))
        size_name = str(rng.choice(list(SIZES)))
        radius = SIZES[size_name] * scale * float(rng.uniform(0.92, 1.08))
        colour = str(rng.choice(palette))
        direction = str(rng.choice(["left", "right"])) if shape == "arrow" else None
        for _attempt in range(50):
            x, y = rng.uniform(radius + 2, size - radius - 2, size=2)
            obj = Obj(shape, colour, size_name, float(x), float(y), radius, direction)
            if all(_compatible(obj, o, scale) for o in objects):
                break
        else:
            return None
        objects.append(obj)
    depth = {id(o): int(d) for o, d in zip(objects, rng.permutation(n))}  # 0 is drawn first (furthest back)
    objects.sort(key=lambda o: o.x)  # captions name objects from left to right, as in world 1...
    relation = None
    if n == 2:
        a, b = objects
        if abs(abs(b.x - a.x) - abs(b.y - a.y)) < 12 * scale or (a.colour, a.shape) == (b.colour, b.shape):
            return None
        relation = relation_of(a, b)
        if relation == "below" and split != "heldout":
            objects.reverse()  # ...except "above", which names the upper object first
            relation = "above"
    if split == "heldout" and n == 2 and rng.random() < 0.5:
        objects.reverse()
        relation = relation_of(objects[0], objects[1])
    objs = tuple(objects)
    drawn = tuple(sorted(range(n), key=lambda i: depth[id(objs[i])]))
    if not _readable(objs, drawn, size):
        return None
    return Scene(objs, backdrop.name, relation, seed, split, size, caption_of(objs, backdrop.name, relation),
                 world=2, backdrop=backdrop, drawn=drawn)
