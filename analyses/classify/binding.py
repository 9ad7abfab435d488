"""The attribute-binding test of the shapes world: a two-object scene against its caption with the two objects'
colours (or shapes) swapped; a classifier is right when it prefers the true caption. Chance is 50%.

    >>> from analyses.classify.binding import pairs
    >>> p = pairs(2, "colour")[0]
    >>> p.true != p.swapped and p.attribute == "colour"
    True

pairs(n, attribute, first_seed, world)   `n` test-split scenes of `world` whose two objects differ in `attribute`
                                         ('colour' | 'shape'; arrows are left out of shape swaps, as their caption
                                         says where they point). In world 2 a swapped colour is still one the
                                         background allows: both objects' colours are.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lab.world import Scene, make_scene
from lab.world.scenes import caption_of

ATTRIBUTES = ("colour", "shape")
SEED_BASE = 4_000_000


@dataclass(frozen=True)
class Pair:
    scene: Scene
    attribute: str
    swapped: str  # the caption with the objects' `attribute` exchanged

    @property
    def true(self) -> str:
        return self.scene.caption


def pairs(n: int, attribute: str, first_seed: int = SEED_BASE, world: int = 1) -> list[Pair]:
    """`n` binding pairs for `attribute`, of `world`'s scenes."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute {attribute!r} is not one of: {', '.join(ATTRIBUTES)}")
    out, seed = [], first_seed + (0 if attribute == "colour" else 500_000)
    while len(out) < n:
        scene = make_scene(seed, "test", n_objects=2, world=world)
        seed += 1
        a, b = scene.objects
        if getattr(a, attribute) == getattr(b, attribute) or (attribute == "shape" and "arrow" in (a.shape, b.shape)):
            continue
        objs = (dataclasses.replace(a, **{attribute: getattr(b, attribute)}),
                dataclasses.replace(b, **{attribute: getattr(a, attribute)}))
        out.append(Pair(scene, attribute, caption_of(objs, scene.background, scene.relation)))
    return out
