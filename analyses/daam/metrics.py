"""Scores for maps against masks, with image-clustered bootstrap intervals, and the baselines DAAM is compared with.

    iou(binarize(m, 0.4), mask)                      # intersection over union of two (H, W) bool masks
    mean_ci(values, groups)                          # mean and 95% bootstrap CI, resampling whole groups (images)
    gaussian_prior((128, 128)), whole_image((128, 128))   # baseline maps in [0, 1]
    mass_inside(heat, mask)                          # share of a map's heat that lies inside a mask
"""
from __future__ import annotations

import math

import numpy as np
import torch


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def iou(a, b) -> float:
    """|a & b| / |a | b| of two boolean masks (0 when both are empty)."""
    a, b = _np(a).astype(bool), _np(b).astype(bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def mass_inside(heat, mask) -> float:
    """Share of the heat (a map >= 0) inside `mask`; NaN for an all-zero map."""
    h, m = _np(heat).astype(np.float64), _np(mask).astype(bool)
    total = h.sum()
    return float(h[m].sum() / total) if total > 0 else float("nan")


def gaussian_prior(size: tuple[int, int], sigma: float = 0.25) -> torch.Tensor:
    """A centred isotropic Gaussian (sigma a fraction of the side), min-max normalised: objects are often central."""
    h, w = size
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h - 0.5
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w - 0.5
    g = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))  # (h, w)
    return (g - g.min()) / (g.max() - g.min())


def whole_image(size: tuple[int, int]) -> torch.Tensor:
    """The map that says 'everywhere': all ones (its mask at any tau < 1 is the whole image)."""
    return torch.ones(size)


def bootstrap(values, groups, n: int = 2000, seed: int = 0) -> np.ndarray:
    """`n` bootstrap means of `values`, resampling whole groups (e.g. images) with replacement."""
    values, groups = np.asarray(values, np.float64), np.asarray(groups)
    keep = ~np.isnan(values)
    values, groups = values[keep], groups[keep]
    if len(values) == 0:
        return np.full(n, np.nan)
    ids, inverse = np.unique(groups, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(ids))  # (groups,)
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    pick = np.random.default_rng(seed).integers(0, len(ids), size=(n, len(ids)))  # (n, groups)
    return sums[pick].sum(1) / counts[pick].sum(1)


def mean_ci(values, groups, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its 95% bootstrap interval, resampling groups; NaNs for no values."""
    values = np.asarray(values, np.float64)
    if np.isnan(values).all() if len(values) else True:
        return float("nan"), float("nan"), float("nan")
    boots = bootstrap(values, groups, n, seed)
    return float(np.nanmean(values)), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def fmt(m: float, lo: float, hi: float, digits: int = 3) -> str:
    """'0.512 [0.480, 0.545]' or 'n/a'."""
    if math.isnan(m):
        return "n/a"
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
