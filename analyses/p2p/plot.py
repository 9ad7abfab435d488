"""Figures of prompt-to-prompt edits; helpers take a Figure or an Axes and leave matplotlib's global state alone.

    >>> from analyses.p2p.plot import side_by_side, rates_plot
    >>> fig = side_by_side(out, captions=["red -> green"])             # doctest: +SKIP
    >>> rates_plot(counts, ax=ax)                                      # doctest: +SKIP

side_by_side(edited, captions, fig, marks)   one row per request: source, each control, plain (a Figure)
rates_plot(counts, ax, goal)                 rate of each check per control with 95% Wilson intervals
"""
from __future__ import annotations

import numpy as np

from lab.world.quality import wilson


def side_by_side(edited, captions=None, fig=None, marks=None, rows: int | None = None):
    """Source and edits side by side for the first `rows` requests of an Edited; marks[(row, kind)] is a short
    verdict written under that picture. Returns the Figure."""
    from matplotlib.figure import Figure

    kinds = list(edited.images)
    n = len(edited.images["source"]) if rows is None else min(rows, len(edited.images["source"]))
    fig = fig or Figure(figsize=(1.9 * len(kinds), 2.1 * n + 0.3), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n, len(kinds), squeeze=False))
    for r in range(n):
        for c, kind in enumerate(kinds):
            ax = axes[r, c]
            ax.imshow(edited.images[kind][r])
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(kind, fontsize=9)
            mark = (marks or {}).get((r, kind))
            if mark:
                ax.set_xlabel(mark, fontsize=7)
        if captions:
            axes[r, 0].set_ylabel(captions[r], fontsize=7)
    return fig


def rates_plot(counts: dict[str, dict[str, tuple[int, int]]], ax=None, goal: float | None = None,
               checks=None):
    """Bars: for each check (groups) and control (bars), k/n with its 95% Wilson interval. counts[control][check] =
    (k, n). Returns the Axes."""
    if ax is None:
        from matplotlib.figure import Figure
        ax = Figure(figsize=(8, 3.2), layout="constrained").subplots()
    controls = list(counts)
    checks = list(checks or next(iter(counts.values())))
    width = 0.8 / max(len(controls), 1)
    for i, control in enumerate(controls):
        xs, ys, lo, hi = [], [], [], []
        for j, check in enumerate(checks):
            k, n = counts[control].get(check, (0, 0))
            p = k / n if n else float("nan")
            a, b = wilson(k, n)
            xs.append(j + (i - (len(controls) - 1) / 2) * width)
            ys.append(p)
            lo.append(max(p - a, 0.0) if n else 0)  # rounding can put p a hair outside
            hi.append(max(b - p, 0.0) if n else 0)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=control)
    if goal is not None:
        ax.axhline(goal, color="k", lw=0.8, ls="--", label=f"goal {goal:.0%}")
    ax.set_xticks(range(len(checks)), checks, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of edits")
    ax.legend(fontsize=7, ncols=2)
    return ax
