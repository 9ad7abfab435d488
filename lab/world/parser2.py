"""Read a world-2 image back into its background's name and its objects (``parse(image, world=2)``).

    >>> from lab.world import make_scene, render, parse, score
    >>> scene = make_scene(4, world=2)
    >>> parsed = parse(render(scene), world=2)
    >>> parsed.background == scene.background and score(scene, parsed)["all"]
    True

Method, world 1's (``parser.py``) where it can be:
1. The background (``backgrounds.read``): its one or two catalogue colours A, B from the border, its kind from the
   blend map. Every background pixel lies on the RGB segment AB; a pixel farther than ``backgrounds.FOREGROUND``
   from it is an object's.
2. Objects: connected foreground pixels, split by colour where objects of different colours touch or overlap
   (each palette colour with a solid core of its own is an object colour; every pixel of the blob goes to the
   nearest of those).
3. Coverage, per object of drawn colour C: every pixel near it is unmixed as ``p = A + s (B - A) + a (C - A)``
   (least squares, two unknowns), which is exact for a background blend under an anti-aliased edge; ``a`` is the
   coverage. Pixels of other objects are unknown, not background: an object partly hidden behind another is posed
   by matching the moments of the template's visible part to its own (a few fixed-point steps), and only its visible
   pixels are compared. Shape and size then come from world 1's soft templates.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from . import backgrounds
from .parser import _BLURS, _MOMENTS, Found, Parsed
from .scenes import COLOURS, IMAGE_SIZE, SIZE_THRESHOLD, Obj, coverage

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)  # (colours, 3)
CORE = 50.0  # a pixel this close to a palette colour can be that colour's core
MAX_AREA = 4500  # pixels at 128 px: three times the largest object; a bigger blob is background the image got wrong


def parse(image: np.ndarray, min_area: int = 20) -> Parsed:
    """The background's name and the objects of a world-2 (H, W, 3) uint8 image, left to right."""
    img = np.asarray(image, np.float32)
    bg = backgrounds.read(img)
    distance, _ = backgrounds.segment_distance(img, bg.a, bg.b)  # (H, W)
    labels, n = ndimage.label(distance > backgrounds.FOREGROUND)
    scale = img.shape[0] / IMAGE_SIZE
    blobs = []
    for i in range(1, n + 1):
        blob = labels == i
        if min_area * scale**2 <= blob.sum() <= MAX_AREA * scale**2:
            blobs += _split_by_colour(img, blob, distance, min_area * scale**2, scale)
    found = []
    for k, (mask, drawn) in enumerate(blobs):
        others = np.zeros_like(mask)
        for j, (m, _) in enumerate(blobs):
            if j != k:
                others |= m
        found.append(_read_object(img, bg, mask, drawn, others, scale))
    found.sort(key=lambda f: f.x)
    return Parsed(bg.name, tuple(found))


def _split_by_colour(img: np.ndarray, blob: np.ndarray, far: np.ndarray, min_area: float, scale: float
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(mask, drawn colour)] of the objects in one connected foreground blob; ``far`` is each pixel's distance from
    the background's colours. Slivers where two objects meet that hold no solid core of their colour belong to
    neither."""
    pixels = img[blob]  # (P, 3)
    nearest = np.linalg.norm(pixels[:, None] - _PALETTE[None], axis=-1)  # (P, colours)
    solid = (nearest.min(1) < CORE) & (far[blob] > 0.8 * backgrounds.MIN_DISTANCE)  # object-coloured, not a blend
    grid = np.full(blob.shape, -1)
    grid[blob] = np.where(solid, nearest.argmin(1), -1)
    cores = {c: ndimage.binary_erosion(grid == c, iterations=max(1, round(2 * scale))) for c in range(len(_PALETTE))}
    cores = {c: m for c, m in cores.items() if m.sum() >= 8 * scale**2}
    if len(cores) <= 1:
        return [(blob, _drawn(img, blob))]
    owner = np.zeros(blob.shape, int)
    owner[blob] = np.array(list(cores))[nearest[:, list(cores)].argmin(1)]
    out = []
    for c, core in cores.items():
        labels, n = ndimage.label(owner == c)
        for i in range(1, n + 1):
            part = (labels == i) & blob
            if part.sum() >= min_area and (part & core).any():
                out.append((part, _drawn(img, part)))
    return out


def _drawn(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    core = ndimage.binary_erosion(mask, iterations=2)
    return np.median(img[core] if core.sum() >= 5 else img[mask], axis=0)  # (3,)


def _unmix(pixels: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Coverage of colour c in each pixel (..., 3) over a background blend of a and b, in [0, 1]."""
    basis = np.stack([b - a, c - a], 1)  # (3, 2)
    if float(np.linalg.norm(b - a)) < 1e-3:
        basis = basis[:, 1:]
    coef, *_ = np.linalg.lstsq(basis, (pixels - a).reshape(-1, 3).T, rcond=None)  # (unknowns, P)
    return np.clip(coef[-1], 0, 1).reshape(pixels.shape[:-1])


