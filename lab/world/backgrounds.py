"""World 2's backgrounds: flat colours, gradients, stripes and low-frequency clouds, named in a few words.

    >>> import numpy as np
    >>> from lab.world.backgrounds import sample, paint, read
    >>> bg = sample(np.random.default_rng(0))
    >>> bg.name                                           # doctest: +SKIP
    'navy and white striped'
    >>> read(np.round(paint(bg)).astype(np.uint8)).name == bg.name
    True

API: ``Background`` (kind, colours and geometry; ``name`` is what the caption says), ``sample(rng)``, ``mix(bg)``
(the (H, W) share of the second colour at each pixel), ``paint(bg)``, ``allowed(bg, colour)`` (the colour-distance
rule), ``read(image)`` (the parser's reading: name and colours), ``NAMES`` (every background name).

Every background pixel is a blend ``(1 - t) A + t B`` of at most two catalogue colours A and B, so "every colour the
background uses" is the segment AB in RGB. An object colour may stand on a background only if its distance to that
segment is at least ``MIN_DISTANCE``; the parser relies on it (a pixel far from the segment is an object's) and so
does the eye. Kinds: ``flat`` (one colour: "dark green"), ``gradient`` (A to B along one of 8 directions),
``striped`` (period 14-24 px at 0, 45, 90 or 135 degrees, anti-aliased) and ``cloudy`` (smooth blobs from a 5x5
random field, cubic-upsampled). Two-colour kinds always show both colours on the image border, which is where the
parser reads the colours; it tells the kinds apart by how the blend varies over the background (periodic: striped;
a plane: gradient; otherwise cloudy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .scenes import COLOURS, IMAGE_SIZE

BG_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0), "grey": (128, 128, 128), "white": (255, 255, 255),
    "dark green": (20, 80, 40), "navy": (20, 30, 110), "brown": (120, 65, 25), "beige": (225, 210, 165),
    "pink": (250, 165, 200), "teal": (0, 145, 145), "light blue": (150, 195, 245),
    "blue": (40, 70, 230), "red": (220, 30, 30),
}
FLAT = ("black", "grey", "white", "dark green", "navy", "brown", "beige", "pink", "teal", "light blue", "blue",
        "red")
PAIRS: tuple[tuple[str, str], ...] = (
    ("black", "white"), ("navy", "white"), ("blue", "white"), ("brown", "beige"), ("dark green", "beige"),
    ("teal", "white"), ("pink", "white"), ("grey", "light blue"), ("black", "grey"), ("red", "white"),
    ("navy", "pink"), ("dark green", "light blue"))
KINDS = ("flat", "gradient", "striped", "cloudy")
KIND_P = (0.3, 0.2, 0.25, 0.25)
MIN_DISTANCE = 110.0  # RGB distance from an object colour to every colour the background uses


@dataclass(frozen=True)
class Background:
    kind: str
    colours: tuple[str, ...]  # one for flat, two otherwise (in PAIRS order)
    angle: float = 0.0  # degrees: the gradient's direction, or the stripes' normal
    period: float = 0.0  # stripes: pixels at IMAGE_SIZE
    phase: float = 0.0  # stripes: 0..1
    seed: int = 0  # clouds: the random field's seed

    @property
    def name(self) -> str:
        """What the caption calls it: 'teal', 'navy and white striped'."""
        if self.kind == "flat":
            return self.colours[0]
        return f"{self.colours[0]} and {self.colours[1]} {self.kind}"

    def rgb(self) -> tuple[np.ndarray, np.ndarray]:
        a = np.array(BG_COLOURS[self.colours[0]], np.float32)
        return a, np.array(BG_COLOURS[self.colours[-1]], np.float32)


NAMES: tuple[str, ...] = tuple([c for c in FLAT] + [Background(k, p).name for k in KINDS[1:] for p in PAIRS])
_BY_NAME = {n: (("flat", (n,)) if n in FLAT else (n.rsplit(" ", 1)[1], tuple(n.rsplit(" ", 1)[0].split(" and "))))
            for n in NAMES}


def mix(bg: Background, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size) float32 in [0, 1]: how much of the second colour each pixel shows."""
    if bg.kind == "flat":
        return np.zeros((size, size), np.float32)
    if bg.kind == "cloudy":
        return _clouds(bg.seed, size)
    ss = 4 if bg.kind == "striped" else 1  # stripes are anti-aliased as the objects are: 4x4 samples per pixel
    c = (np.arange(size * ss, dtype=np.float64) + 0.5) / ss  # sample centres, pixels
    x, y = np.meshgrid(c, c)
    u, v = math.cos(math.radians(bg.angle)), math.sin(math.radians(bg.angle))
    along = x * u + y * v  # (size*ss, size*ss)
    if bg.kind == "gradient":
        corners = [px * u + py * v for px in (0, size) for py in (0, size)]
        t = (along - min(corners)) / (max(corners) - min(corners))
    else:
        t = ((along / (bg.period * size / IMAGE_SIZE) + bg.phase) % 1.0 >= 0.5).astype(np.float64)
        t = t.reshape(size, ss, size, ss).mean(axis=(1, 3))
    return t.astype(np.float32)


