"""Figures of perturbed-attention guidance; helpers take an Axes or a Figure and leave matplotlib's global state alone.

    >>> from analyses.pag.plot import rate_curves, examples
    >>> rate_curves({("mid", 0.0): (10, 12), ("mid", 3.0): (11, 12)}, ax=ax)          # doctest: +SKIP
    >>> examples(images, row_labels, column_labels, fig=fig)                            # doctest: +SKIP

rate_curves(counts, ax, title)    clean-object rate by PAG scale, one line per layer choice, 95% Wilson intervals
examples(images, rows, columns)   a grid of images: one row per caption, one column per condition (a Figure)
"""
from __future__ import annotations

import numpy as np

from lab.world.quality import wilson


def rate_curves(counts: dict[tuple[str, float], tuple[int, int]], ax=None, title: str = ""):
    """counts[(layers, scale)] = (clean, n); scale 0 (no PAG) is drawn as the start of every line. Returns the Axes."""
    if ax is None:
        from matplotlib.figure import Figure
        ax = Figure(figsize=(4.5, 3.2), layout="constrained").subplots()
    base = next((v for (lay, s), v in counts.items() if s == 0), None)
    choices = sorted({lay for lay, s in counts if s != 0})
    for i, lay in enumerate(choices):
        pts = sorted((s, kn) for (ly, s), kn in counts.items() if ly == lay and s != 0)
        if base is not None:
            pts = [(0.0, base)] + pts
        xs = np.array([s for s, _ in pts]) + (i - (len(choices) - 1) / 2) * 0.06  # small offsets: bars stay apart
        ps = np.array([k / n for _, (k, n) in pts])
        ci = np.array([wilson(k, n) for _, (k, n) in pts])  # (points, 2)
        err = np.stack([np.clip(ps - ci[:, 0], 0, None), np.clip(ci[:, 1] - ps, 0, None)])  # (2, points)
        ax.errorbar(xs, ps, yerr=err, marker="o", ms=4, capsize=2, label=f"{lay} self-attention")
    ax.set_xlabel("PAG scale")
    ax.set_ylabel("clean object of the captioned kind")
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return ax


def examples(images: dict[str, np.ndarray], row_labels: list[str], fig=None, rows: int = 4):
    """images[condition] is (n, H, W, 3) uint8; the first `rows` captions, one column per condition. Returns the
    Figure."""
    from matplotlib.figure import Figure

    kinds = list(images)
    n = min(rows, len(next(iter(images.values()))))
    fig = fig or Figure(figsize=(1.5 * len(kinds), 1.6 * n + 0.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n, len(kinds), squeeze=False))
    for r in range(n):
        for c, kind in enumerate(kinds):
            ax = axes[r, c]
            ax.imshow(images[kind][r])
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(kind, fontsize=7)
        axes[r, 0].set_ylabel(row_labels[r].replace(" on a ", "\non a "), fontsize=6)
    return fig
