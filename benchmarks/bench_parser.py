"""How well the world's parser, the judge of every generated image, reads images whose truth is known.

    python benchmarks/bench_parser.py [--n 1200] [--world 1] [--against GIT_REV] [--out benchmarks/parser.md]

Image sets, all from the same test-split scenes (seeds from 2,000,000, 1-3 objects):
  renders             the world's own pixels
  blur 0.75 / 1.25    renders under a Gaussian blur of that sigma (pixels): soft edges and rounded corners
  blur 1.0 + noise    blur 1.0, then Gaussian pixel noise of std 10
  VAE round trip      renders encoded and decoded by the built-in model's VAE: what its decoder does to a shape
For each set: the share of scenes read right in everything, and in shape (95% Wilson interval), the single-object
shape confusions, and milliseconds per image. ``--against REV`` runs the parser of that git revision on the same
images, side by side (world 1 only). ``--world 2`` draws world-2 scenes (``make_scene(seed, "test", world=2)``),
parses with ``parse(image, world=2)`` and adds the share whose background name is read right; its round trips go
through the same built-in VAE, which was trained on world 1.
"""
from __future__ import annotations

import argparse
import importlib.util
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import ndimage

import lab
from lab.world import make_scene, render
from lab.world import parser as current
from lab.world.quality import round_trip, wilson

ROOT = Path(__file__).resolve().parents[1]


def parser_at(rev: str):
    """lab.world.parser as it was at git revision ``rev``, imported beside the current one."""
    source = subprocess.run(["git", "show", f"{rev}:lab/world/parser.py"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(f"lab.world._parser_{rev}", loader=None))
    module.__package__ = "lab.world"  # its relative imports resolve against today's lab.world
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    exec(compile(source, f"{rev}:lab/world/parser.py", "exec"), module.__dict__)
    return module


def image_sets(n: int, world: int = 1) -> tuple[list, dict[str, np.ndarray]]:
    scenes = [make_scene(2_000_000 + i, "test", world=world) for i in range(n)]
    renders = np.stack([render(s) for s in scenes])

    def blur(images, sigma, noise=0.0, seed=0):
        rng = np.random.default_rng(seed)
        out = ndimage.gaussian_filter(images.astype(np.float32), (0, sigma, sigma, 0))
        return np.clip(np.round(out + rng.normal(0, noise, out.shape) if noise else out), 0, 255).astype(np.uint8)

    return scenes, {"renders": renders, "blur 0.75": blur(renders, 0.75), "blur 1.25": blur(renders, 1.25),
                    "blur 1.0 + noise 10": blur(renders, 1.0, noise=10.0),
                    "VAE round trip": round_trip(lab.load("shapes"), renders)}


def judge(module, scenes, images, world: int = 1) -> tuple[int, int, int, Counter, float]:
    """(scenes right in everything, right in shape, right in background, single-object shape confusions, ms per
    image)."""
    everything = shape = background = 0
    confusions: Counter = Counter()
    t0 = time.perf_counter()
    for scene, image in zip(scenes, images):
        parsed = module.parse(image, world=world) if world != 1 else module.parse(image)
        verdict = module.score(scene, parsed)
        everything += verdict["all"]
        shape += verdict["shape"]
        background += verdict["background"]
        if len(scene.objects) == 1 and len(parsed.objects) == 1 and parsed.objects[0].shape != scene.objects[0].shape:
            confusions[scene.objects[0].shape, parsed.objects[0].shape] += 1
    return everything, shape, background, confusions, 1000 * (time.perf_counter() - t0) / len(scenes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1200)
    p.add_argument("--against", default=None, help="a git revision whose parser to run on the same images")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--world", type=int, choices=(1, 2), default=1)
    a = p.parse_args()
    parsers = {"current": current}
    if a.against:
        if a.world != 1:
            p.error(f"--against runs an older parser, which reads world 1 only; got --world {a.world}")
        parsers = {f"at {a.against}": parser_at(a.against), **parsers}
    scenes, sets = image_sets(a.n, a.world)
    w2 = a.world == 2
    lines = ["# The world's parser on images whose truth is known", "",
             f"{a.n} test-split {'world-2 ' if w2 else ''}scenes (1-3 objects), {platform.machine()}; "
             "`python benchmarks/bench_parser.py" + (f" --against {a.against}" if a.against else "")
             + (" --world 2" if w2 else "") + "`", "",
             "| images | parser | all right | shape right | 95% CI (shape) | " + ("background right | " if w2 else "")
             + "one-object shape confusions | ms/image |",
             "|---|---|---|---|---|---|---|" + ("---|" if w2 else "")]
    for name, images in sets.items():
        for label, module in parsers.items():
            everything, shape, background, confusions, ms = judge(module, scenes, images, a.world)
            lo, hi = wilson(shape, a.n)
            wrong = ", ".join(f"{t} as {f} {c}" for (t, f), c in confusions.most_common()) or "none"
            lines.append(f"| {name} | {label} | {everything / a.n:.1%} | {shape / a.n:.1%} | {lo:.1%} - {hi:.1%} "
                         + (f"| {background / a.n:.1%} " if w2 else "") + f"| {wrong} | {ms:.1f} |")
            print(lines[-1], flush=True)
    sets_doc = __doc__.split("Image sets, ")[1].split("For each set")[0]
    lines += ["", "```", "Image sets, " + sets_doc.rstrip(), "```"]
    text = "\n".join(lines) + "\n"
    if a.out:
        a.out.write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
