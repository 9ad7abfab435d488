"""Plot helpers for the latent-SVD analyses. Each takes an Axes, draws on it, returns it; no global matplotlib state.

    >>> from matplotlib.figure import Figure
    >>> from analyses.svd import plots, spectra
    >>> ax = Figure().subplots()
    >>> plots.spectrum_over_time(ax, spectra.channel_svd(traj.latents[:, 0, 0])[1])   # doctest: +SKIP

spectrum_over_time(ax, S)          singular values (steps+1, r) of one matrix, one line per step, noise -> image
per_channel(ax, values, ylabel)    (steps, C) one line per channel against the step
pca_plane(ax, coords)              trajectories (steps+1, batch, 2) on their first two principal components
rate_grid(ax, rate, ks, ts, title) (len(ts), len(ks)) rates in [0, 1] as an annotated heat map
images_row(axes, images, titles)   one image per axis, no ticks
"""
from __future__ import annotations

import numpy as np


def spectrum_over_time(ax, S, every: int = 1, cmap: str = "viridis"):
    """S: (steps+1, r) singular values of one (h, w) matrix at each step; colour runs from noise to image."""
    import matplotlib

    S = np.asarray(S)
    palette = matplotlib.colormaps[cmap]
    n = S.shape[0]
    for i in range(0, n, every):
        ax.plot(np.arange(1, S.shape[1] + 1), S[i], color=palette(i / max(n - 1, 1)), lw=1,
                label=f"step {i}" if i in (0, n - 1) else None)
    if (n - 1) % every:
        ax.plot(np.arange(1, S.shape[1] + 1), S[-1], color=palette(1.0), lw=1, label=f"step {n - 1}")
    ax.set_yscale("log")
    ax.set_xlabel("singular value index")
    ax.set_ylabel("singular value")
    ax.legend(fontsize=7)
    return ax


def per_channel(ax, values, ylabel: str, x=None, xlabel: str = "step"):
    """values: (steps, C); one line per channel."""
    values = np.asarray(values)
    x = np.arange(values.shape[0]) if x is None else np.asarray(x)
    for c in range(values.shape[1]):
        ax.plot(x, values[:, c], lw=1.2, label=f"channel {c}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return ax


def pca_plane(ax, coords, labels=None):
    """coords: (steps+1, batch, 2) on PC1, PC2 of each generation's own PCA; o = z_T, x = z_0."""
    coords = np.asarray(coords)
    for b in range(coords.shape[1]):
        line, = ax.plot(coords[:, b, 0], coords[:, b, 1], "-", lw=1, label=None if labels is None else labels[b])
        ax.plot(coords[0, b, 0], coords[0, b, 1], "o", color=line.get_color(), ms=4)
        ax.plot(coords[-1, b, 0], coords[-1, b, 1], "x", color=line.get_color(), ms=5)
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.set_aspect("equal", adjustable="datalim")
    if labels is not None:
        ax.legend(fontsize=6)
    return ax


def rate_grid(ax, rate, ks, ts, title: str = ""):
    """rate: (len(ts), len(ks)) in [0, 1]; rows are steps t, columns k."""
    rate = np.asarray(rate, dtype=float)
    ax.imshow(rate, vmin=0, vmax=1, cmap="magma", aspect="auto")
    for i in range(rate.shape[0]):
        for j in range(rate.shape[1]):
            if np.isfinite(rate[i, j]):
                ax.text(j, i, f"{rate[i, j]:.0%}", ha="center", va="center", fontsize=7,
                        color="black" if rate[i, j] > 0.5 else "white")
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    ax.set_yticks(range(len(ts)), [str(t) for t in ts])
    ax.set_xlabel("k (top singular values swapped)")
    ax.set_ylabel("step t of the swap")
    ax.set_title(title, fontsize=8)
    return ax


def images_row(axes, images, titles=None, fontsize: int = 7):
    """One (H, W, 3) image per axis."""
    for i, (ax, image) in enumerate(zip(axes, images)):
        ax.imshow(image)
        ax.set_xticks([]), ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[i], fontsize=fontsize)
    return axes
