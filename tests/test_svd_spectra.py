"""analyses.svd.spectra and .geometry: the linear algebra, on plain tensors."""
import math

import pytest
import torch

from analyses.svd import (channel_svd, effective_rank, endpoint_plane, principal_angles, reconstruct, step_cosines,
                          subspace_rotation, top_k_bases, trajectory_pca)


def test_channel_svd_reconstructs_every_channel():
    z = torch.randn(3, 2, 4, 16, 12, generator=torch.Generator().manual_seed(0))  # (steps+1, batch, C, h, w)
    U, S, Vh = channel_svd(z)
    assert U.shape == (3, 2, 4, 16, 12) and S.shape == (3, 2, 4, 12) and Vh.shape == (3, 2, 4, 12, 12)
    torch.testing.assert_close(reconstruct(U, S, Vh), z.double(), atol=1e-10, rtol=0)


def test_effective_rank_of_rank_one_matrix_is_one():
    u, v = torch.randn(16, 1, dtype=torch.float64), torch.randn(1, 16, dtype=torch.float64)
    assert effective_rank(channel_svd(u @ v)[1]).item() == pytest.approx(1.0, abs=1e-9)


def test_effective_rank_of_identity_is_its_size_and_of_zero_is_nan():
    assert effective_rank(channel_svd(torch.eye(16))[1]).item() == pytest.approx(16.0)
    assert math.isnan(effective_rank(torch.zeros(16)).item())


def test_principal_angles_between_identical_subspaces_are_zero():
    Q, _ = torch.linalg.qr(torch.randn(16, 4, dtype=torch.float64))
    mixed = Q @ torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0]  # another basis of the same span
    torch.testing.assert_close(principal_angles(Q, mixed), torch.zeros(4, dtype=torch.float64), atol=1e-6, rtol=0)


def test_principal_angles_between_orthogonal_subspaces_are_right_angles():
    eye = torch.eye(16)
    angles = principal_angles(eye[:, :3], eye[:, 5:8])
    torch.testing.assert_close(angles, torch.full((3,), math.pi / 2, dtype=torch.float64))


def test_subspace_rotation_of_a_still_trajectory_is_zero():
    z = torch.randn(1, 1, 2, 16, 16).expand(4, 1, 2, 16, 16)  # the same latent at every step
    angles = subspace_rotation(z, k=3)
    assert angles["left"].shape == (3, 1, 2, 3)
    assert angles["left"].abs().max() < 1e-6 and angles["right"].abs().max() < 1e-6


def test_bad_k_names_the_valid_range():
    with pytest.raises(ValueError, match=r"k=17 is outside 1\.\.16"):
        top_k_bases(torch.randn(4, 16, 16), 17)


def test_trajectory_on_a_line_has_one_component_and_straight_steps():
    a, b = torch.randn(2, 1, 4, 8, 8).unbind(0)
    z = torch.stack([a + s * b for s in torch.linspace(0, 1, 6)])  # (6, 1, 4, 8, 8) straight line
    assert trajectory_pca(z).explained[0, 0].item() == pytest.approx(1.0)
    torch.testing.assert_close(step_cosines(z), torch.ones(4, 1, dtype=torch.float64))


def test_a_rotation_from_noise_to_image_stays_in_the_endpoint_plane():
    x_T, x_0 = torch.randn(2, 2, 4, 8, 8).unbind(0)
    angles = torch.linspace(0, math.pi / 2, 7).view(7, 1, 1, 1, 1)
    z = torch.cos(angles) * x_T + torch.sin(angles) * x_0  # (7, 2, 4, 8, 8)
    plane = endpoint_plane(z)
    assert plane.outside.abs().max() < 1e-6
    assert trajectory_pca(z).explained[:, :2].sum(1).min() > 1 - 1e-9
