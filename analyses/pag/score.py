"""Is a clean object of the captioned kind drawn? The shapes world's parser on images of one-object captions.

    >>> from analyses.pag.score import scenes, verdict
    >>> from lab.world import render
    >>> scene = scenes(1)[0]
    >>> verdict(scene, render(scene))["clean"]
    True

scenes(n, first_seed, world)    one-object scenes of the "test" split (captions the model did not train on)
verdict(scene, image)           the parser's checks (in the scene's world), keys CHECKS: colour, shape and size of the
                                captioned object, exactly one object drawn, and `clean` (all four)
"""
from __future__ import annotations

import numpy as np

from lab.world import Scene, make_scene, parse, score

SEED_BASE = 4_000_000  # far from training seeds and from the other studies' scenes
CHECKS = ("colour", "shape", "size", "one object", "clean")


def scenes(n: int, first_seed: int = SEED_BASE, world: int = 1) -> list[Scene]:
    """`n` one-object scenes of `world`'s test split, seeds first_seed, first_seed + 1, ..."""
    return [make_scene(first_seed + i, "test", n_objects=1, world=world) for i in range(n)]


def verdict(scene: Scene, image: np.ndarray) -> dict[str, bool]:
    """The checks of CHECKS for one (H, W, 3) uint8 image generated from `scene`'s caption."""
    parsed = parse(image, world=scene.world)
    s = score(scene, parsed)
    v = {"colour": s["colour"], "shape": s["shape"], "size": s["size"], "one object": len(parsed.objects) == 1}
    v["clean"] = all(v.values())
    return v
