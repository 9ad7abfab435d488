"""Per-channel SVD of latents: singular spectra over denoising time, effective rank, rotation of singular subspaces.

    >>> import torch
    >>> from analyses.svd.spectra import channel_svd, effective_rank, principal_angles
    >>> z = torch.randn(11, 2, 4, 16, 16)                 # (steps+1, batch, C, h, w), e.g. Trajectory.latents
    >>> U, S, Vh = channel_svd(z)                          # U (..., C, h, r), S (..., C, r), Vh (..., C, r, w)
    >>> effective_rank(S).shape                            # (steps+1, batch, C)
    torch.Size([11, 2, 4])
    >>> principal_angles(U[0, 0, 0, :, :3], U[1, 0, 0, :, :3]).shape   # radians, ascending
    torch.Size([3])

channel_svd(z)                     each channel of z (..., C, h, w) as an h x w matrix: U, S, Vh (float64)
reconstruct(U, S, Vh)              U diag(S) Vh, the inverse of channel_svd
effective_rank(S)                  exp(entropy of S / sum(S)) per matrix (Roy & Vetterli 2007)
principal_angles(A, B)             angles between span(A) and span(B) (orthonormal columns), via SVD of A^T B
subspace_rotation(latents, k, ...) principal angles between the top-k singular subspaces of two steps, per channel

Effective rank (Roy & Vetterli, "The effective rank: a measure of effective dimensionality", EUSIPCO 2007): with
p_i = s_i / sum_j s_j the singular values normalised to sum 1 and H = -sum_i p_i log p_i (0 log 0 = 0), the effective
rank is exp(H). It is 1 for a rank-1 matrix, r for r equal singular values, and lies between for anything else; for
a 16 x 16 Gaussian matrix it is about 12.5. It is NaN for a zero matrix.

Principal angles (Bjorck & Golub 1973): for orthonormal bases A (n, k) and B (n, k) the cosines of the angles are the
singular values of A^T B; 0 means a shared direction, pi/2 an orthogonal one. The largest angle says how far the
subspace turned. Singular vectors' signs are arbitrary; angles between spans do not depend on them.
"""
from __future__ import annotations

import math

import torch


def channel_svd(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of every trailing (h, w) matrix of z, in float64: U (..., h, r), S (..., r), Vh (..., r, w)."""
    if z.ndim < 2:
        raise ValueError(f"channel_svd needs (..., h, w) matrices; got a tensor of shape {tuple(z.shape)}")
    return torch.linalg.svd(z.detach().to(torch.float64), full_matrices=False)


def reconstruct(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor) -> torch.Tensor:
    """U diag(S) Vh: (..., h, w)."""
    return (U * S.unsqueeze(-2)) @ Vh


def effective_rank(S: torch.Tensor) -> torch.Tensor:
    """exp(-sum p log p), p = S / S.sum(-1): (...,) for singular values S (..., r). NaN where S is all zero."""
    S = S.to(torch.float64)
    p = S / S.sum(-1, keepdim=True)                                   # (..., r)
    entropy = -torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(-1)
    return torch.exp(entropy).masked_fill(S.sum(-1) == 0, math.nan)


def principal_angles(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Principal angles in radians, ascending, between span(A) and span(B): A (..., n, k), B (..., n, l), both
    with orthonormal columns (as singular vectors are). Returns (..., min(k, l))."""
    if A.shape[-2] != B.shape[-2]:
        raise ValueError(f"A spans R^{A.shape[-2]} but B spans R^{B.shape[-2]}; they must live in the same space")
    cosines = torch.linalg.svdvals(A.transpose(-2, -1).to(torch.float64) @ B.to(torch.float64))  # (..., min(k, l)) desc
    return torch.arccos(cosines.clamp(0.0, 1.0))


def top_k_bases(z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k left (..., h, k) and right (..., w, k) singular vectors of every (h, w) matrix of z."""
    r = min(z.shape[-2:])
    if not isinstance(k, int) or not 1 <= k <= r:
        raise ValueError(f"k={k!r} is outside 1..{r} (the rank of a {z.shape[-2]} x {z.shape[-1]} matrix)")
    U, _, Vh = channel_svd(z)
    return U[..., :k], Vh[..., :k, :].transpose(-2, -1)


def subspace_rotation(latents: torch.Tensor, k: int, reference: str = "next") -> dict[str, torch.Tensor]:
    """How the top-k singular subspaces of each channel turn over a trajectory ``latents`` (steps+1, ..., h, w).

    reference="next": angles between step i and step i+1 -> (steps, ..., k).
    reference="final": angles between step i and the final latent -> (steps+1, ..., k).
    Returns {"left": angles of the column spaces (U), "right": of the row spaces (V)}, radians, ascending.
    """
    if reference not in ("next", "final"):
        raise ValueError(f"reference={reference!r}; use 'next' (successive steps) or 'final' (against z_0)")
    U, V = top_k_bases(latents, k)  # (steps+1, ..., h, k), (steps+1, ..., w, k)
    if reference == "next":
        return {"left": principal_angles(U[:-1], U[1:]), "right": principal_angles(V[:-1], V[1:])}
    return {"left": principal_angles(U, U[-1:].expand_as(U)), "right": principal_angles(V, V[-1:].expand_as(V))}


def energy_in_top_k(S: torch.Tensor, k: int) -> torch.Tensor:
    """Fraction of each matrix's squared Frobenius norm in its top-k singular values: (...,) from S (..., r)."""
    S2 = S.to(torch.float64) ** 2
    return S2[..., :k].sum(-1) / S2.sum(-1)
