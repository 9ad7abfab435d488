"""Attribute transfer between two latents by swapping their top-k singular values and/or vectors, per channel.

    >>> import lab
    >>> from lab.trajectory import record
    >>> from analyses.svd.transfer import transfer
    >>> pipe = lab.load("shapes")
    >>> src = record(pipe, "a small red circle on a black background", seeds=0, num_inference_steps=10)
    >>> tgt = record(pipe, "a small blue circle on a black background", seeds=0, num_inference_steps=10)
    >>> grid = transfer(pipe, src, tgt, ks=[1, 4], ts=[2, 5], mode="both")
    >>> grid.images.shape                                  # (len(ts), len(ks), H, W, 3) uint8
    (2, 2, 128, 128, 3)

swap_top_k(source, target, k, mode)   source's (h, w) matrices with their top-k part taken from target's
transfer(pipe, source, target, ks, ts, mode)   edit the source run at step t, continue denoising; grid of images
MODES = ("values", "vectors", "both")

Our own, clearly named version of the latent-SVD editing idea of Wang et al. 2025 ("Exploring the latent space of
diffusion models directly through singular value decomposition"), whose exact recipe is not public. Each channel c
of the latent at step t is an h x w matrix with SVD z = sum_i s_i u_i v_i^T (i in order of decreasing s_i). With
source (s, u, v) and target (s', u', v'), the edited matrix is

    values:   sum_{i<k} s'_i u_i  v_i^T  + sum_{i>=k} s_i u_i v_i^T     (target's top-k strengths, source's patterns)
    vectors:  sum_{i<k} s_i  u'_i v'_i^T + sum_{i>=k} s_i u_i v_i^T     (target's top-k patterns, source's strengths)
    both:     sum_{i<k} s'_i u'_i v'_i^T + sum_{i>=k} s_i u_i v_i^T     (target's top-k rank-1 terms)

k = 0 leaves the source unchanged; k = min(h, w) with "both" gives the target's matrix exactly. u_i and v_i are
swapped together, so the arbitrary signs of singular vectors cancel. The edited latent replaces the source run's
latent at step t and the source run continues with the *source* prompt, so whatever changes came from the latent.
With the same seed both runs start from the same noise: at t = 0 every edit is the identity.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from lab.trajectory import Trajectory, check_step, run_edited

from .spectra import channel_svd

MODES = ("values", "vectors", "both")


def _check_k(k, r: int) -> None:
    if not isinstance(k, (int, np.integer)) or not 0 <= k <= r:
        raise ValueError(f"k={k!r} is outside 0..{r} (number of singular values swapped; {r} = full rank)")


def swap_top_k(source: torch.Tensor, target: torch.Tensor, k: int, mode: str = "both") -> torch.Tensor:
    """Every (h, w) matrix of ``source`` (..., h, w) with its top-k singular part taken from ``target``, same shape
    and dtype as ``source``."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; use one of {', '.join(MODES)}")
    if source.shape != target.shape:
        raise ValueError(f"source {tuple(source.shape)} and target {tuple(target.shape)} must have the same shape")
    _check_k(k, min(source.shape[-2:]))
    if k == 0:
        return source.clone()
    U, S, Vh = channel_svd(source)      # (..., h, r), (..., r), (..., r, w)
    Ut, St, Vht = channel_svd(target)
    if mode in ("values", "both"):
        S = torch.cat([St[..., :k], S[..., k:]], dim=-1)
    if mode in ("vectors", "both"):
        U = torch.cat([Ut[..., :k], U[..., k:]], dim=-1)
        Vh = torch.cat([Vht[..., :k, :], Vh[..., k:, :]], dim=-2)
    edited = (U * S.unsqueeze(-2)) @ Vh  # (..., h, w)
    return edited.to(source.dtype)


@dataclass
class TransferGrid:
    """Images of the source run edited at step ts[i] with k = ks[j]."""
    images: np.ndarray       # (len(ts), len(ks), H, W, 3) uint8
    latents: torch.Tensor    # (len(ts), len(ks), C, h, w) final latents z_0 of the edited runs
    ks: list[int]
    ts: list[int]
    mode: str
    source_image: np.ndarray  # (H, W, 3) uint8: the unedited source run
    target_image: np.ndarray  # (H, W, 3) uint8
    source_prompt: str
    target_prompt: str
    seed: int


def transfer(pipe, source: Trajectory, target: Trajectory, ks: Sequence[int], ts: Sequence[int], mode: str = "both",
             source_index: int = 0, target_index: int = 0, batch: int = 8) -> TransferGrid:
    """Re-run ``source`` (element ``source_index``) once per (t, k): at step t its latent becomes
    ``swap_top_k(source latent, target latent at t, k, mode)`` and denoising continues with the source prompt.

    ``t`` counts steps as Trajectory does (0 = the noise, steps = the final latent, which is then only decoded).
    Both trajectories must have been recorded with the same call arguments (same steps, hence timesteps).
    """
    if source.steps != target.steps or not torch.equal(source.timesteps, target.timesteps):
        raise ValueError(f"source ({source.steps} steps) and target ({target.steps} steps) were recorded on different "
                         f"timesteps; record both with the same num_inference_steps and scheduler")
    if source.latents.shape[2:] != target.latents.shape[2:]:
        raise ValueError(f"source latents {tuple(source.latents.shape[2:])} and target latents "
                         f"{tuple(target.latents.shape[2:])} differ in shape")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; use one of {', '.join(MODES)}")
    r = min(source.latents.shape[-2:])
    ks, ts = [int(k) for k in ks], [int(t) for t in ts]
    for k in ks:
        _check_k(k, r)
    for t in ts:
        check_step(t, source.steps)
    edits = []
    for t in ts:
        z_target = target.latents[t, target_index]  # (C, h, w)
        for k in ks:
            edits.append((t, lambda z, k=k, z_target=z_target: swap_top_k(z, z_target.to(z.device, z.dtype), k, mode)))
    run = run_edited(pipe, source, edits, index=source_index, batch=batch)
    H, W = run.images.shape[1:3]
    return TransferGrid(images=run.images.reshape(len(ts), len(ks), H, W, 3),
                        latents=run.latents[-1].reshape(len(ts), len(ks), *run.latents.shape[2:]), ks=ks, ts=ts,
                        mode=mode, source_image=source.images[source_index], target_image=target.images[target_index],
                        source_prompt=source.prompts[source_index], target_prompt=target.prompts[target_index],
                        seed=source.seeds[source_index])
