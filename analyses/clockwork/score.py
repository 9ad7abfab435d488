"""How far an image moved from the plain run of the same seed: pixel distance and the parser's reading.

    >>> import numpy as np
    >>> from analyses.clockwork.score import moved
    >>> from lab.world import make_scene, render
    >>> image = render(make_scene(0, "test", n_objects=1))
    >>> moved(image, image)
    {'pixel rms': 0.0, 'reading changed': False}

reading(image, world)          what the parser sees: (background, ((colour, shape, size), ...) left to right)
moved(plain, other, world)     {'pixel rms': root mean squared difference in 0..255 levels, 'reading changed': bool}
"""
from __future__ import annotations

import numpy as np

from lab.world import parse


def reading(image: np.ndarray, world: int = 1) -> tuple:
    """The parser's reading of an (H, W, 3) uint8 image of `world`: background and each object's colour, shape and
    size."""
    p = parse(image, world=world)
    return p.background, tuple((f.colour, f.shape, f.size) for f in p.objects)


def moved(plain: np.ndarray, other: np.ndarray, world: int = 1) -> dict:
    """Pixel RMS difference (0..255 levels) and whether the parser (of `world`) reads the two (H, W, 3) uint8 images
    apart."""
    rms = float(np.sqrt(((other.astype(np.float64) - plain.astype(np.float64)) ** 2).mean()))
    return {"pixel rms": rms, "reading changed": reading(plain, world) != reading(other, world)}
