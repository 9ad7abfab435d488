"""analyses.svd.transfer and .perturb: swapping singular parts, and edited re-runs on the built-in model."""
import numpy as np
import pytest
import torch
from devices import batch_close
from tiny_models import one_thread  # noqa: F401  (autouse: one thread for this module)

from analyses.svd import (channel_svd, perturb, record, run_edited, swap_top_k, top_direction, transfer)

STEPS = 3
RED, BLUE = "a small red circle on a black background", "a small blue circle on a black background"


@pytest.fixture(scope="module")
def pair(shapes_pipe):
    """Source and target recorded in one batch: element 0 red, element 1 blue, seed 0."""
    return record(shapes_pipe, [RED, BLUE], seeds=0, num_inference_steps=STEPS)


def _latents(seed=0):
    return torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(seed)).unbind(0)


def test_swap_with_k_zero_is_the_identity():
    a, b = _latents()
    for mode in ("values", "vectors", "both"):
        assert torch.equal(swap_top_k(a, b, 0, mode), a)


def test_swap_of_every_singular_triple_is_the_target():
    a, b = _latents()
    torch.testing.assert_close(swap_top_k(a, b, 16, "both"), b, atol=1e-5, rtol=0)


def test_swap_of_all_values_gives_the_target_spectrum_on_the_source_vectors():
    a, b = _latents()
    edited = swap_top_k(a, b, 16, "values")
    torch.testing.assert_close(channel_svd(edited)[1], channel_svd(b)[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(channel_svd(edited)[0].abs(), channel_svd(a)[0].abs(), atol=1e-4, rtol=0)


def test_swap_rejects_bad_k_and_mode_naming_the_valid_ones():
    a, b = _latents()
    with pytest.raises(ValueError, match=r"k=17 is outside 0\.\.16"):
        swap_top_k(a, b, 17)
    with pytest.raises(ValueError, match="values, vectors, both"):
        swap_top_k(a, b, 1, "singular")


def test_transfer_with_full_rank_and_both_equals_replacing_the_latent(shapes_pipe, pair):
    grid = transfer(shapes_pipe, pair, pair, ks=[16], ts=[1, STEPS], source_index=0, target_index=1)
    replaced = run_edited(shapes_pipe, pair, [(1, lambda z: pair.latents[1, 1].clone())], index=0)
    assert np.abs(grid.images[0, 0].astype(int) - replaced.images[0]).max() <= 1
    assert np.abs(grid.images[1, 0].astype(int) - pair.images[1]).max() <= 1  # at the last step: the target image


def test_transfer_with_k_zero_is_the_source_image(shapes_pipe, pair):
    grid = transfer(shapes_pipe, pair, pair, ks=[0], ts=[0, 2], source_index=0, target_index=1)
    for image in grid.images[:, 0]:
        assert np.abs(image.astype(int) - pair.images[0]).max() <= 1


def test_transfer_rejects_steps_outside_the_trajectory(shapes_pipe, pair):
    with pytest.raises(ValueError, match=rf"step 4 is outside 0\.\.{STEPS}"):
        transfer(shapes_pipe, pair, pair, ks=[1], ts=[4], source_index=0, target_index=1)
    with pytest.raises(ValueError, match=r"k=-1 is outside 0\.\.16"):
        transfer(shapes_pipe, pair, pair, ks=[-1], ts=[1], source_index=0, target_index=1)


def test_perturbation_of_size_zero_changes_nothing(shapes_pipe, pair):
    result = perturb(shapes_pipe, pair, steps_at=[0, 2, STEPS], size=0.0)
    assert result.change.max() == 0 and (result.images == result.reference).all()
    # the reference is re-run in another batch than the recording: equal up to float noise
    batch_close(result.latents, pair.latents[-1, 0].expand_as(result.latents), atol=1e-4, rtol=0)


def test_top_direction_is_rank_one_per_channel_with_unit_norm():
    z, _ = _latents()
    d = top_direction(z)  # (C, h, w)
    assert d.norm().item() == pytest.approx(1.0, abs=1e-5)
    S = channel_svd(d)[1]
    assert (S[:, 1:] < 1e-5).all()
