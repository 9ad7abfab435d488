"""Plot helpers for DIFT: each takes an ``ax`` (or two), draws, and returns it. No global matplotlib state.

    plot_matches(ax_a, ax_b, image_a, image_b, kps_a, pred, target, correct)
    plot_similarity(ax, image_b, sim, best)              # a cosine map over image B, its argmax marked
    plot_grid(ax, values, timesteps, blocks)              # PCK heat map (blocks x timesteps)
"""
from __future__ import annotations

import numpy as np

RIGHT, WRONG, QUERY = "#1a9850", "#d73027", "#ffd400"


def _bare(ax):
    ax.set_xticks([]), ax.set_yticks([])
    return ax


def plot_matches(ax_a, ax_b, image_a, image_b, kps_a, pred, target=None, correct=None, names=None):
    """Keypoints on image A; on image B the predictions (green right, red wrong) with a line to the target."""
    ax_a.imshow(image_a), ax_b.imshow(image_b)
    kps_a, pred = np.asarray(kps_a, float).reshape(-1, 2), np.asarray(pred, float).reshape(-1, 2)
    colours = [RIGHT if c else WRONG for c in correct] if correct is not None else [QUERY] * len(pred)
    ax_a.scatter(kps_a[:, 0], kps_a[:, 1], s=28, c=QUERY, edgecolors="k", linewidths=0.6, zorder=3)
    ax_b.scatter(pred[:, 0], pred[:, 1], s=28, c=colours, edgecolors="k", linewidths=0.6, zorder=3)
    if target is not None:
        target = np.asarray(target, float).reshape(-1, 2)
        for (px, py), (tx, ty), col in zip(pred, target, colours):
            if col == WRONG:
                ax_b.plot([px, tx], [py, ty], color=WRONG, lw=0.8)
        ax_b.scatter(target[:, 0], target[:, 1], s=40, facecolors="none", edgecolors="w", linewidths=0.8, zorder=2)
    for i, (x, y) in enumerate(kps_a):
        if names is not None:
            ax_a.annotate(names[i], (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6, color="k",
                          bbox=dict(boxstyle="round,pad=0.1", fc="w", alpha=0.6, lw=0))
    return _bare(ax_a), _bare(ax_b)


def plot_similarity(ax, image_b, sim, best=None, alpha: float = 0.6, vmin=None, vmax=None):
    """Image B under its cosine-similarity map `sim` (H, W), coloured over its own range unless vmin/vmax are
    given; `best` (x, y) is marked. Returns the AxesImage (for a colorbar)."""
    ax.imshow(image_b)
    im = ax.imshow(np.asarray(sim), cmap="magma", alpha=alpha, vmin=vmin, vmax=vmax)
    if best is not None:
        ax.scatter([best[0]], [best[1]], s=60, marker="x", c="c", linewidths=1.5, zorder=3)
    _bare(ax)
    return im


def plot_grid(ax, values, timesteps, blocks, vmin: float = 0.0, vmax: float = 1.0, title: str | None = None):
    """Heat map of values (len(blocks), len(timesteps)) with each cell written in it."""
    values = np.asarray(values, float)
    im = ax.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(timesteps)), [str(t) for t in timesteps])
    ax.set_yticks(range(len(blocks)), list(blocks))
    ax.set_xlabel("timestep t")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
    if title:
        ax.set_title(title, fontsize=9)
    return im
