"""Study: the built-in model as a classifier on the shapes world's attribute-binding test.

    python -m analyses.classify [out]   # LAB_SIZE=small (3 pairs per attribute) | default (30) | full (300)
    run(out) -> str                     # the REPORT section; also out/classify.md

Each rendered two-object scene (test split, in the world the model was trained on: ``lab.world.world_of``) is scored
against its caption and the caption with the objects' colours (or shapes) swapped: by denoising error summed over
evenly spaced timesteps (one noise draw, the same for both captions) and by cross-attention agreement. Chance is 50%;
accuracy with 95% Wilson intervals; compute per decision in denoiser evaluations and seconds. ``model`` may be a
diffusion transformer (SD3 / Flux: score.py's flow-matching velocity error at sigma = t / 1000 and the image->text
views of its joint attention); judge() and measure() take any pipeline score.py takes.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import lab
from lab import parallel
from lab.pipes import family_of
from lab.plotting import save_figure
from lab.sizes import pick, size
from lab.world import render, world_of
from lab.world.quality import wilson

from .binding import ATTRIBUTES, Pair, pairs
from .plot import error_curves, margin_curves
from .score import attention, errors, rank, timesteps

METHODS = ("denoising error", "attention agreement")
SPLITS_ITEMS = True  # its pairs go through lab.parallel.run_items: analyses.run_all runs it on every process


@dataclass(frozen=True)
class Config:
    """How big the study runs: binding pairs per attribute, timesteps per decision."""
    n: int
    timesteps: int


def config(**overrides) -> Config:
    """The study's size for LAB_SIZE (small | default | full), with any field overridden: config(n=1)."""
    return dataclasses.replace(Config(n=pick(3, 30, 300), timesteps=pick(4, 10, 20)), **overrides)


def items(n: int, world: int = 1) -> list[Pair]:
    """The study's items: n binding pairs per attribute of `world`, attribute by attribute; each seeded by its
    scene."""
    return [p for attribute in ATTRIBUTES for p in pairs(n, attribute, world=world)]


def judge(pipe, p: Pair, ts: list[int]) -> dict:
    """One pair's scores: {"errors": (2, T), "attention": (2, T), "seconds": {method: s}}; seeded by the scene."""
    image = render(p.scene)
    t0 = time.perf_counter()
    e = errors(pipe, image, [p.true, p.swapped], ts, seed=p.scene.seed)  # (2, T)
    t1 = time.perf_counter()
    a = attention(pipe, image, [p.true, p.swapped], ts, seed=p.scene.seed)  # (2, T)
    return {"errors": e, "attention": a, "seconds": {METHODS[0]: t1 - t0, METHODS[1]: time.perf_counter() - t1}}


def tally(pairs_: list[Pair], judged: list[dict]):
    """({(attribute, method): [correct per pair]}, {attribute: (pairs, T) relative margins}, seconds per method,
    an example (pair, errors)) from the pairs and their judge() results, in order."""
    right, rows, seconds = {}, {}, {m: 0.0 for m in METHODS}
    for p, j in zip(pairs_, judged):
        e, a = j["errors"], j["attention"]
        right.setdefault((p.attribute, "denoising error"), []).append(rank(e)[0] == 0)
        right.setdefault((p.attribute, "attention agreement"), []).append(rank(a, higher_is_better=True)[0] == 0)
        rows.setdefault(p.attribute, []).append(((e[1] - e[0]) / e[0]).numpy())
        for m in METHODS:
            seconds[m] += j["seconds"][m]
    margins = {attribute: np.stack(r) for attribute, r in rows.items()}
    example = (pairs_[0], judged[0]["errors"])
    return right, margins, {m: s / len(pairs_) for m, s in seconds.items()}, example


def measure(pipe, n: int, ts: list[int]):
    """tally() of every pair judged in this process (no parts on disk): run() splits them over processes."""
    ps = items(n, world_of(pipe))
    return tally(ps, [judge(pipe, p, ts) for p in ps])


