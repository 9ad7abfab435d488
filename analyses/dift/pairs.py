"""The DIFT study's data: pairs of shapes-world photographs with the world's keypoints as ground truth.

    pairs = world_pairs(100)                        # pair i is the same whatever n: world_pairs(1, first=i)[0]
    changed = one_factor_pairs(pairs, "colour")     # the same A images, each B now A changed in one factor only

Pairs of single-object scenes share a shape with named keypoints and differ in colour (except a same-colour subset),
size, position and background; arrow pairs are half mirrored (pointing opposite ways), where the right answer follows
meaning (tip to tip), not geometry (tip to the point on the same side, the tail).

``world_pairs(n, world=2)`` puts them on world 2's backgrounds (``lab.world.backgrounds``: flat colours, gradients,
stripes, clouds), two different ones per pair, with colours that world 2 allows on both; world 1's pairs (black, grey
and white) are unchanged.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from lab.world import COLOURS, IMAGE_SIZE, KEYPOINTS, SIZES, WORLDS, Obj, Scene, backgrounds, render

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


def world_pairs(n: int, seed: int = 0, first: int = 0, world: int = 1) -> list[Pair]:
    """Pairs first .. first+n-1 of single-object scenes of one shape, with the world's keypoints as ground truth.

        pairs = world_pairs(100)              # pair i is the same whatever n: world_pairs(1, first=i)[0]

    Shapes cycle through SHAPE_CYCLE (arrows twice per cycle: the first arrow of a cycle is mirrored, the second
    points the same way); every third pair (i % 3 == 1) has one colour in both images; sizes and backgrounds always
    differ, positions are drawn apart. info: shape, same_colour, mirrored, names (keypoint name of each kps row),
    trg_named (every target keypoint by name), src_obj, trg_obj, src_background, trg_background (names). world=2:
    backgrounds of world 2 (info adds world, src_backdrop, trg_backdrop: the lab.world.backgrounds.Background of
    each), drawn from a random stream of their own.
    """
    if world not in WORLDS:
        raise ValueError(f"world={world!r} is not one of {WORLDS}")
    return [_world_pair(i, seed, world) for i in range(first, first + n)]


def _world2_backgrounds(rng) -> tuple[backgrounds.Background, backgrounds.Background, list[str]]:
    """Two world-2 backgrounds of different names, and the object colours world 2 allows on both (two or more)."""
    while True:
        ba, bb = backgrounds.sample(rng), backgrounds.sample(rng)
        palette = [c for c in COLOURS if backgrounds.allowed(ba, c) and backgrounds.allowed(bb, c)]
        if ba.name != bb.name and len(palette) >= 2:
            return ba, bb, palette


def _world_pair(i: int, seed: int, world: int = 1) -> Pair:
    rng = np.random.default_rng([seed, 71, i] + ([] if world == 1 else [world]))
    shape = SHAPE_CYCLE[i % len(SHAPE_CYCLE)]
    same = i % 3 == 1
    if world == 2:
        backdrop_a, backdrop_b, palette = _world2_backgrounds(rng)
    else:
        palette = list(COLOURS)
    ca = str(rng.choice(palette))
    cb = ca if same else str(rng.choice([c for c in palette if c != ca]))
    sa = str(rng.choice(list(SIZES)))
    sb = next(s for s in SIZES if s != sa)
    if world == 2:
        ba, bb = backdrop_a.name, backdrop_b.name
    else:
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
    if world == 2:
        info.update(world=2, src_backdrop=backdrop_a, trg_backdrop=backdrop_b)
    return Pair(name=f"{i:03d}-{shape}", category=shape, src=_render(a, info, "src"), trg=_render(b, info, "trg"),
                src_id=f"{i}a", trg_id=f"{i}b", src_kps=np.array([ka[k] for k in names]),
                trg_kps=np.array([kb[k] for k in names]), trg_bbox=b.bbox, info=info)


FACTORS = ("colour", "size", "position", "background")


def one_factor_pairs(pairs, factor: str) -> list[Pair]:
    """The same pairs with B replaced by A changed in one factor only: B's colour (or, for a same-colour pair, the
    next colour of the world), B's size (moved just enough to stay inside the image if it must), B's position or B's
    background. Arrows keep A's direction. It tells which difference breaks matching; A images (src_id) are
    unchanged, B images get ids ending in the factor. On world 2's pairs a new colour is one world 2 allows on A's
    background.

        one_factor_pairs(world_pairs(60), "background")[0].info["factor"]      # 'background'
    """
    if factor not in FACTORS:
        raise ValueError(f"factor={factor!r}; one of {', '.join(FACTORS)}")
    out = []
    for p in pairs:
        a, b, side = p.info["src_obj"], p.info["trg_obj"], "src"
        if factor == "colour":
            backdrop = p.info.get("src_backdrop")
            others = [c for c in COLOURS if c != a.colour and (backdrop is None or backgrounds.allowed(backdrop, c))]
            b2 = replace(a, colour=b.colour if b.colour != a.colour else others[0])
        elif factor == "size":
            b2 = _inside(replace(a, size=b.size, radius=b.radius))
        elif factor == "position":
            b2 = _inside(replace(a, x=b.x, y=b.y))
        else:
            b2, side = a, "trg"
        kb = b2.keypoints
        info = {**p.info, "trg_obj": b2, "trg_named": kb, "trg_background": p.info[f"{side}_background"],
                "mirrored": False, "same_colour": b2.colour == a.colour, "factor": factor}
        if "src_backdrop" in p.info:
            info["trg_backdrop"] = p.info[f"{side}_backdrop"]
        out.append(replace(p, name=f"{p.name}-{factor}", trg=_render(b2, info, "trg"), trg_id=f"{p.trg_id}-{factor}",
                           trg_kps=np.array([kb[k] for k in p.info["names"]]), trg_bbox=b2.bbox, info=info))
    return out


def _render(obj: Obj, info: dict, side: str) -> np.ndarray:
    """(H, W, 3) uint8: the object alone on the pair's `side` ("src" or "trg") background, in the pair's world."""
    backdrop = info.get(f"{side}_backdrop")
    if backdrop is None:
        return render(Scene((obj,), info[f"{side}_background"]))
    return render(Scene((obj,), backdrop.name, world=2, backdrop=backdrop, drawn=(0,)))


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
