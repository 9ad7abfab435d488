"""Study: the built-in model as a classifier on the shapes world's attribute-binding test.

    python -m analyses.classify [out]   # LAB_SIZE=small (3 pairs per attribute) | default (30) | full (300)
    run(out) -> str                     # the REPORT section; also out/classify.md

Each rendered two-object scene (test split) is scored against its caption and the caption with the objects'
colours (or shapes) swapped: by denoising error summed over evenly spaced timesteps (one noise draw, the same for
both captions) and by cross-attention agreement. Chance is 50%; accuracy with 95% Wilson intervals; compute per
decision in UNet evaluations and seconds.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import lab
from lab.plotting import save_figure
from lab.sizes import pick, size
from lab.world import render
from lab.world.quality import wilson

from .binding import ATTRIBUTES, pairs
from .plot import error_curves, margin_curves
from .score import attention, errors, rank, timesteps

METHODS = ("denoising error", "attention agreement")


def measure(pipe, n: int, ts: list[int]):
    """({(attribute, method): [correct per pair]}, {attribute: (pairs, T) relative margins}, seconds per method,
    an example (pair, errors))."""
    right, margins, seconds, example = {}, {}, {m: 0.0 for m in METHODS}, None
    for attribute in ATTRIBUTES:
        rows = []
        for p in pairs(n, attribute):
            image = render(p.scene)
            t0 = time.perf_counter()
            e = errors(pipe, image, [p.true, p.swapped], ts, seed=p.scene.seed)  # (2, T)
            seconds["denoising error"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            a = attention(pipe, image, [p.true, p.swapped], ts, seed=p.scene.seed)  # (2, T)
            seconds["attention agreement"] += time.perf_counter() - t0
            right.setdefault((attribute, "denoising error"), []).append(rank(e)[0] == 0)
            right.setdefault((attribute, "attention agreement"), []).append(rank(a, higher_is_better=True)[0] == 0)
            rows.append(((e[1] - e[0]) / e[0]).numpy())
            example = example or (p, e)
        margins[attribute] = np.stack(rows)
    decisions = n * len(ATTRIBUTES)
    return right, margins, {m: s / decisions for m, s in seconds.items()}, example


def section(right, info) -> str:
    lines = ["## The diffusion model as a classifier (attribute binding)", "",
             f"{info['n']} rendered two-object scenes per attribute (test split), each against its caption with the "
             f"objects' colours (or shapes) swapped; chance 50%. Denoising error: mean squared error of the UNet's "
             f"noise prediction at {len(info['timesteps'])} timesteps ({info['timesteps'][0]}..{info['timesteps'][-1]}"
             "), one noise draw shared by both captions, averaged over t; the lower wins. Attention agreement: per "
             "cross-attention layer, the largest probability any latent position gives each of the caption's words, "
             "averaged; the higher wins.", "", "![margins](classify_margins.png)", "",
             "| attribute | method | right | 95% CI | above chance |", "|---|---|---|---|---|"]
    for (attribute, method), r in right.items():
        k, n = sum(r), len(r)
        lo, hi = wilson(k, n)
        lines.append(f"| {attribute} | {method} | {k}/{n} = {k / n:.0%} | {lo:.0%}-{hi:.0%} | "
                     f"{'yes' if lo > 0.5 else 'not shown'} |")
    T = len(info["timesteps"])
    lines += ["", f"Compute per decision (two captions): denoising error {2 * T} UNet evaluations in one batch, "
              f"{info['seconds']['denoising error'] * 1000:.0f} ms; attention agreement {2 * T} evaluations with "
              f"cross-attention traced, {info['seconds']['attention agreement'] * 1000:.0f} ms (this machine, "
              f"1 VAE encoding each). Size `{info['size']}`, {info['total']:.0f} s in all."]
    return "\n".join(lines) + "\n"


def run(out: Path, model: str = "shapes") -> str:
    """Run the study; write its figures and out/classify.md; return the REPORT section."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n, ts = pick(3, 30, 300), timesteps(pick(4, 10, 20))
    t0 = time.perf_counter()
    pipe = lab.load(model)
    right, margins, seconds, (pair, e) = measure(pipe, n, ts)
    from matplotlib.figure import Figure
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    margin_curves(margins, ts, ax=ax1)
    ax1.set_title("(swapped - true) / true error, mean over scenes", fontsize=8)
    error_curves(e, ts, ["true caption", f"{pair.attribute}s swapped"], ax=ax2, title=pair.true)
    save_figure(fig, out / "classify_margins.png")
    info = {"n": n, "timesteps": ts, "seconds": seconds, "size": size(), "total": time.perf_counter() - t0}
    text = section(right, info)
    (out / "classify.md").write_text(text)
    return text


if __name__ == "__main__":
    from analyses.run_all import run_one
    run_one(run)