def _key(p: Pair) -> str:
    return f"{p.attribute}-{p.scene.seed}"


# How the report names the denoiser's parts: a UNet's, or a diffusion transformer's (SD3 / Flux, flow matching).
WORDING = {
    "unet": {"denoiser": "UNet", "prediction": "noise prediction", "when": "", "traced": "cross-attention",
             "layers": "cross-attention layer, the largest probability any latent position gives each of the "
                       "caption's words"},
    "dit": {"denoiser": "transformer", "prediction": "velocity prediction (noise - x0)", "when": ", sigma = t / 1000",
            "traced": "image->text attention",
            "layers": "joint-attention layer's image->text view, the largest probability any image token gives each "
                      "of the caption's words (every text window)"},
}


def section(right, info) -> str:
    w = WORDING[info.get("family", "unet")]
    ts = info["timesteps"]
    lines = ["## The diffusion model as a classifier (attribute binding)", "",
             f"{info['n']} rendered two-object scenes per attribute (test split), each against its caption with the "
             f"objects' colours (or shapes) swapped; chance 50%. Denoising error: mean squared error of the "
             f"{w['denoiser']}'s {w['prediction']} at {len(ts)} timesteps ({ts[0]}..{ts[-1]}{w['when']}), one noise "
             f"draw shared by both captions, averaged over t; the lower wins. Attention agreement: per "
             f"{w['layers']}, averaged; the higher wins.", "", "![margins](classify_margins.png)", "",
             "| attribute | method | right | 95% CI | above chance |", "|---|---|---|---|---|"]
    for (attribute, method), r in right.items():
        k, n = sum(r), len(r)
        lo, hi = wilson(k, n)
        lines.append(f"| {attribute} | {method} | {k}/{n} = {k / n:.0%} | {lo:.0%}-{hi:.0%} | "
                     f"{'yes' if lo > 0.5 else 'not shown'} |")
    T = len(ts)
    lines += ["", f"Compute per decision (two captions): denoising error {2 * T} {w['denoiser']} evaluations in one "
              f"batch, {info['seconds']['denoising error'] * 1000:.0f} ms; attention agreement {2 * T} evaluations "
              f"with {w['traced']} traced, {info['seconds']['attention agreement'] * 1000:.0f} ms (this machine, "
              f"1 VAE encoding each). Size `{info['size']}`, {info['total']:.0f} s in all."]
    return "\n".join(lines) + "\n"


def run(out: Path, model: str = "shapes", config: Config | None = None) -> str:
    """Run the study; write its figures and out/classify.md; return the REPORT section ("" on a process other
    than the main one under ``accelerate launch``: its pairs are split over the processes, see lab.parallel)."""
    cfg = config if config is not None else globals()["config"]()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n, ts = cfg.n, timesteps(cfg.timesteps)
    t0 = time.perf_counter()
    pipe = lab.load(model, device=parallel.device())
    world = world_of(pipe)
    ps = items(n, world)
    tag = parallel.tag_of((model, cfg) if world == 1 else (model, cfg, world))  # parts of one world are not another's
    judged = parallel.run_items("classify", ps, lambda p: judge(pipe, p, ts), out, key=_key, tag=tag,
                                desc="classify: pairs")
    if judged is None:
        return ""
    right, margins, seconds, (pair, e) = tally(ps, judged)
    from matplotlib.figure import Figure
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    margin_curves(margins, ts, ax=ax1)
    ax1.set_title("(swapped - true) / true error, mean over scenes", fontsize=8)
    error_curves(e, ts, ["true caption", f"{pair.attribute}s swapped"], ax=ax2, title=pair.true)
    save_figure(fig, out / "classify_margins.png")
    info = {"n": n, "timesteps": ts, "seconds": seconds, "size": size(), "total": time.perf_counter() - t0,
            "family": "unet" if family_of(pipe) == "unet" else "dit"}
    text = section(right, info)
    (out / "classify.md").write_text(text)
    return text


if __name__ == "__main__":
    from analyses.run_all import run_one
    run_one(run)
