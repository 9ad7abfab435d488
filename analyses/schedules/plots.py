"""Figures of the noise-schedule analyses. The Axes helpers draw on the ax they are given (or a new pyplot one) and
return it; the study's figures return a matplotlib Figure.

    plot_snr(schedules, ax); plot_spacings(schedule, n, ax, spacings=..., extra=...)     Axes helpers
    schedules_figure(schedules); trajectory_figure(runs); brightness_figure(results); examples_figure(results)
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from .maths import SPACINGS, first_step_snr, sampled_timesteps, schedule_of

BAND_NAMES = ("low", "mid", "high")


def _axes(ax: Any) -> Any:
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4))
    return ax


def plot_snr(schedules: Mapping[str, Any], ax: Any = None) -> Any:
    """log-SNR against t for each schedule, with its terminal SNR in the legend; returns the ax.

        >>> ax = plot_snr({"SD": published_schedules()["sd-1.5"]})
    """
    ax = _axes(ax)
    for label, schedule in schedules.items():
        s = schedule_of(schedule)
        ax.plot(torch.arange(s.num_train_timesteps), s.log_snr, label=f"{label} (terminal SNR {s.terminal_snr:.3g})")
    ax.set(xlabel="timestep t", ylabel="log SNR(t)", title="Noise schedules")
    ax.legend()
    return ax


def plot_spacings(schedule: Any, n: int, ax: Any = None, *, spacings: Sequence[str] = SPACINGS,
                  extra: Mapping[str, Sequence[int]] | None = None) -> Any:
    """The n timesteps each spacing picks (and any `extra` named timestep lists), marked on the log-SNR curve.

        >>> ax = plot_spacings(published_schedules()["sd-1.5"], 10, extra={"beta": beta_timesteps(10)})
    """
    ax = _axes(ax)
    s = schedule_of(schedule)
    ax.plot(torch.arange(s.num_train_timesteps), s.log_snr, color="0.6", lw=1, label=s.name)
    picks = {sp: sampled_timesteps(s, n, sp) for sp in spacings}
    picks.update({k: torch.as_tensor(v, dtype=torch.long) for k, v in (extra or {}).items()})
    markers = "ovs^Dpx*"
    for i, (label, ts) in enumerate(picks.items()):
        ax.scatter(ts, s.log_snr[ts], marker=markers[i % len(markers)], s=70 - 12 * i, facecolors="none",
                   edgecolors=f"C{i}", label=f"{label} (first t={int(ts[0])})")
    ax.set(xlabel="timestep t", ylabel="log SNR(t)", title=f"Timesteps picked for {n} steps")
    ax.legend()
    return ax


def schedules_figure(schedules: dict):
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    for name, s in schedules.items():
        left.plot(torch.arange(s.num_train_timesteps), s.log_snr.clamp(min=-25), label=name)
    left.set(xlabel="timestep t", ylabel="log SNR(t) (clamped at -25)", title="log-SNR of each schedule")
    left.legend(fontsize=7)
    sd = schedules["shapes (SD schedule)"]
    ns = np.arange(2, 101)
    for sp in SPACINGS:
        right.plot(ns, [first_step_snr(sd, int(n), sp) for n in ns], label=sp)
    right.axhline(sd.terminal_snr, color="0.5", ls=":", label=f"terminal SNR {sd.terminal_snr:.2g}")
    right.set(xlabel="sampling steps", ylabel="SNR at the first sampled step", yscale="log",
              title="SD schedule: where sampling starts")
    right.legend(fontsize=7)
    return fig


def trajectory_figure(runs):
    """Left: per band, mean over runs of the relative error of x0-hat against the final image; right: the x0-hat
    images of the first run at a few steps, above its decoded x_t."""
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.6])
    ax = left.subplots()
    err = torch.stack([r.band_error for r in runs]).mean(0)  # (steps, bands)
    steps = np.arange(1, err.shape[0] + 1)
    for b in range(err.shape[1]):
        ax.plot(steps, err[:, b], marker="o", ms=3, label=BAND_NAMES[b] if err.shape[1] == 3 else f"band {b}")
    ax.set(xlabel="step", ylabel="energy(x0-hat - final) / energy(final)", yscale="log",
           title=f"x0-hat against the final image, per frequency band\n(mean of {len(runs)} generations)")
    ax.legend()
    run = runs[0]
    picks = sorted(set(np.linspace(0, run.steps - 1, 6).round().astype(int).tolist()))
    axes = right.subplots(2, len(picks), squeeze=False)
    for j, i in enumerate(picks):
        axes[0, j].imshow(run.xt_images[i])
        axes[0, j].set_title(f"step {i + 1}, t={int(run.timesteps[i])}", fontsize=8)
        axes[1, j].imshow(run.x0_images[i])
    for a in axes.flat:
        a.set_xticks([]), a.set_yticks([])
    axes[0, 0].set_ylabel("x_t decoded", fontsize=8)
    axes[1, 0].set_ylabel("x0-hat decoded", fontsize=8)
    right.suptitle(run.prompt, fontsize=9)
    return fig


def brightness_figure(results: dict):
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    arms = list(dict.fromkeys(arm for arm, _ in results))
    bins = np.linspace(0, 1, 41)
    for ax, background in zip(axes, ("black", "white")):
        for i, arm in enumerate(arms):
            values = results[arm, background][0]
            style = dict(color="k", lw=2, ls="--") if arm == "world (truth)" else dict(color=f"C{i}", lw=1.5)
            ax.hist(values, bins=bins, histtype="step", label=f"{arm}: mean {values.mean():.2f}", **style)
        ax.set(xlabel="mean brightness of the image (0 black, 1 white)", title=f"prompts asking for a {background} "
               f"background ({len(values)} each)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("images")
    return fig


def examples_figure(results: dict):
    arms = [arm for arm in dict.fromkeys(arm for arm, _ in results) if arm != "world (truth)"]
    n = min(len(results[arms[0], "black"][2]), 6)
    fig = Figure(figsize=(1.6 * 2 * n, 1.7 * len(arms) + 0.4), layout="constrained")
    axes = fig.subplots(len(arms), 2 * n, squeeze=False)
    for r, arm in enumerate(arms):
        for c, (background, j) in enumerate([(b, j) for b in ("black", "white") for j in range(n)]):
            axes[r, c].imshow(results[arm, background][2][j])
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(arm.split(" ")[0], fontsize=10)
    fig.suptitle("left: prompts asking for black backgrounds; right: for white.   " + ";   ".join(arms), fontsize=9)
    return fig
