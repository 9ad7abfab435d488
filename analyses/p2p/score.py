"""Edits of the shapes world and the parser's verdict on them: did the edited object change as asked, and did the
rest of the picture stay?

    >>> from analyses.p2p.score import tasks, verdict
    >>> task = tasks(1)[0]
    >>> task.attribute in ("colour", "shape") and task.source != task.target
    True
    >>> v = verdict(task, source_image, edited_image)                      # doctest: +SKIP
    >>> v["edited and preserved"]                                          # doctest: +SKIP
    True

tasks(n, first_seed, world)     two-object scenes of `world`'s "test" split, each with one object's colour or shape
                                word swapped (alternating), as a Task with the source and target captions. In world 2
                                an edited scene keeps world 2's rules (a colour the background allows, objects of one
                                colour apart, every object mostly visible)
verdict(task, source, edited)   the parser's checks (keys in CHECKS), in the scene's world; None when the source image
                                is not as captioned (nothing to edit then)

Checks: `changed` (the object nearest the edited one's source centre has the new colour or shape and keeps the
other), `other kept` (an object of the other's colour and shape whose mask has IoU >= OTHER_IOU with its source
mask), `background kept`, `positions kept` (two objects, the edited one within POSITION_TOL of the image side of its
source centre), and `edited and preserved` (all of them).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from lab.world import COLOURS, HELDOUT_PAIRS, IMAGE_SIZE, Scene, backgrounds, make_scene, match, parse, score
from lab.world.scenes import caption_of

OTHER_IOU = 0.9
POSITION_TOL = 0.05  # of the image side: 6.4 px at 128 px
SEED_BASE = 3_000_000  # far from training seeds and from the other studies' scenes
SWAP_SHAPES = ("circle", "square", "triangle", "hexagon", "trapezoid")  # arrows carry "pointing ..." words
CHECKS = ("changed", "other kept", "background kept", "positions kept", "edited and preserved")


@dataclass(frozen=True)
class Task:
    """One edit: object `index` of `scene` gets `new` as its `attribute`; target is the caption with that word."""

    scene: Scene
    index: int
    attribute: str  # 'colour' | 'shape'
    old: str
    new: str
    target: str

    @property
    def source(self) -> str:
        return self.scene.caption


def tasks(n: int, first_seed: int = SEED_BASE, world: int = 1) -> list[Task]:
    """`n` edit tasks, colour and shape swaps alternating, each on its own two-object scene of `world`."""
    out, seed = [], first_seed
    while len(out) < n:
        scene = make_scene(seed, "test", n_objects=2, world=world)
        rng = np.random.default_rng(seed)
        seed += 1
        task = _task(scene, "colour" if len(out) % 2 == 0 else "shape", rng)
        if task is not None:
            out.append(task)
    return out


def _task(scene: Scene, attribute: str, rng) -> Task | None:
    order = [int(i) for i in rng.permutation(2)]
    for i in order:
        obj, other = scene.objects[i], scene.objects[1 - i]
        if attribute == "shape" and obj.shape not in SWAP_SHAPES:
            continue
        values = list(COLOURS) if attribute == "colour" else list(SWAP_SHAPES)
        options = []
        for v in values:
            new = dataclasses.replace(obj, **{attribute: v})
            if v != getattr(obj, attribute) and (new.colour, new.shape) != (other.colour, other.shape) \
                    and (new.colour, new.shape) not in HELDOUT_PAIRS and _drawable(scene, i, new):
                options.append(v)
        if not options:
            continue
        value = options[int(rng.integers(len(options)))]
        objs = list(scene.objects)
        objs[i] = dataclasses.replace(obj, **{attribute: value})
        target = caption_of(tuple(objs), scene.background, scene.relation)
        return Task(scene, i, attribute, getattr(obj, attribute), value, target)
    return None


def _drawable(scene: Scene, i: int, new) -> bool:
    """Would world 2 draw the scene with object i replaced by `new`? Its rules: a colour the background allows,
    objects of one colour kept apart, every object mostly visible. (World 1: always.)"""
    if scene.world == 1:
        return True
    from lab.world.world2 import _compatible, _readable
    objs = scene.objects[:i] + (new,) + scene.objects[i + 1:]
    return (backgrounds.allowed(scene.backdrop, new.colour)
            and all(_compatible(new, o, scene.size / IMAGE_SIZE) for j, o in enumerate(objs) if j != i)
            and _readable(objs, scene.drawn, scene.size))


def verdict(task: Task, source_image: np.ndarray, edited_image: np.ndarray) -> dict[str, bool | float] | None:
    """The checks of one edited image against its source image (see the module docstring), and "other iou" (the
    best mask IoU of an edited-image object with the other object's source mask); None when the source image does
    not show the caption's two objects."""
    src = parse(source_image, world=task.scene.world)
    if len(src.objects) != 2 or not score(task.scene, src)["objects"]:
        return None
    found = match(task.scene, src)
    edited_src, other_src = found[task.index], found[1 - task.index]
    other_obj = task.scene.objects[1 - task.index]
    out = parse(edited_image, world=task.scene.world)
    side = source_image.shape[0]
    kept = [f for f in out.objects if _iou(f.mask, other_src.mask) >= OTHER_IOU
            and (f.colour, f.shape) == (other_obj.colour, other_obj.shape)]
    rest = [f for f in out.objects if not any(f is k for k in kept)]
    near = min(rest, key=lambda f: np.hypot(f.x - edited_src.x, f.y - edited_src.y)) if rest else None
    want = {"colour": edited_src.colour, "shape": edited_src.shape, task.attribute: task.new}
    v = {
        "changed": near is not None and (near.colour, near.shape) == (want["colour"], want["shape"]),
        "other kept": bool(kept),
        "background kept": out.background == src.background,
        "positions kept": bool(near is not None and len(out.objects) == 2
                               and np.hypot(near.x - edited_src.x, near.y - edited_src.y) <= POSITION_TOL * side),
    }
    v["edited and preserved"] = all(v.values())
    v["other iou"] = max((_iou(f.mask, other_src.mask) for f in out.objects), default=0.0)
    return v


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0
