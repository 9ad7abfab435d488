"""The shapes world: scenes with exact ground truth, their captions, and a parser that reads images back.

    >>> from lab.world import make_scene, render, parse, score
    >>> scene = make_scene(seed=0)
    >>> score(scene, parse(render(scene)))["all"]
    True
    >>> scene2 = make_scene(seed=0, world=2)        # backgrounds that vary, occlusion (lab.world.world2)
    >>> score(scene2, parse(render(scene2), world=2))["all"]
    True
    >>> world_of("shapes")                          # the world a model was trained on (its training.json)
    1
"""
from .parser import Found, Parsed, match, parse, score
from .scenes import (BACKGROUNDS, COLOURS, HELDOUT_PAIRS, HELDOUT_RELATIONS, IMAGE_SIZE, KEYPOINTS, SHAPES, SIZES,
                     WORLDS, Obj, Scene, keypoints_visible, make_scene, masks, render)
from .trained import world_of

__all__ = ["make_scene", "render", "masks", "parse", "score", "match", "Scene", "Obj", "Parsed", "Found", "SHAPES",
           "COLOURS", "BACKGROUNDS", "SIZES", "KEYPOINTS", "HELDOUT_PAIRS", "HELDOUT_RELATIONS", "IMAGE_SIZE",
           "WORLDS", "keypoints_visible", "world_of"]