def _read_object(img, bg, mask, drawn, others, scale) -> Found:
    margin = max(2, round(3 * scale))
    ys, xs = np.nonzero(mask)
    side = int(max(xs.max() - xs.min(), ys.max() - ys.min())) + 1 + 2 * margin
    wx, wy = int(xs.min()) - margin, int(ys.min()) - margin
    h, w = mask.shape
    ys0, xs0, ys1, xs1 = max(wy, 0), max(wx, 0), min(wy + side, h), min(wx + side, w)
    win = np.s_[ys0 - wy:ys1 - wy, xs0 - wx:xs1 - wx]
    near = ndimage.binary_dilation(mask[ys0:ys1, xs0:xs1], iterations=margin)
    hidden = np.zeros((side, side), bool)
    hidden[win] = ndimage.binary_dilation(others, iterations=max(1, round(scale)))[ys0:ys1, xs0:xs1]
    alpha = np.zeros((side, side), np.float32)
    alpha[win] = _unmix(img[ys0:ys1, xs0:xs1], bg.a, bg.b, drawn) * near
    alpha[hidden] = 0
    if alpha.sum() < 0.5 * mask.sum():  # a blob that its median colour does not describe
        alpha[win] = mask[ys0:ys1, xs0:xs1]
    colour = list(COLOURS)[int(np.argmin(np.linalg.norm(_PALETTE - drawn, axis=1)))]
    shape, direction, x, y, r, fit = _fit(alpha, ~hidden, wx, wy, scale)
    size = "large" if r / scale > SIZE_THRESHOLD else "small"
    return Found(colour, shape, size, direction, x, y, r, fit, mask)


def _centroid(a: np.ndarray) -> tuple[float, float, float]:
    ys, xs = np.indices(a.shape)
    total = float(a.sum())
    return total, float((a * xs).sum()) / max(total, 1e-6), float((a * ys).sum()) / max(total, 1e-6)


def _fit(alpha: np.ndarray, known: np.ndarray, wx: int, wy: int, scale: float):
    """world 1's template fit (parser._fit) over the ``known`` pixels only, each template posed so that its visible
    part has the coverage's area and centroid."""
    total, mx, my = _centroid(alpha)
    occluded = not known.all()
    best = ("circle", None, 0.0, 0.0, 0.0, math.inf, 0.0)
    for (shape, direction), (area, cu, cv) in _MOMENTS.items():
        r = math.sqrt(total / area)
        cx, cy = mx - cu * r + 0.5, my - cv * r + 0.5
        for _ in range(6 if occluded else 0):
            seen = coverage(Obj(shape, "red", "small", cx, cy, r, direction), alpha.shape[0]) * known
            t_total, tx, ty = _centroid(seen)
            r *= math.sqrt(total / max(t_total, 1e-6))
            cx, cy = cx + mx - tx, cy + my - ty
        tmpl = coverage(Obj(shape, "red", "small", cx, cy, r, direction), alpha.shape[0])
        for sigma in _BLURS:
            soft = ndimage.gaussian_filter(tmpl, sigma * scale, mode="constant") if sigma else tmpl
            err = float((((soft - alpha) * known) ** 2).sum())
            if err < best[5]:
                fit = float((np.minimum(soft, alpha) * known).sum() / max((np.maximum(soft, alpha) * known).sum(),
                                                                           1e-6))
                best = (shape, direction, cx + wx, cy + wy, r, err, fit)
    shape, direction, x, y, r, _, fit = best
    return shape, direction, x, y, r, fit
