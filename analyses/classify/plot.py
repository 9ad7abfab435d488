"""Figures of caption ranking; helpers draw on a given Axes and leave matplotlib's global state alone.

    >>> from analyses.classify.plot import error_curves
    >>> error_curves(e, ts, ["true", "swapped"], ax=ax)                # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np


def error_curves(errors, timesteps, labels, ax=None, title: str = ""):
    """Each caption's denoising error (rows of a (captions, timesteps) tensor) against t. Returns the Axes."""
    if ax is None:
        from matplotlib.figure import Figure
        ax = Figure(figsize=(4.5, 3), layout="constrained").subplots()
    e = np.asarray(errors, dtype=np.float64)
    for row, label in zip(e, labels):
        ax.plot(timesteps, row, marker="o", ms=3, label=label)
    ax.set_xlabel("timestep t")
    ax.set_ylabel("denoising error (MSE)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    return ax


def margin_curves(margins: dict[str, np.ndarray], timesteps, ax=None):
    """Per attribute, the mean over scenes of (swapped error - true error) / true error at each t, with a 95%
    interval (normal approximation): above 0, the true caption denoises better there. Returns the Axes."""
    if ax is None:
        from matplotlib.figure import Figure
        ax = Figure(figsize=(4.5, 3), layout="constrained").subplots()
    for label, m in margins.items():
        m = np.asarray(m, dtype=np.float64)  # (scenes, timesteps)
        mean, half = m.mean(0), 1.96 * m.std(0, ddof=1) / np.sqrt(max(len(m), 1)) if len(m) > 1 else 0 * m.mean(0)
        ax.plot(timesteps, mean, marker="o", ms=3, label=label)
        ax.fill_between(timesteps, mean - half, mean + half, alpha=0.25)
    ax.axhline(0, color="k", lw=0.7)
    ax.set_xlabel("timestep t")
    ax.set_ylabel("relative error margin")
    ax.legend(fontsize=7)
    return ax
