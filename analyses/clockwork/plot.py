"""Figures of layer sensitivity and feature reuse; helpers take an Axes and leave matplotlib's global state alone.

    >>> from analyses.clockwork.plot import sensitivity_map, tradeoff
    >>> sensitivity_map(rms, blocks, ax=ax)                             # doctest: +SKIP
    >>> tradeoff({"mid_block every 2": (0.08, 3, 12)}, ax=ax)           # doctest: +SKIP

sensitivity_map(values, blocks, ax, label)   block x step heat map (rows in forward order, resolution in the label)
tradeoff(points, ax, net)                    share of images whose reading changed (95% Wilson) against time saved
"""
from __future__ import annotations

import numpy as np

from lab.world.quality import wilson


def sensitivity_map(values: np.ndarray, blocks: list[str], ax=None, label: str = "pixel RMS (0-255)",
                    title: str = "", limits: tuple[float, float] | None = None):
    """values (blocks, steps): how far the image moved when that block's output got noise at that step; limits:
    the colour scale's (low, high), default the values' range. Returns the Axes."""
    if ax is None:
        from matplotlib.figure import Figure
        ax = Figure(figsize=(6, 3.4), layout="constrained").subplots()
    low, high = limits or (None, None)
    im = ax.imshow(values, aspect="auto", cmap="magma", interpolation="nearest", vmin=low, vmax=high)
    ax.set_yticks(range(len(blocks)), blocks, fontsize=7)
    ax.set_xticks(range(values.shape[1]))
    ax.set_xlabel("step with noise (0 = noisiest)")
    ax.set_title(title, fontsize=9)
    ax.figure.colorbar(im, ax=ax, label=label)
    return ax


def tradeoff(points: dict[str, tuple[float, int, int]], ax=None, net: str = "UNet"):
    """points[label] = (share of time saved, images whose reading changed, images); net names the denoiser whose
    time it is ('UNet', 'transformer'). Returns the Axes."""
    if ax is None:
        from matplotlib.figure import Figure
        ax = Figure(figsize=(5, 3.4), layout="constrained").subplots()
    for label, (saved, k, n) in points.items():
        p, (lo, hi) = k / n, wilson(k, n)
        ax.errorbar([100 * saved], [p], yerr=[[max(p - lo, 0)], [max(hi - p, 0)]], marker="o", capsize=2,
                    label=label)
    ax.set_xlabel(f"{net} time saved (%)")
    ax.set_ylabel("parser reading changed vs plain")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=6)
    return ax
