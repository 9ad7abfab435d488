"""The study's figures, each a new matplotlib Figure built from score rows (no pyplot, no rcParams).

    examples_figure(run, scenes, pipe), miou_figure(rows), slices_figure(rows, cache), words_figure(rows),
    faithfulness_figure(rows)
"""
from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from lab.world.quality import wilson

from .evaluate import TAUS
from .faithfulness import CONDITIONS
from .maps import global_maps, word_maps
from .plot import _short, word_grid
from .report import BASELINES, keys, select_rows, summary


def _bars(ax, labels, stats, colour="C0", offset=0.0, width=0.8, label=None):
    """Bars with 95% CI whiskers; stats are (mean, low, high, n)."""
    xs = np.arange(len(labels)) + offset
    means = np.array([s[0] for s in stats], dtype=float)
    err = np.array([[s[0] - s[1], s[2] - s[0]] for s in stats], dtype=float).T if stats else np.zeros((2, 0))
    ax.bar(xs, np.nan_to_num(means), width, color=colour, label=label,
           yerr=np.nan_to_num(err), capsize=2, error_kw={"linewidth": 0.8})
    return xs


def _empty(ax, text="no scored objects") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.4")


def examples_figure(run, scenes, pipe, k: int = 4, ncols: int = 10) -> Figure:
    """The first `k` generations with every word's map (published method, tau 0.4 outlined)."""
    k = min(k, len(run.images))
    maps = [word_maps(global_maps(run, batch=b), pipe) for b in range(k)]
    rows = [-(-(len(m) + 1) // ncols) for m in maps]
    fig = Figure(figsize=(1.3 * ncols, sum(1.45 * r + 0.3 for r in rows)), layout="constrained")
    subs = fig.subfigures(k, 1, squeeze=False, height_ratios=[1.45 * r + 0.3 for r in rows]).ravel()
    for b in range(k):
        word_grid(run.images[b], maps[b], fig=subs[b], ncols=ncols)
        subs[b].suptitle(scenes[b].caption, fontsize=9)
    return fig


def miou_figure(rows) -> Figure:
    """Noun mIoU of DAAM and the baselines at each tau."""
    fig = Figure(figsize=(6.5, 3.6), layout="constrained")
    ax = fig.add_subplot()
    methods = ("daam", "daam, relative") + BASELINES
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        stats = [summary(rows, "noun_iou", m, tau) for tau in TAUS]
        _bars(ax, [str(t) for t in TAUS], stats, colour=f"C{i}", offset=(i - (len(methods) - 1) / 2) * width,
              width=width, label=m)
    ax.set_xticks(range(len(TAUS)), [f"tau = {t}" for t in TAUS])
    ax.set_ylabel("noun mIoU (95% CI)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, frameon=False)
    n = summary(rows, "noun_iou", "daam", TAUS[1])[3]
    ax.set_title(f"nouns vs the parser's masks ({n} objects)", fontsize=9)
    if n == 0:
        _empty(ax)
    return fig


def slices_figure(rows, cache) -> Figure:
    """mIoU (tau 0.4) of the noun when the map uses one layer, one resolution, one step range or one head."""
    fig = Figure(figsize=(12, 3.4), layout="constrained")
    axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [3, 1.2, 2, 1]})
    reference = summary(rows, "noun_iou", "daam", 0.4)[0]
    timesteps = cache.meta.get("timesteps") or []
    for ax, (metric, title) in zip(axes, (("layer_iou", "layer"), ("resolution_iou", "resolution"),
                                          ("steps_iou", "steps (0 = noisiest)"), ("head_iou", "head"))):
        ks = keys(rows, metric)
        stats = [summary(rows, metric, k) for k in ks]
        xs = np.arange(len(ks))
        means = [s[0] for s in stats]
        ax.errorbar(xs, means, yerr=np.nan_to_num(np.array([[s[0] - s[1], s[2] - s[0]] for s in stats]).T)
                    if stats else None, marker="o", capsize=2, linewidth=1)
        labels = [_short(k) if metric == "layer_iou" else k for k in ks]
        if metric == "steps_iou" and timesteps:
            labels = [f"{k}\nt={int(timesteps[int(k.split('-')[0])])}" for k in ks]
        ax.set_xticks(xs, labels, fontsize=7, rotation=45 if metric == "layer_iou" else 0)
        if not math.isnan(reference):
            ax.axhline(reference, color="0.5", linestyle="--", linewidth=0.8, label="published method")
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=9)
        if not ks:
            _empty(ax)
    axes[0].set_ylabel("noun mIoU at tau 0.4 (95% CI)")
    axes[0].legend(fontsize=7, frameon=False)
    return fig


