"""The notebook's views as plain functions: each returns a matplotlib Figure, so a test can call it without a browser.

    >>> import lab
    >>> from analyses.svd.views import Explorer, trajectory_figure
    >>> ex = Explorer(lab.load("shapes"), steps=10)
    >>> fig = ex.figure("a small red circle on a black background", "a small blue circle on a black background",
    ...                 seed=0, t=5, k=2, mode="both")           # source | target | edited | spectra at step t
    >>> fig = trajectory_figure(ex.trajectory("a small red circle on a black background", 0))

Explorer(pipe, steps, guidance)   records each (prompt, seed) once and keeps it; .edit(...) -> 1 x 1 TransferGrid
Explorer.figure(source_prompt, target_prompt, seed, t, k, mode)   images side by side and the spectra at step t
trajectory_figure(traj, index)    PCA plane, variance explained, distance from the z_T-z_0 plane, effective rank
"""
from __future__ import annotations

import numpy as np

from lab.trajectory import Trajectory, record

from . import geometry, plots, spectra
from .transfer import TransferGrid, swap_top_k, transfer


def _figure(cols: int, w: float = 2.8, h: float = 2.8):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w * cols, h), layout="constrained")
    return fig, fig.subplots(1, cols, squeeze=False)[0]


class Explorer:
    """Transfers between two prompts on one pipeline, recording each (prompt, seed) trajectory only once."""

    def __init__(self, pipe, steps: int = 20, guidance: float = 7.5, **call_kwargs):
        self.pipe, self.steps, self.call = pipe, steps, dict(call_kwargs, guidance_scale=guidance)
        self._cache: dict[tuple[str, int], Trajectory] = {}

    def trajectory(self, prompt: str, seed: int) -> Trajectory:
        key = (prompt, int(seed))
        if key not in self._cache:
            self._cache[key] = record(self.pipe, prompt, seeds=int(seed), num_inference_steps=self.steps, **self.call)
        return self._cache[key]

    def edit(self, source_prompt: str, target_prompt: str, seed: int, t: int, k: int,
             mode: str = "both") -> TransferGrid:
        """The source run with its latent at step t given the target's top-k (swap_top_k), continued: a 1 x 1 grid."""
        source, target = self.trajectory(source_prompt, seed), self.trajectory(target_prompt, seed)
        return transfer(self.pipe, source, target, ks=[k], ts=[t], mode=mode)

    def figure(self, source_prompt: str, target_prompt: str, seed: int, t: int, k: int, mode: str = "both"):
        grid = self.edit(source_prompt, target_prompt, seed, t, k, mode)
        source, target = self.trajectory(source_prompt, seed), self.trajectory(target_prompt, seed)
        fig, ax = _figure(4)
        plots.images_row(ax[:3], [grid.source_image, grid.target_image, grid.images[0, 0]],
                         [f"source: {source_prompt}", f"target: {target_prompt}", f"edited: t={t}, k={k}, {mode}"],
                         fontsize=6)
        z_s, z_t = source.latents[t, 0], target.latents[t, 0]  # (C, h, w) each
        _spectra_at(ax[3], z_s, z_t, swap_top_k(z_s, z_t, k, mode), k)
        ax[3].set_title(f"singular values per channel at step {t}", fontsize=7)
        return fig


def _spectra_at(ax, source, target, edited, k: int):
    """Singular values of each channel (C, h, w) of three latents: source solid, target dashed, edited dots."""
    S = [spectra.channel_svd(z)[1].numpy() for z in (source, target, edited)]  # 3 x (C, r)
    x = np.arange(1, S[0].shape[1] + 1)
    for c in range(S[0].shape[0]):
        line, = ax.plot(x, S[0][c], "-", lw=1, label=f"channel {c}")
        ax.plot(x, S[1][c], "--", lw=1, color=line.get_color())
        ax.plot(x, S[2][c], ".", ms=4, color=line.get_color())
    if k:
        ax.axvline(k + 0.5, color="0.5", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("index (- source, -- target, . edited)", fontsize=7)
    ax.legend(fontsize=6)
    return ax


def trajectory_figure(traj: Trajectory, index: int = 0):
    """One generation's trajectory: on its own PC1-PC2, variance per PC, fraction off the z_T-z_0 plane, effective
    rank per channel."""
    latents = traj.latents[:, index:index + 1]  # (steps+1, 1, C, h, w)
    pca, plane = geometry.trajectory_pca(latents), geometry.endpoint_plane(latents)
    fig, ax = _figure(4)
    plots.pca_plane(ax[0], pca.coords[:, :, :2])
    ax[0].set_title(f"PC1 {pca.explained[0, 0]:.1%}, PC2 {pca.explained[0, 1]:.1%}", fontsize=8)
    n = min(8, pca.explained.shape[1])
    ax[1].bar(np.arange(1, n + 1), pca.explained[0, :n].numpy())
    ax[1].set_xlabel("principal component")
    ax[1].set_ylabel("variance explained")
    ax[2].plot(plane.outside[:, 0].numpy(), "o-", ms=3)
    ax[2].set_xlabel("step")
    ax[2].set_ylabel("|z_t off span(z_T, z_0)| / |z_t|")
    plots.per_channel(ax[3], spectra.effective_rank(spectra.channel_svd(latents[:, 0])[1]), "effective rank")
    return fig
