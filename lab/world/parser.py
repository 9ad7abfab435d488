"""Read a shapes-world image back into objects, by classical means: the judge of every generated image.

    >>> from lab.world import make_scene, render, parse
    >>> found = parse(render(make_scene(seed=3)))
    >>> [(o.colour, o.shape, o.size) for o in found.objects]       # doctest: +SKIP
    [('red', 'circle', 'small'), ('blue', 'arrow', 'large')]

API: ``parse(image, world=1) -> Parsed`` (world 2's reading is ``parser2.py``); ``score(scene, parsed) -> dict``
of per-attribute verdicts; ``match(scene, parsed)``.

Method: the background is the palette colour nearest the border's median; foreground pixels are those far from it;
connected components are objects (and their masks). Each object's colour is the palette colour nearest its median
pixel. Its shape and size come from its coverage, how far each pixel near it has moved from the background towards
its colour: every shape's template is posed by the coverage's area and centroid, softened by a few blurs, and the
nearest wins. Soft edges are compared with soft templates, so a decoder's rounded corners do not turn a hexagon
into a circle (``benchmarks/parser.md`` measures this on blurred renders and VAE round trips).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from .scenes import (BACKGROUNDS, COLOURS, IMAGE_SIZE, KEYPOINTS, POLYGONS, SHAPES, SIZE_THRESHOLD, WORLDS, Obj,
                     Scene, coverage, relation_of)

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
    fit: float  # soft IoU of the best template with the object's coverage, 0..1
    mask: np.ndarray  # (H, W) bool


@dataclass(frozen=True)
class Parsed:
    background: str
    objects: tuple[Found, ...]  # left to right


_TEMPLATES: list[tuple[str, str | None]] = ([(s, None) for s in SHAPES if s != "arrow"]
                                            + [("arrow", "right"), ("arrow", "left")])


def _unit_moments(shape: str, direction: str | None) -> tuple[float, float, float]:
    """(area, centroid u, centroid v) of a unit shape (circumradius 1), mirrored for a left arrow."""
    if shape == "circle":
        return math.pi, 0.0, 0.0
    u, v = np.array(POLYGONS[shape]).T
    if direction == "left":
        u = -u[::-1]
        v = v[::-1]
    cross = u * np.roll(v, -1) - np.roll(u, -1) * v  # shoelace
    area = cross.sum() / 2
    cu = ((u + np.roll(u, -1)) * cross).sum() / (6 * area)
    cv = ((v + np.roll(v, -1)) * cross).sum() / (6 * area)
    return abs(area), cu, cv


_MOMENTS = {t: _unit_moments(*t) for t in _TEMPLATES}
_BLURS = (0.0, 0.6, 1.2, 1.8)  # Gaussian sigmas (pixels at 128 px) a template is softened by to meet the image


def _fit(alpha: np.ndarray, wx: int, wy: int, scale: float) -> tuple[str, str | None, float, float, float, float]:
    """Best (shape, direction, x, y, radius, fit) for one object's coverage ``alpha`` (a window whose origin is
    (wx, wy) in the image).

    Each template is posed by the coverage's moments, which blurring leaves unchanged: its area gives the radius and
    its centroid the centre. The template is drawn as the world draws it, softened by each of a few Gaussian blurs,
    and the shape whose best version is nearest the coverage (least squared difference) wins. So an image whose
    edges and corners are soft, as a decoder's are, is compared with equally soft templates rather than thresholded
    into a rounder mask. ``fit`` is the soft IoU of the winner with the coverage, 0..1.
    """
    total = float(alpha.sum())
    ys, xs = np.indices(alpha.shape)
    mx, my = (alpha * xs).sum() / total, (alpha * ys).sum() / total  # centroid, window pixels
    best = ("circle", None, 0.0, 0.0, 0.0, math.inf, 0.0)
    for (shape, direction), (area, cu, cv) in _MOMENTS.items():
        r = math.sqrt(total / area)
        cx, cy = mx - cu * r + 0.5, my - cv * r + 0.5  # pixel i covers [i, i + 1): its centre is i + 0.5
        tmpl = coverage(Obj(shape, "red", "small", cx, cy, r, direction), alpha.shape[0])
        for sigma in _BLURS:
            soft = ndimage.gaussian_filter(tmpl, sigma * scale, mode="constant") if sigma else tmpl
            err = float(((soft - alpha) ** 2).sum())
            if err < best[5]:
                fit = float(np.minimum(soft, alpha).sum() / max(np.maximum(soft, alpha).sum(), 1e-6))
                best = (shape, direction, cx + wx, cy + wy, r, err, fit)
    shape, direction, x, y, r, _, fit = best
    return shape, direction, x, y, r, fit


def _coverage(img: np.ndarray, background: np.ndarray, colour: np.ndarray, mask: np.ndarray, margin: int
              ) -> tuple[np.ndarray, int, int]:
    """(alpha, wx, wy): how much of each pixel near the component ``mask`` is the object's colour rather than the
    background, in [0, 1], in a square window with origin (wx, wy); pixels farther than ``margin`` from the
    component (other objects, stray smudges) count as background."""
    ys, xs = np.nonzero(mask)
    side = int(max(xs.max() - xs.min(), ys.max() - ys.min())) + 1 + 2 * margin
    wx, wy = int(xs.min()) - margin, int(ys.min()) - margin
    h, w = mask.shape
    ys0, xs0, ys1, xs1 = max(wy, 0), max(wx, 0), min(wy + side, h), min(wx + side, w)
    near = ndimage.binary_dilation(mask[ys0:ys1, xs0:xs1], iterations=margin)
    step = colour - background
    a = ((img[ys0:ys1, xs0:xs1] - background) @ step) / max(float(step @ step), 1e-6)
    alpha = np.zeros((side, side), np.float32)
    alpha[ys0 - wy:ys1 - wy, xs0 - wx:xs1 - wx] = np.clip(a, 0, 1) * near
    if alpha.sum() < 0.5 * mask.sum():  # a blob of mixed colours that its median colour does not describe
        alpha[ys0 - wy:ys1 - wy, xs0 - wx:xs1 - wx] = mask[ys0:ys1, xs0:xs1]
    return alpha, wx, wy


def parse(image, min_area: int = 20, threshold: float = 90.0, world: int = 1) -> Parsed:
    """Objects in an (H, W, 3) uint8 image (array or PIL) of the given world, left to right."""
    img = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"parse expects an (H, W, 3) RGB image, got shape {img.shape}")
    if world not in WORLDS:
        raise ValueError(f"world={world!r} is not one of {WORLDS}")
    if world == 2:
        from .parser2 import parse as parse2
        return parse2(img, min_area)
    img = img.astype(np.float32)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])  # (4*side, 3)
    background = np.median(border, axis=0)  # this image's own background, which a model may draw a shade off
    bg_index = int(np.argmin(np.linalg.norm(_BG - background, axis=1)))
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
        drawn = np.median(pixels, axis=0)  # the object's colour as drawn
        colour = list(COLOURS)[int(np.argmin(np.linalg.norm(_PALETTE - drawn, axis=1)))]
        alpha, wx, wy = _coverage(img, background, drawn, mask, margin=max(2, round(3 * scale)))
        shape, direction, x, y, r, fit = _fit(alpha, wx, wy, scale)
        size = "large" if r / scale > SIZE_THRESHOLD else "small"
        found.append(Found(colour, shape, size, direction, x, y, r, fit, mask))
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
    pairs = list(zip(scene.objects, by_attributes))
    verdict = {a: all(_same(o, f, a) for o, f in pairs) for a in ("colour", "shape", "size")}
    verdict["objects"] = all(_same(o, f, "colour") and _same(o, f, "shape") for o, f in pairs)
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
