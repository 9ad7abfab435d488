"""Score a text-to-image pipeline on the shapes world: generate from captions of unseen scenes, parse, compare.

    >>> import lab
    >>> from lab.world.quality import evaluate, table
    >>> result = evaluate(lab.load("shapes"), n=8, steps=25)        # doctest: +SKIP
    >>> print(table(result))                                        # doctest: +SKIP

``generate(pipe, scenes, steps, guidance, seed, batch)`` returns uint8 images; ``round_trip(pipe, images)`` passes
images through the pipeline's VAE and back (what its decoder alone does to a scene); ``evaluate`` returns per-scene
verdicts grouped by kind of prompt (one object, two objects, held-out compositions) plus seconds per image, batch by
batch (``batches``, ``score_batch``, ``collect``: the same, one batch at a time, for lab.parallel); ``table``
renders them as Markdown with 95% Wilson intervals; ``goals`` is issue 19's four world-2 goals, each met only when
its interval's lower end clears it.

World: ``evaluate(pipe, world=None)`` scores the pipeline in the world it was trained on (``lab.world.world_of``):
world-2 captions name the background, and the world-2 parser reads it back. A world-1 result's table is the one the
reports have always printed (its target column compares the rate itself); a world-2 result's compares the interval.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import binomtest, norm

from ..progress import progress
from .parser import parse, score
from .scenes import WORLDS, Scene, make_scene
from .trained import world_of

SEED_BASE = 1_000_000  # evaluation scenes use seeds far from any training seed, in the "test"/"heldout" streams


def generate(pipe, scenes: list[Scene], steps: int = 25, guidance: float = 7.5, seed: int = 0, batch: int = 8,
             desc: str | None = None, **call_kwargs) -> np.ndarray:
    """(N, H, W, 3) uint8 images for the scenes' captions; image i uses generator seed ``seed + i``. desc: label of
    a progress bar (none without it)."""
    out = []
    for i in progress(range(0, len(scenes), batch), desc, unit="batch", disable=desc is None):
        chunk = scenes[i:i + batch]
        gens = [torch.Generator(pipe.device).manual_seed(seed + i + j) for j in range(len(chunk))]
        images = pipe([s.caption for s in chunk], num_inference_steps=steps, guidance_scale=guidance,
                      generator=gens, height=chunk[0].size, width=chunk[0].size, output_type="np",
                      **call_kwargs).images  # (B, H, W, 3) float in [0, 1]
        out.append((images * 255).round().astype(np.uint8))
    return np.concatenate(out)


@torch.no_grad()
def round_trip(pipe, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """(N, H, W, 3) uint8 images encoded by the pipeline's VAE (posterior mean) and decoded again, as uint8."""
    vae, out = pipe.vae, []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).to(vae.device, vae.dtype) / 127.5 - 1
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.float().cpu()
        out.append(((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


@dataclass
class Evaluation:
    verdicts: dict[str, list[dict[str, bool]]] = field(default_factory=dict)  # group -> one verdict per image
    seconds_per_image: float = float("nan")
    steps: int = 25
    guidance: float = 7.5
    images: dict[str, np.ndarray] = field(default_factory=dict)
    world: int = 1


GROUPS = {"one object": ("test", 1), "two objects": ("test", 2), "two objects, held-out": ("heldout", 2)}


def evaluation_scenes(group: str, n: int, world: int = 1, first: int = 0) -> list[Scene]:
    """The group's n unseen scenes of `world` from the first-th on (seeds SEED_BASE + first + i)."""
    split, n_objects = GROUPS[group]
    return [make_scene(SEED_BASE + i, split, n_objects=n_objects, world=world) for i in range(first, first + n)]


@dataclass(frozen=True)
class Batch:
    """evaluate()'s item: `count` consecutive scenes of a group from the first-th on, generated in one pipeline
    call (image i with seed SEED_BASE + i), so its verdicts do not depend on who generates the other batches."""
    group: str
    first: int
    count: int


def batches(n: int, groups=tuple(GROUPS), batch: int = 8) -> list[Batch]:
    """The batches of n scenes per group, group by group."""
    return [Batch(g, i, min(batch, n - i)) for g in groups for i in range(0, n, batch)]


def score_batch(pipe, b: Batch, steps: int = 25, guidance: float = 7.5, world: int = 1,
                keep_images: bool = False) -> dict:
    """One batch generated, parsed and scored: {"verdicts": [one per scene], "seconds": s, "images": (count, H, W,
    3) uint8 when keep_images, else None}."""
    scenes = evaluation_scenes(b.group, b.count, world, first=b.first)
    t0 = time.perf_counter()
    images = generate(pipe, scenes, steps, guidance, seed=SEED_BASE + b.first, batch=b.count)
    seconds = time.perf_counter() - t0
    return {"verdicts": [score(s, parse(im, world=world)) for s, im in zip(scenes, images)], "seconds": seconds,
            "images": images if keep_images else None}


def collect(done: list[Batch], scored: list[dict], steps: int = 25, guidance: float = 7.5,
            world: int = 1) -> Evaluation:
    """The Evaluation of batches and their score_batch() results, in order."""
    result, seconds, count, images = Evaluation(steps=steps, guidance=guidance, world=world), 0.0, 0, {}
    for b, r in zip(done, scored):
        result.verdicts.setdefault(b.group, []).extend(r["verdicts"])
        seconds += r["seconds"]
        count += b.count
        if r["images"] is not None:
            images.setdefault(b.group, []).append(r["images"])
    result.images = {g: np.concatenate(ims) for g, ims in images.items()}
    result.seconds_per_image = seconds / max(count, 1)
    return result


def evaluate(pipe, n: int = 200, steps: int = 25, guidance: float = 7.5, groups=tuple(GROUPS), batch: int = 8,
             keep_images: bool = False, world: int | None = None) -> Evaluation:
    """Generate n unseen captions per group (one object, two objects, held-out pairs), parse each image and score
    it against its scene; a progress bar over the batches. world: 1 or 2 (default: the pipeline's,
    ``world_of(pipe)``). The batches, one at a time: ``batches``, ``score_batch`` and ``collect`` (what
    analyses.quality_study splits over processes)."""
    world = world_of(pipe) if world is None else world
    if world not in WORLDS:
        raise ValueError(f"world={world!r} is not one of {WORLDS}")
    todo = batches(n, groups, batch)
    scored = [score_batch(pipe, b, steps, guidance, world, keep_images)
              for b in progress(todo, "quality: generating", unit="batch")]
    return collect(todo, scored, steps, guidance, world)


Z = 1.96  # the textbook two-sided 95% normal quantile; every report of the lab has used it


def wilson(k: int, n: int, z: float = Z) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n (scipy's), as (low, high); NaNs for n = 0.

        wilson(8, 10)      # (0.49..., 0.94...)

    z = 1.96 is passed to scipy as its confidence level, 2 * Phi(1.96) - 1 = 0.95000421, so the intervals are the
    textbook ones the reports have always printed (scipy's exact 0.95 moves a few last printed digits).
    """
    if n == 0:
        return float("nan"), float("nan")
    level = 2 * float(norm.cdf(z)) - 1
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


TARGETS = {("one object", "colour"): 0.95, ("one object", "shape"): 0.90, ("two objects", "objects"): 0.75,
           ("one object", "background"): 0.95, ("two objects", "background"): 0.95}
GOALS = {("one object", "colour"): 0.95, ("one object", "shape"): 0.90, ("one object", "background"): 0.95,
         ("two objects", "objects"): 0.75}  # issue 19's goals for a world-2 model (200 images per group)
GOAL_NAMES = {("one object", "colour"): "one object: colour", ("one object", "shape"): "one object: shape",
              ("one object", "background"): "one object: background",
              ("two objects", "objects"): "two objects: both right (colour and shape)"}


def rates(result: Evaluation) -> dict[tuple[str, str], tuple[int, int]]:
    """(group, attribute) -> (right, total)."""
    out = {}
    for group, verdicts in result.verdicts.items():
        for key in ("colour", "shape", "size", "objects", "background", "relation", "all"):
            vs = [v[key] for v in verdicts if key in v]
            if vs:
                out[group, key] = (sum(vs), len(vs))
    return out


def verdict(k: int, n: int, target: float) -> str:
    """'met' when the 95% interval's lower end clears the target; 'met by the estimate, not by the interval' when
    only the rate does; else 'NOT met'."""
    if wilson(k, n)[0] >= target:
        return "met"
    return "met by the estimate, not by the interval" if n and k / n >= target else "NOT met"


def goals(result: Evaluation) -> str:
    """Markdown: each of issue 19's world-2 quality goals (GOALS) with its rate, 95% interval and verdict (met only
    when the interval's lower end clears it); a goal whose group was not evaluated says so."""
    counts = rates(result)
    lines = ["| goal | right | 95% CI | target | verdict |", "|---|---|---|---|---|"]
    for key, target in GOALS.items():
        if key not in counts:
            lines.append(f"| {GOAL_NAMES[key]} | not measured | | >= {target:.0%} | NOT met |")
            continue
        k, n = counts[key]
        lo, hi = wilson(k, n)
        lines.append(f"| {GOAL_NAMES[key]} | {k}/{n} = {k / n:.1%} | {lo:.1%} - {hi:.1%} | >= {target:.0%} | "
                     f"**{verdict(k, n, target)}** |")
    return "\n".join(lines)


def table(result: Evaluation) -> str:
    """Markdown table: group, attribute, rate, 95% CI, target (where the project set one). World 1: TARGETS, met
    when the rate reaches it (as the reports have always printed); world 2: GOALS, met only by the interval."""
    lines = ["| prompts | attribute | right | 95% CI | target |", "|---|---|---|---|---|"]
    for (group, key), (k, n) in rates(result).items():
        lo, hi = wilson(k, n)
        if result.world == 1:
            target = TARGETS.get((group, key))
            mark = "" if target is None else f">= {target:.0%} {'met' if k / n >= target else 'NOT met'}"
        else:
            target = GOALS.get((group, key))
            mark = "" if target is None else f">= {target:.0%} {verdict(k, n, target)}"
        lines.append(f"| {group} | {key} | {k}/{n} = {k / n:.1%} | {lo:.1%} - {hi:.1%} | {mark} |")
    lines.append(f"\n{result.steps} DDIM steps, guidance {result.guidance}; "
                 f"{result.seconds_per_image:.2f} s per image (batch generation, this machine).")
    return "\n".join(lines)
