"""The DIFT study's figures: each returns a matplotlib Figure (no pyplot, no global state).

    figure_grid(trained, random, timesteps, blocks, hardest)   PCK@0.1 heat maps over (block, t)
    figure_bars({method: subsets()})                          per-subset PCK bars
    figure_examples(pairs, result)                            matches drawn on up to four pairs
    figure_similarity(pipe, pair, t, block, ensemble)         B under the cosine map of A's tip and tail
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .features import featurize
from .match import similarity
from .plots import plot_grid, plot_matches, plot_similarity


def _heat(result: dict, timesteps, blocks) -> np.ndarray:
    return np.array([[result[(t, b)]["all"]["per_point"] for t in timesteps] for b in blocks])  # (blocks, t)


def figure_grid(trained, random, timesteps, blocks, hardest=None):
    """PCK@0.1 heat maps over (block, t): the study's pairs for the built-in and the re-randomised UNet, and with
    hardest=(factor, grid()) the built-in UNet on pairs that differ in that one factor only."""
    panels = [(trained, "built-in UNet: PCK@0.1"), (random, "re-randomised UNet: PCK@0.1")]
    if hardest is not None:
        panels.append((hardest[1], f"built-in UNet, {hardest[0]} only"))
    fig = Figure(figsize=(2.2 + 0.75 * len(timesteps) * len(panels), 0.6 + 0.55 * len(blocks)), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (result, title) in zip(axes, panels):
        im = plot_grid(ax, _heat(result, timesteps, blocks), timesteps, blocks, title=title)
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    return fig


def figure_bars(rows: dict):
    """rows: {method: subsets()}; grouped bars of per-point PCK per subset."""
    names = [k for k in next(iter(rows.values())) if not k.startswith("mirrored tip")]
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(rows)
    for i, (method, subs) in enumerate(rows.items()):
        ax.bar(np.arange(len(names)) + i * width, [subs[n]["per_point"] for n in names], width, label=method)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, fontsize=8)
    ax.set_ylim(0, 1), ax.set_ylabel("PCK@0.1 (per point)"), ax.axhline(0.8, color="k", lw=0.6, ls="--")
    ax.legend(fontsize=7, ncols=len(rows), loc="upper center", bbox_to_anchor=(0.5, 1.18), frameon=False)
    return fig


def _examples(pairs) -> list[int]:
    """Up to 4 pairs to show: a mirrored arrow, a same-direction arrow, a same-colour and a different-colour pair."""
    tests = [lambda p: p.info["mirrored"], lambda p: p.category == "arrow" and not p.info["mirrored"],
             lambda p: p.info["same_colour"] and p.category != "arrow", lambda p: not p.info["same_colour"]
             and p.category != "arrow"]
    chosen = []
    for test in tests:
        i = next((i for i, p in enumerate(pairs) if test(p) and i not in chosen), None)
        if i is not None:
            chosen.append(i)
    return chosen


def figure_examples(pairs, result):
    idx = _examples(pairs)
    fig = Figure(figsize=(2.2 * len(idx), 4.6), layout="constrained")
    axes = fig.subplots(2, len(idx), squeeze=False)
    for col, i in enumerate(idx):
        p, r = pairs[i], result["pairs"][i]
        assert r["name"] == p.name, (r["name"], p.name)
        plot_matches(axes[0, col], axes[1, col], p.src, p.trg, p.src_kps, r["pred"], r["target"], r["correct"],
                     p.info["names"])
        axes[0, col].set_title(f"{p.name}{' (mirrored)' if p.info['mirrored'] else ''}", fontsize=8)
    axes[0, 0].set_ylabel("A: keypoints"), axes[1, 0].set_ylabel("B: matches (green = right)")
    return fig


def figure_similarity(pipe, pair, t: int, block: str, ensemble: int):
    """For a (mirrored arrow) pair: A with its tip and tail, B under the cosine map of each."""
    fa, fb = featurize(pipe, [pair.src, pair.trg], t=t, block=block, ensemble=ensemble)
    names = [n for n in ("tip", "tail") if n in pair.info["names"]] or pair.info["names"][:2]
    pts = np.array([pair.src_kps[pair.info["names"].index(n)] for n in names])
    sims = similarity(fa, pts, fb).cpu().numpy()  # (P, H, W)
    fig = Figure(figsize=(2.4 * (1 + len(names)), 2.7), layout="constrained")
    axes = fig.subplots(1, 1 + len(names))
    axes[0].imshow(pair.src), axes[0].set_xticks([]), axes[0].set_yticks([])
    axes[0].scatter(pts[:, 0], pts[:, 1], c="#ffd400", edgecolors="k", s=30)
    axes[0].set_title("A", fontsize=8)
    for ax, name, sim in zip(axes[1:], names, sims):
        y, x = np.unravel_index(sim.argmax(), sim.shape)
        im = plot_similarity(ax, pair.trg, sim, (x, y), vmin=float(sims.min()), vmax=float(sims.max()))
        ax.set_title(f"B: similarity to A's {name}", fontsize=8)
    fig.colorbar(im, ax=list(axes[1:]), shrink=0.8, label="cosine")
    return fig
