"""The DIFT study's data: pairs of shapes-world photographs with the world's keypoints as ground truth.

    pairs = world_pairs(100)                        # pair i is the same whatever n: world_pairs(1, first=i)[0]
    changed = one_factor_pairs(pairs, "colour")     # the same A images, each B now A changed in one factor only

Pairs of single-object scenes share a shape with named keypoints and differ in colour (except a same-colour subset),
size, position and background; arrow pairs are half mirrored (pointing opposite ways), where the right answer follows
meaning (tip to tip), not geometry (tip to the point on the same side, the tail).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from lab.world import COLOURS, IMAGE_SIZE, KEYPOINTS, SIZES, Obj, Scene, render

from .match import Pair

BACKGROUND_NAMES = ("black", "grey", "white")
SHAPE_CYCLE = ("arrow", "circle", "square", "arrow", "triangle", "hexagon", "trapezoid")  # arrows twice as often
GEOMETRIC_TWIN = {"tip": "tail", "tail": "tip"}  # a mirrored arrow's keypoint at the same side as the source's


def _obj(rng, shape: str, colour: str, size: str, direction: str | None, far_from=None) -> Obj:
    radius = SIZES[size] * float(rng.uniform(0.92, 1.08))
    for _ in range(100):
        x, y = rng.uniform(*_centre_bounds(radius), size=2)
        if far_from is None or np.hypot(x - far_from.x, y - far_from.y) > 20:
            break
    return Obj(shape, colour, size, float(x), float(y), radius, direction)


def world_pairs(n: int, seed: int = 0, first: int = 0) -> list[Pair]:
    """Pairs first .. first+n-1 of single-object scenes of one shape, with the world's keypoints as ground truth.

        pairs = world_pairs(100)              # pair i is the same whatever n: world_pairs(1, first=i)[0]

    Shapes cycle through SHAPE_CYCLE (arrows twice per cycle: the first arrow of a cycle is mirrored, the second
    points the same way); every third pair (i % 3 == 1) has one colour in both images; sizes and backgrounds always
    differ, positions are drawn apart. info: shape, same_colour, mirrored, names (keypoint name of each kps row),
    trg_named (every target keypoint by name), src_obj, trg_obj.
    """
    return [_world_pair(i, seed) for i in range(first, first + n)]


def _world_pair(i: int, seed: int) -> Pair:
    rng = np.random.default_rng([seed, 71, i])
    shape = SHAPE_CYCLE[i % len(SHAPE_CYCLE)]
    same = i % 3 == 1
    ca = str(rng.choice(list(COLOURS)))
    cb = ca if same else str(rng.choice([c for c in COLOURS if c != ca]))
    sa = str(rng.choice(list(SIZES)))
    sb = next(s for s in SIZES if s != sa)
    ba, bb = (str(b) for b in rng.choice(BACKGROUND_NAMES, size=2, replace=False))
    da = db = None
    if shape == "arrow":
        da = str(rng.choice(["left", "right"]))
        db = ("left" if da == "right" else "right") if i % len(SHAPE_CYCLE) == 0 else da
    a = _obj(rng, shape, ca, sa, da)
    b = _obj(rng, shape, cb, sb, db, far_from=a)
    names = list(KEYPOINTS[shape])
    ka, kb = a.keypoints, b.keypoints
    info = {"shape": shape, "same_colour": same, "mirrored": da is not None and da != db, "names": names,
            "trg_named": kb, "src_obj": a, "trg_obj": b, "src_background": ba, "trg_background": bb}
    return Pair(name=f"{i:03d}-{shape}", category=shape, src=render(Scene((a,), ba)), trg=render(Scene((b,), bb)),
                src_id=f"{i}a", trg_id=f"{i}b", src_kps=np.array([ka[k] for k in names]),
                trg_kps=np.array([kb[k] for k in names]), trg_bbox=b.bbox, info=info)


FACTORS = ("colour", "size", "position", "background")


def one_factor_pairs(pairs, factor: str) -> list[Pair]:
    """The same pairs with B replaced by A changed in one factor only: B's colour (or, for a same-colour pair, the
    next colour of the world), B's size (moved just enough to stay inside the image if it must), B's position or B's
    background. Arrows keep A's direction. It tells which difference breaks matching; A images (src_id) are
    unchanged, B images get ids ending in the factor.

        one_factor_pairs(world_pairs(60), "background")[0].info["factor"]      # 'background'
    """
    if factor not in FACTORS:
        raise ValueError(f"factor={factor!r}; one of {', '.join(FACTORS)}")
    out = []
    for p in pairs:
        a, b, bg = p.info["src_obj"], p.info["trg_obj"], p.info["src_background"]
        if factor == "colour":
            others = [c for c in COLOURS if c != a.colour]
            b2 = replace(a, colour=b.colour if b.colour != a.colour else others[0])
        elif factor == "size":
            b2 = _inside(replace(a, size=b.size, radius=b.radius))
        elif factor == "position":
            b2 = _inside(replace(a, x=b.x, y=b.y))
        else:
            b2, bg = a, p.info["trg_background"]
        kb = b2.keypoints
        info = {**p.info, "trg_obj": b2, "trg_named": kb, "trg_background": bg, "mirrored": False,
                "same_colour": b2.colour == a.colour, "factor": factor}
        out.append(replace(p, name=f"{p.name}-{factor}", trg=render(Scene((b2,), bg)), trg_id=f"{p.trg_id}-{factor}",
                           trg_kps=np.array([kb[k] for k in p.info["names"]]), trg_bbox=b2.bbox, info=info))
    return out


def _centre_bounds(radius: float) -> tuple[float, float]:
    """Where an object's centre may lie (in x and in y) to keep 3 px between it and the image border."""
    return radius + 3, IMAGE_SIZE - radius - 3


def _inside(obj: Obj) -> Obj:
    """obj moved the least needed to keep it within _centre_bounds."""
    lo, hi = _centre_bounds(obj.radius)
    return replace(obj, x=float(np.clip(obj.x, lo, hi)), y=float(np.clip(obj.y, lo, hi)))


def images_of(pairs) -> dict:
    """{image id: image} of every A and B image of the pairs, each once."""
    images = {}
    for p in pairs:
        images.setdefault(p.src_id, p.src), images.setdefault(p.trg_id, p.trg)
    return images
