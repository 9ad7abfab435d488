"""Geometry of a latent trajectory: how low-dimensional it is, whether it stays in the z_T-z_0 plane, how it turns.

    >>> import torch
    >>> from analyses.svd.geometry import trajectory_pca, endpoint_plane, step_cosines
    >>> z = torch.randn(11, 2, 4, 16, 16)                   # (steps+1, batch, C, h, w), e.g. Trajectory.latents
    >>> trajectory_pca(z).explained.shape                   # (batch, components): variance ratio of each PC
    torch.Size([2, 11])
    >>> endpoint_plane(z).outside.shape                     # (steps+1, batch): |z_t off the plane| / |z_t|
    torch.Size([11, 2])
    >>> step_cosines(z).shape                               # (steps-1, batch): cos(d_i, d_{i+1}), d_i = z_{i+1} - z_i
    torch.Size([9, 2])

trajectory_pca(latents)   PCA of one trajectory's points (each z_t flattened, centred over time): explained variance
                          ratios and the coordinates of every z_t on the components
endpoint_plane(latents)   the plane spanned by z_T and z_0 (through the origin): each z_t's coordinates in it and
                          the fraction of its norm outside it
step_cosines(latents)     cosine between successive step directions d_i = z_{i+1} - z_i

"Diffusion Models Generate Images Like Painters" (Wang & Vastola) report that sampling trajectories are close to
two-dimensional rotations from the noise towards the image; these are our measurements of that claim, per
generation, on whatever model records the trajectory. All in float64, every z_t flattened to one vector.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def _flat(latents: torch.Tensor) -> torch.Tensor:
    """(steps+1, batch, D) float64 from (steps+1, batch, C, h, w)."""
    if latents.ndim < 3:
        raise ValueError(f"latents must be (steps+1, batch, ...); got shape {tuple(latents.shape)}")
    return latents.detach().to(torch.float64).flatten(2)


@dataclass
class PCA:
    explained: torch.Tensor    # (batch, components) fraction of the trajectory's variance on each component
    coords: torch.Tensor       # (steps+1, batch, components) every z_t on the components (centred over time)
    components: torch.Tensor   # (batch, components, D) unit directions


def trajectory_pca(latents: torch.Tensor) -> PCA:
    """PCA of each generation's steps+1 points; at most steps+1 components (steps after centring carry variance)."""
    X = _flat(latents).transpose(0, 1)                 # (batch, steps+1, D)
    X = X - X.mean(dim=1, keepdim=True)
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)  # U (batch, steps+1, n), S (batch, n), Vh (batch, n, D)
    var = S**2
    return PCA(explained=var / var.sum(-1, keepdim=True), coords=(U * S.unsqueeze(1)).transpose(0, 1), components=Vh)


@dataclass
class Plane:
    coords: torch.Tensor   # (steps+1, batch, 2) coordinates on (e1, e2): e1 = z_T / |z_T|, e2 = z_0's part orthogonal
    outside: torch.Tensor  # (steps+1, batch) |z_t - P z_t| / |z_t|, P the projection onto the plane
    angle: torch.Tensor    # (batch,) angle between z_T and z_0, radians


def endpoint_plane(latents: torch.Tensor) -> Plane:
    """Project every z_t onto span(z_T, z_0). outside is 0 at both ends by construction."""
    Z = _flat(latents)                                  # (steps+1, batch, D)
    e1 = Z[0] / Z[0].norm(dim=-1, keepdim=True)         # (batch, D)
    rest = Z[-1] - (Z[-1] * e1).sum(-1, keepdim=True) * e1
    e2 = rest / rest.norm(dim=-1, keepdim=True).clamp_min(1e-300)  # (batch, D); 0 if z_0 is parallel to z_T
    a, b = (Z * e1).sum(-1), (Z * e2).sum(-1)           # (steps+1, batch) each
    off = Z - a.unsqueeze(-1) * e1 - b.unsqueeze(-1) * e2
    cos = (Z[0] * Z[-1]).sum(-1) / (Z[0].norm(dim=-1) * Z[-1].norm(dim=-1))
    return Plane(coords=torch.stack([a, b], dim=-1), outside=off.norm(dim=-1) / Z.norm(dim=-1),
                 angle=torch.arccos(cos.clamp(-1.0, 1.0)))


def step_cosines(latents: torch.Tensor) -> torch.Tensor:
    """(steps-1, batch) cos(d_i, d_{i+1}) with d_i = z_{i+1} - z_i; 1 = the trajectory goes straight on."""
    d = torch.diff(_flat(latents), dim=0)               # (steps, batch, D)
    return torch.nn.functional.cosine_similarity(d[:-1], d[1:], dim=-1)
