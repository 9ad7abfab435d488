"""The latent-SVD study's figures: each returns a matplotlib Figure built from plots.py's Axes helpers.

    spectra_figure(stats, k); geometry_figure(stats); transfer_figure(runs, ks, ts, mode)
    examples_figure(runs, mode); perturb_figure(perturb_run)
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from . import plots


def _figure(rows: int, cols: int, w: float = 3.3, h: float = 2.8):
    fig = Figure(figsize=(w * cols, h * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def spectra_figure(stats: dict, k: int = 4):
    fig, ax = _figure(1, 4)
    plots.spectrum_over_time(ax[0, 0], stats["S"][:, 0, 0], every=max(1, stats["S"].shape[0] // 6))
    ax[0, 0].set_title("channel 0 of one generation", fontsize=8)
    plots.per_channel(ax[0, 1], stats["erank"].mean(1), "effective rank (mean over generations)")
    plots.per_channel(ax[0, 2], stats["rotation"][1].mean(1), "largest angle, top-1 subspace\nstep i vs i+1 (rad)")
    plots.per_channel(ax[0, 3], stats["rotation"][k].mean(1), f"largest angle, top-{k} subspace\nstep i vs i+1 (rad)")
    return fig


def geometry_figure(stats: dict, labels=None):
    fig, ax = _figure(1, 4)
    n = min(6, stats["pca"].coords.shape[1])
    plots.pca_plane(ax[0, 0], stats["pca"].coords[:, :n, :2], labels=None if labels is None else labels[:n])
    ax[0, 0].set_title("trajectories on their own PC1-PC2", fontsize=8)
    explained = stats["pca"].explained.numpy()
    cum = np.cumsum(explained, axis=1)[:, :6]
    ax[0, 1].boxplot(cum, positions=range(1, cum.shape[1] + 1))
    ax[0, 1].set_xlabel("number of PCs")
    ax[0, 1].set_ylabel("variance explained (cumulative)")
    outside = stats["plane"].outside.numpy()
    ax[0, 2].plot(outside, color="0.6", lw=0.8)
    ax[0, 2].plot(outside.mean(1), color="k", lw=2)
    ax[0, 2].set_xlabel("step")
    ax[0, 2].set_ylabel("|z_t outside span(z_T, z_0)| / |z_t|")
    cos = stats["cos"].numpy()
    ax[0, 3].plot(np.arange(1, cos.shape[0] + 1), cos, color="0.6", lw=0.8)
    ax[0, 3].plot(np.arange(1, cos.shape[0] + 1), cos.mean(1), color="k", lw=2)
    ax[0, 3].set_xlabel("step i")
    ax[0, 3].set_ylabel("cos(d_{i-1}, d_i)")
    return fig


def transfer_figure(runs, ks, ts, mode: str):
    fig, ax = _figure(2, 3, w=3.0, h=2.6)
    for row, attribute in enumerate(("colour", "size")):
        v = np.stack([r.verdicts[mode] for r in runs if r.attribute == attribute]).mean(0)  # (ts, ks, 3)
        for col, name in enumerate(("changed as intended", "everything else kept", "both")):
            plots.rate_grid(ax[row, col], v[..., col], ks, ts, f"{attribute}: {name} (mode {mode})")
    return fig


def examples_figure(runs, mode: str):
    chosen = [next(r for r in runs if r.attribute == a) for a in ("colour", "size")]
    grid = chosen[0].grids[mode]
    cols = 2 + len(grid.ks)
    fig, ax = _figure(2 * len(grid.ts), cols, w=1.6, h=1.7)
    for block, run in enumerate(chosen):
        g = run.grids[mode]
        for i, t in enumerate(g.ts):
            row = block * len(g.ts) + i
            titles = ["source", "target"] + [f"t={t} k={k}" for k in g.ks]
            plots.images_row(ax[row], [g.source_image, g.target_image] + list(g.images[i]), titles, fontsize=6)
        ax[block * len(g.ts), 0].set_ylabel(run.attribute)
    return fig


def perturb_figure(p):
    fig, ax = _figure(1, 2)
    for m, size_ in enumerate(p.sizes):
        for i, name in enumerate(p.directions):
            style = dict(marker="o", ls="-" if name == "top" else "--", label=f"{name}, norm {size_:.1f}")
            line, = ax[0, 0].plot(p.steps_at, p.change[:, m, i].mean(0), **style)
            style["color"] = line.get_color()
            ax[0, 1].plot(p.steps_at, p.flips[:, m, i, :, -1].mean(0), **style)
    ax[0, 0].set_ylabel("mean |pixel change| (0-255)")
    ax[0, 1].set_ylabel("parsed content changed (fraction)")
    ax[0, 1].set_ylim(-0.05, 1.05)
    for a in ax[0]:
        a.set_xlabel("step s of the perturbation")
        a.legend(fontsize=7)
    return fig
