"""Read a shapes-world image back into objects, by classical means: the judge of every generated image.

    >>> from lab.world import make_scene, render, parse
    >>> found = parse(render(make_scene(seed=3)))
    >>> [(o.colour, o.shape, o.size) for o in found.objects]       # doctest: +SKIP
    [('red', 'circle', 'small'), ('blue', 'arrow', 'large')]

API: ``parse(image) -> Parsed``; ``score(scene, parsed) -> dict`` of per-attribute verdicts; ``match(scene, parsed)``.

Method: the background is the palette colour nearest the border's median; foreground pixels are those far from it;
connected components are objects. Each object's colour is the palette colour nearest its median pixel; its shape
and size come from fitting every shape's template into the component's bounding box and keeping the best IoU.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from .scenes import (BACKGROUNDS, COLOURS, IMAGE_SIZE, KEYPOINTS, POLYGONS, SHAPES, SIZE_THRESHOLD, Obj, Scene, draw_mask,
                     relation_of)

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)  # (colours, 3)
_BG = np.array(list(BACKGROUNDS.values()), dtype=np.float32)    # (backgrounds, 3)


@dataclass(frozen=True)
class Found:
    colour: str
    shape: str
    size: str
    direction: str | None
    x: float
    y: float
    radius: float
    fit: float  # IoU of the best template with the component, 0..1
    mask: np.ndarray  # (H, W) bool


@dataclass(frozen=True)
class Parsed:
    background: str
    objects: tuple[Found, ...]  # left to right


_TEMPLATES: list[tuple[str, str | None]] = [(s, None) for s in SHAPES if s != "arrow"] + [("arrow", "right"), ("arrow", "left")]


def _extent(shape: str) -> tuple[float, float, float, float]:
    """(u_min, u_max, v_min, v_max) of a unit shape."""
    if shape == "circle":
        return -1.0, 1.0, -1.0, 1.0
    us, vs = np.array(POLYGONS[shape]).T
    return us.min(), us.max(), vs.min(), vs.max()


def _fit(mask: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> tuple[str, str | None, float, float, float, float]:
    """Best (shape, direction, x, y, radius, iou) for one component: each template is drawn exactly as the world
    draws shapes, scaled into the component's bounding box, and compared in a window around it."""
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = int(max(x1 - x0, y1 - y0)) + 8
    wx, wy = int(x0) - 4, int(y0) - 4  # window origin
    window = np.zeros((side, side), bool)
    sub = mask[max(wy, 0):wy + side, max(wx, 0):wx + side]
    window[max(-wy, 0):max(-wy, 0) + sub.shape[0], max(-wx, 0):max(-wx, 0) + sub.shape[1]] = sub
    best = ("circle", None, 0.0, 0.0, 0.0, -1.0)
    for shape, direction in _TEMPLATES:
        u0, u1, v0, v1 = _extent(shape)
        if direction == "left":
            u0, u1 = -u1, -u0
        r = 0.5 * ((x1 - x0) / (u1 - u0) + (y1 - y0) / (v1 - v0))
        cx, cy = x0 - u0 * r, y0 - v0 * r
        tmpl = draw_mask(Obj(shape, "red", "small", cx - wx, cy - wy, r, direction), side)
        iou = (tmpl & window).sum() / max((tmpl | window).sum(), 1)
        if iou > best[-1]:
            best = (shape, direction, float(cx), float(cy), float(r), float(iou))
    return best


def parse(image, min_area: int = 20, threshold: float = 90.0) -> Parsed:
    """Objects in an (H, W, 3) uint8 image (array or PIL), left to right."""
    img = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"parse expects an (H, W, 3) RGB image, got shape {img.shape}")
    img = img.astype(np.float32)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])  # (4*side, 3)
    bg_index = int(np.argmin(np.linalg.norm(_BG - np.median(border, axis=0), axis=1)))
    distance = np.linalg.norm(img - _BG[bg_index], axis=-1)  # (H, W)
    fg = distance > threshold
    labels, n = ndimage.label(fg)
    scale = img.shape[0] / IMAGE_SIZE
    found = []
    for i in range(1, n + 1):
        mask = labels == i
        ys, xs = np.nonzero(mask)
        if len(ys) < min_area * scale**2:
            continue
        core = ndimage.binary_erosion(mask, iterations=2)
        pixels = img[core] if core.sum() >= 5 else img[mask]
        colour = list(COLOURS)[int(np.argmin(np.linalg.norm(_PALETTE - np.median(pixels, axis=0), axis=1)))]
        shape, direction, x, y, r, iou = _fit(mask, ys, xs)
        size = "large" if r / scale > SIZE_THRESHOLD else "small"
        found.append(Found(colour, shape, size, direction, x, y, r, iou, mask))
    found.sort(key=lambda f: f.x)
    return Parsed(list(BACKGROUNDS)[bg_index], tuple(found))


def _pair(scene: Scene, parsed: Parsed, cost) -> list[Found | None]:
    """Greedy pairing: each captioned object in turn takes the free parsed object of least cost(obj, found)."""
    out: list[Found | None] = []
    free = list(range(len(parsed.objects)))  # indices, so equal-looking objects are never confused
    for obj in scene.objects:
        if not free:
            out.append(None)
            continue
        j = min(free, key=lambda i: cost(obj, parsed.objects[i]))
        free.remove(j)
        out.append(parsed.objects[j])
    return out


def match(scene: Scene, parsed: Parsed) -> list[Found | None]:
    """For each captioned object, the parsed object that stands for it (attributes first, then nearest centre)."""
    return _pair(scene, parsed, lambda o, f: (f.colour != o.colour) * 1000 + (f.shape != o.shape) * 500
                 + np.hypot(f.x - o.x, f.y - o.y))


def _same(obj: Obj, f: Found | None, attribute: str) -> bool:
    return f is not None and getattr(f, attribute) == getattr(obj, attribute)


def score(scene: Scene, parsed: Parsed) -> dict[str, bool]:
    """Did the image show what the caption asked? Positions are free: only the caption's content is scored.

    Keys: colour / shape / size (every object right in that attribute), objects (every object right in colour
    and shape), count (as many objects as captioned), background, relation (for two objects), all.
    """
    by_attributes = _match_by_attributes(scene, parsed)
    verdict = {a: all(_same(o, f, a) for o, f in zip(scene.objects, by_attributes)) for a in ("colour", "shape", "size")}
    verdict["objects"] = all(_same(o, f, "colour") and _same(o, f, "shape") for o, f in zip(scene.objects, by_attributes))
    verdict["count"] = len(parsed.objects) == len(scene.objects)
    verdict["background"] = parsed.background == scene.background
    if scene.relation is not None:
        a, b = by_attributes
        verdict["relation"] = a is not None and b is not None and relation_of(_as_obj(a), _as_obj(b)) == scene.relation
    verdict["all"] = all(verdict.values())
    return verdict


def _as_obj(f: Found) -> Obj:
    return Obj(f.shape, f.colour, f.size, f.x, f.y, f.radius, f.direction)


def _match_by_attributes(scene: Scene, parsed: Parsed) -> list[Found | None]:
    """Pair captioned and parsed objects by attribute agreement (positions in a generated image are the model's)."""
    return _pair(scene, parsed, lambda o, f: -(2 * (f.colour == o.colour) + 2 * (f.shape == o.shape)
                                                + (f.size == o.size)))


__all__ = ["parse", "score", "match", "Parsed", "Found", "KEYPOINTS"]
