"""The shapes world: scenes with exact ground truth, their captions, and a parser that reads images back.

    >>> from lab.world import make_scene, render, parse, score
    >>> scene = make_scene(seed=0)
    >>> score(scene, parse(render(scene)))["all"]
    True
"""
from .parser import Found, Parsed, match, parse, score
from .scenes import (BACKGROUNDS, COLOURS, HELDOUT_PAIRS, HELDOUT_RELATIONS, IMAGE_SIZE, KEYPOINTS, SHAPES, SIZES,
                     Obj, Scene, make_scene, masks, render)

__all__ = ["make_scene", "render", "masks", "parse", "score", "match", "Scene", "Obj", "Parsed", "Found", "SHAPES",
           "COLOURS", "BACKGROUNDS", "SIZES", "KEYPOINTS", "HELDOUT_PAIRS", "HELDOUT_RELATIONS", "IMAGE_SIZE"]
