"""Judge edited images with the shapes world's parser: did the attribute change, and did everything else stay?

    >>> from lab.world import make_scene, parse, render
    >>> from analyses.svd.judge import changed_scene, kept
    >>> scene = make_scene(seed=5, split="test", n_objects=1)
    >>> target = changed_scene(scene, "colour")           # the same scene with the first object's colour changed
    >>> kept(parse(render(scene)), parse(render(scene)), ignore="colour")["all"]
    True

read(image, world)                  lab.world.parse, ignoring blobs under half the area of the smallest world object
changed_scene(scene, attribute)     the target Scene: objects[0]'s colour or size changed, caption rebuilt
kept(reference, parsed, ignore, tol)   per-attribute verdicts: is `parsed` the `reference` image's content, attribute
                                    `ignore` aside (objects matched by centre within tol pixels)
changed(target, parsed, attribute)  lab.world.score's verdict for that attribute against the target scene
KEPT = ("count", "background", "position", "colour", "shape", "size")
"""
from __future__ import annotations

import dataclasses

import numpy as np

from lab.world import COLOURS, HELDOUT_PAIRS, SHAPES, SIZES, Obj, Parsed, Scene, backgrounds, parse, score
from lab.world.scenes import caption_of, draw_mask

ATTRIBUTES = ("colour", "size")
KEPT = ("count", "background", "position", "colour", "shape", "size")
TOL = 4.0  # pixels at 128 px: parsed centres closer than this are the same place


def _smallest_object_area() -> int:
    """Pixels of the smallest object the world draws (a small shape at the smallest radius), at 128 px."""
    radius = SIZES["small"] * 0.92  # make_scene scales radii by 0.92 .. 1.08
    return min(int(draw_mask(Obj(s, "red", "small", 64.0, 64.0, radius, "right" if s == "arrow" else None)).sum())
               for s in SHAPES)


MIN_AREA = _smallest_object_area() // 2  # smaller blobs are not objects (a model's stray smudges)


def read(image, world: int = 1) -> Parsed:
    """The objects of a (H, W, 3) uint8 image of `world`: lab.world.parse without blobs under MIN_AREA pixels (at
    128 px)."""
    return parse(image, min_area=MIN_AREA, world=world)


def changed_scene(scene: Scene, attribute: str) -> Scene:
    """``scene`` with objects[0]'s colour (the next palette colour that no other object has and that does not make a
    held-out colour-shape pair; in world 2, one the background allows) or size (small <-> large, radius scaled)
    changed; the caption is rebuilt."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute {attribute!r}; use one of {', '.join(ATTRIBUTES)}")
    obj, others = scene.objects[0], scene.objects[1:]
    if attribute == "colour":
        names = list(COLOURS)
        order = names[names.index(obj.colour) + 1:] + names[:names.index(obj.colour)]
        taken = {o.colour for o in others}
        colour = next(c for c in order if c not in taken and (c, obj.shape) not in HELDOUT_PAIRS
                      and (scene.world == 1 or backgrounds.allowed(scene.backdrop, c)))
        new = dataclasses.replace(obj, colour=colour)
    else:
        size = "large" if obj.size == "small" else "small"
        new = dataclasses.replace(obj, size=size, radius=obj.radius * SIZES[size] / SIZES[obj.size])
    objects = (new,) + others
    return dataclasses.replace(scene, objects=objects, caption=caption_of(objects, scene.background, scene.relation))


def _nearest(reference: Parsed, parsed: Parsed, tol: float) -> list:
    """For each reference object, the parsed object whose centre is nearest and within tol (else None), one-to-one."""
    out, free = [], list(parsed.objects)
    for ref in reference.objects:
        best = min(free, key=lambda f: np.hypot(f.x - ref.x, f.y - ref.y), default=None)
        if best is not None and np.hypot(best.x - ref.x, best.y - ref.y) <= tol:
            free.remove(best)
            out.append(best)
        else:
            out.append(None)
    return out


def kept(reference: Parsed, parsed: Parsed, ignore: str | None = None, tol: float = TOL) -> dict[str, bool]:
    """Verdicts (KEPT keys and "all"): same object count and background; every reference object has a parsed object
    within ``tol`` px (position) with the same colour / shape / size; the ``ignore`` attribute is not judged."""
    found = _nearest(reference, parsed, tol)
    verdict = {"count": len(parsed.objects) == len(reference.objects),
               "background": parsed.background == reference.background,
               "position": all(f is not None for f in found)}
    for attribute in ("colour", "shape", "size"):
        if attribute != ignore:
            verdict[attribute] = all(f is not None and getattr(f, attribute) == getattr(r, attribute)
                                     for r, f in zip(reference.objects, found))
    verdict["all"] = all(verdict.values())
    return verdict


def changed(target: Scene, parsed: Parsed, attribute: str) -> bool:
    """Does the image show the target scene's value of ``attribute`` (lab.world.score's verdict)?"""
    return bool(score(target, parsed)[attribute])