def words_figure(rows) -> Figure:
    """Left: adjectives and nouns, IoU with their own vs another object; right: heat inside objects per word kind."""
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    a, b = fig.subplots(1, 2)
    ks = keys(rows, "bind_iou_own")
    if ks:
        _bars(a, ks, [summary(rows, "bind_iou_own", k) for k in ks], "C0", -0.2, 0.4, "own object")
        _bars(a, ks, [summary(rows, "bind_iou_other", k) for k in ks], "C3", 0.2, 0.4, "other object")
        for i, k in enumerate(ks):
            c = select_rows(rows, "bind_correct", k)
            acc = sum(r["value"] for r in c) / max(len(c), 1)
            a.text(i, 0.95, f"binding {acc:.2f}", ha="center", fontsize=7)
        a.set_xticks(range(len(ks)), ks)
        a.legend(fontsize=8, frameon=False, loc="upper right", bbox_to_anchor=(1, 0.9))
    else:
        _empty(a, "no object qualified")
    a.set_ylim(0, 1)
    a.set_ylabel("mIoU at tau 0.4")
    a.set_title("words vs their own and other objects", fontsize=9)
    ks = keys(rows, "mass_in_objects")
    if ks:
        _bars(b, ks, [summary(rows, "mass_in_objects", k) for k in ks], "C2")
        b.set_xticks(range(len(ks)), ks, rotation=30, fontsize=8)
        area = summary(rows, "area_objects", "area")[0]
        b.axhline(area, color="0.3", linestyle="--", linewidth=0.8, label=f"objects' area share ({area:.2f})")
        b.legend(fontsize=8, frameon=False)
    else:
        _empty(b, "no image with a parsed object")
    b.set_ylim(0, 1)
    b.set_ylabel("share of heat inside objects")
    b.set_title("where words look", fontsize=9)
    return fig


def faithfulness_figure(rows) -> Figure:
    """How often the object is lost, and how much it changes, when its noun is silenced in each region."""
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    a, b = fig.subplots(1, 2)
    stats = []
    for c in CONDITIONS:
        sel = select_rows(rows, "faith_lost", c)
        k = sum(r["value"] for r in sel)
        lo, hi = wilson(int(k), len(sel))
        stats.append((k / len(sel) if sel else float("nan"), lo, hi, len(sel)))
    _bars(a, CONDITIONS, stats, "C1")
    a.set_xticks(range(len(CONDITIONS)), CONDITIONS)
    a.set_ylim(0, 1)
    a.set_ylabel("object lost (95% CI)")
    a.set_title("noun silenced: object lost", fontsize=9)
    _bars(b, CONDITIONS, [summary(rows, "faith_change", c) for c in CONDITIONS], "C4")
    for i, c in enumerate(CONDITIONS):
        area = summary(rows, "faith_area", c)[0]
        if not math.isnan(area):
            b.text(i, 0.02, f"area {area:.2f}", ha="center", fontsize=7, color="w")
    b.set_xticks(range(len(CONDITIONS)), CONDITIONS)
    b.set_ylabel("mean |pixel change| in the object")
    b.set_title("noun silenced: change inside the object", fontsize=9)
    if not stats or stats[0][3] == 0:
        _empty(a)
        _empty(b)
    return fig
