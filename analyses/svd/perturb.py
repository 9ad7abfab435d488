"""Early vs late perturbation: push the latent at step s along a top singular direction or a random one, see what
changes in the final image.

    >>> import lab
    >>> from lab.trajectory import record
    >>> from analyses.svd.perturb import perturb
    >>> pipe = lab.load("shapes")
    >>> traj = record(pipe, "a small red circle on a black background", seeds=0, num_inference_steps=10)
    >>> result = perturb(pipe, traj, steps_at=[0, 5, 10], size=8.0)
    >>> result.images.shape                               # (directions, len(steps_at), H, W, 3) uint8
    (2, 3, 128, 128, 3)
    >>> result.change.shape                               # mean |pixel difference| to the unperturbed image, 0..255
    (2, 3)

top_direction(z)      per channel u_1 v_1^T of z (C, h, w), scaled so the whole direction has norm 1
random_direction(shape, seed)   a Gaussian direction of norm 1
perturb(pipe, traj, steps_at, size, directions, index, seed)   z_s + size * direction at each step s, re-run
DIRECTIONS = ("top", "random")

The "top" direction of channel c is the rank-1 matrix u_1 v_1^T of that channel's SVD at the step being perturbed
(unit Frobenius norm per channel, sign fixed by the pair so that it adds to the channel's top component); the
channels are stacked and scaled together to total norm ``size``. The "random" direction is one fixed Gaussian
direction (seeded by ``seed``) of the same norm, used at every step, so only the step varies. ``size`` is an
absolute Frobenius norm in latent units; compare it with the norms of z_t (``traj.latents.flatten(2).norm(dim=-1)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from lab.trajectory import Trajectory, check_step, run_edited

from .spectra import channel_svd

DIRECTIONS = ("top", "random")


def top_direction(z: torch.Tensor) -> torch.Tensor:
    """(C, h, w): u_1 v_1^T of every channel of z (C, h, w), stacked, total norm 1; same dtype as z."""
    U, _, Vh = channel_svd(z)                           # (C, h, r), (C, r), (C, r, w)
    d = U[..., :, :1] @ Vh[..., :1, :]                  # (C, h, w), each channel of norm 1
    return (d / d.norm()).to(z.dtype)


def random_direction(shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """(*shape) float32 Gaussian direction of norm 1, the same for the same seed."""
    d = torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(int(seed)), dtype=torch.float64)
    return (d / d.norm()).to(torch.float32)


@dataclass
class Perturbation:
    """The run ``index`` of a trajectory, perturbed at steps_at[j] along directions[i]."""
    images: np.ndarray     # (directions, len(steps_at), H, W, 3) uint8
    latents: torch.Tensor  # (directions, len(steps_at), C, h, w) final latents
    change: np.ndarray     # (directions, len(steps_at)) mean |pixel difference| to the unperturbed image, 0..255
    reference: np.ndarray  # (H, W, 3) uint8 the unperturbed image (re-run in the same batch as the perturbed ones)
    steps_at: list[int]
    directions: list[str]
    size: float
    norms: torch.Tensor    # (len(steps_at),) |z_s| of the unperturbed run at each perturbed step, for scale


def perturb(pipe, traj: Trajectory, steps_at: Sequence[int], size: float, directions: Sequence[str] = DIRECTIONS,
            index: int = 0, seed: int = 0, batch: int = 8) -> Perturbation:
    """Re-run generation ``index`` of ``traj`` with z_s <- z_s + size * direction, once per (direction, s)."""
    directions = list(directions)
    for name in directions:
        if name not in DIRECTIONS:
            raise ValueError(f"direction {name!r}; use one of {', '.join(DIRECTIONS)}")
    if not np.isfinite(size) or size < 0:
        raise ValueError(f"size={size!r}; use a finite norm >= 0")
    steps_at = [int(s) for s in steps_at]
    for s in steps_at:
        check_step(s, traj.steps)
    rand = random_direction(traj.latents.shape[2:], seed)  # (C, h, w)

    def edit(name: str):
        if name == "top":
            return lambda z: z + size * top_direction(z)
        return lambda z: z + size * rand.to(z.device, z.dtype)

    edits = [None] + [(s, edit(name)) for name in directions for s in steps_at]  # [0] is the unperturbed re-run
    run = run_edited(pipe, traj, edits, index=index, batch=batch)
    reference, images = run.images[0], run.images[1:]
    change = np.abs(images.astype(np.float32) - reference.astype(np.float32)).mean(axis=(1, 2, 3))
    shape = (len(directions), len(steps_at))
    return Perturbation(images=images.reshape(*shape, *images.shape[1:]),
                        latents=run.latents[-1, 1:].reshape(*shape, *run.latents.shape[2:]),
                        change=change.reshape(shape), reference=reference, steps_at=steps_at, directions=directions,
                        size=float(size), norms=traj.latents[steps_at, index].flatten(1).norm(dim=-1))