def _clouds(seed: int, size: int) -> np.ndarray:
    field = np.random.default_rng([seed, 77]).standard_normal((5, 5))
    smooth = ndimage.zoom(field, size / 5, order=3, mode="reflect", grid_mode=True)[:size, :size]
    smooth = (smooth - smooth.mean()) / max(float(smooth.std()), 1e-6)
    return np.clip(0.5 + 0.6 * smooth, 0, 1).astype(np.float32)


def paint(bg: Background, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size, 3) float32 RGB of the background."""
    a, b = bg.rgb()
    t = mix(bg, size)[..., None]  # (H, W, 1)
    return (1 - t) * a + t * b


def segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance, t) of each RGB point (..., 3) to the segment from a to b (t: where its nearest point lies, 0..1)."""
    step = b - a
    t = np.clip(((points - a) @ step) / max(float(step @ step), 1e-6), 0, 1)  # (...)
    return np.linalg.norm(points - (a + t[..., None] * step), axis=-1), t


def allowed(bg: Background, colour: str) -> bool:
    """May an object of this colour stand on this background? (distance to every colour it uses >= MIN_DISTANCE)"""
    d, _ = segment_distance(np.array(COLOURS[colour], np.float32), *bg.rgb())
    return float(d) >= MIN_DISTANCE


def _border(t: np.ndarray) -> np.ndarray:
    return np.concatenate([t[0], t[-1], t[:, 0], t[:, -1]])


def _r2_of_plane(t: np.ndarray, keep: np.ndarray) -> float:
    """How much of t's variance over the kept pixels a plane a + b x + c y explains (1 for a gradient)."""
    ys, xs = np.nonzero(keep)
    design = np.stack([np.ones(len(xs)), xs, ys], 1).astype(np.float64)  # (pixels, 3)
    values = t[keep].astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    return 1.0 - float(((design @ coef - values) ** 2).sum()) / max(float(((values - values.mean()) ** 2).sum()), 1e-9)


def sample(rng: np.random.Generator) -> Background:
    """A random background (kinds with probabilities KIND_P)."""
    kind = str(rng.choice(KINDS, p=KIND_P))
    if kind == "flat":
        return Background(kind, (str(rng.choice(FLAT)),))
    pair = PAIRS[int(rng.integers(len(PAIRS)))]
    if kind == "gradient":
        return Background(kind, pair, angle=45.0 * int(rng.integers(8)))
    if kind == "striped":
        return Background(kind, pair, angle=45.0 * int(rng.integers(4)), period=float(rng.uniform(14, 24)),
                          phase=float(rng.uniform()))
    while True:  # clouds that show both colours on the border and are not a plane (which would read as a gradient)
        bg = Background(kind, pair, seed=int(rng.integers(2**31)))
        t = _clouds(bg.seed, 64)
        edge = _border(t)
        if (edge < 0.1).mean() > 0.05 and (edge > 0.9).mean() > 0.05 and _r2_of_plane(t, t >= 0) < 0.6:
            return bg


# ---------------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Read:
    name: str
    a: np.ndarray  # (3,) RGB of the first colour
    b: np.ndarray  # (3,) of the second (== a for flat)


_CANDIDATES = [(c,) for c in FLAT] + list(PAIRS)
FOREGROUND = 0.45 * MIN_DISTANCE  # a pixel this far from every background colour is an object's


def read(image: np.ndarray) -> Read:
    """The background of an (H, W, 3) world-2 image: its catalogue colours from the border, then its kind from how
    the blend between them varies over the pixels no object covers."""
    img = np.asarray(image, np.float32)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])  # (4*side, 3)
    best, best_err = None, math.inf
    for names in _CANDIDATES:
        a, b = np.array(BG_COLOURS[names[0]], np.float32), np.array(BG_COLOURS[names[-1]], np.float32)
        d, t = segment_distance(border, a, b)
        if len(names) == 2 and ((t < 0.3).mean() < 0.03 or (t > 0.7).mean() < 0.03):
            continue  # a pair must show both of its colours
        err = float(np.minimum(d, 60.0).mean())
        if err < best_err:
            best, best_err = names, err
    a, b = np.array(BG_COLOURS[best[0]], np.float32), np.array(BG_COLOURS[best[-1]], np.float32)
    if len(best) == 1:
        return Read(best[0], a, b)
    d, t = segment_distance(img, a, b)  # (H, W) each
    known = ~ndimage.binary_dilation(d > FOREGROUND, iterations=3)
    return Read(Background(_kind(t, known), best).name, a, b)


def _kind(t: np.ndarray, known: np.ndarray) -> str:
    """striped, gradient or cloudy, from the blend map t over the background pixels ``known``."""
    filled = t[tuple(ndimage.distance_transform_edt(~known, return_distances=False, return_indices=True))]
    spectrum = np.abs(np.fft.fft2(filled - filled.mean())) ** 2  # (H, W)
    f = np.fft.fftfreq(t.shape[0]) * t.shape[0]  # cycles per image (stripes scale with the image)
    radius = np.hypot(*np.meshgrid(f, f))
    if spectrum[(radius >= 4) & (radius <= 16)].sum() > 0.5 * spectrum.sum():  # stripes: 5.3-9.1 cycles
        return "striped"
    smooth = ndimage.gaussian_filter(filled, 2.0 * t.shape[0] / IMAGE_SIZE)  # pixel noise, not the blend's shape
    return "gradient" if _r2_of_plane(smooth, known) > 0.85 else "cloudy"
