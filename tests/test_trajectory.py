"""lab.trajectory: recording z_t (and the UNet's input and output) leaves the generation as it was."""
import numpy as np
import pytest
import torch
from tiny_models import one_thread, tiny_pipeline  # noqa: F401  (one_thread: autouse for this module)

from lab import tour
from lab.trajectory import record, run_edited

PROMPT = "a small red circle on a black background"


def test_recording_does_not_change_the_image(shapes_pipe):
    traj = record(shapes_pipe, PROMPT, seeds=3, num_inference_steps=3)
    plain = shapes_pipe(PROMPT, generator=torch.Generator("cpu").manual_seed(3), num_inference_steps=3,
                        output_type="np").images
    assert np.array_equal(traj.images[0], (plain[0] * 255).round().astype(np.uint8))


def test_trajectory_holds_the_noise_every_step_and_the_decoded_latent(shapes_pipe):
    traj = record(shapes_pipe, PROMPT, seeds=3, num_inference_steps=3)
    assert traj.latents.shape == (4, 1, 4, 16, 16) and traj.timesteps.shape == (3,)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator("cpu").manual_seed(3))
    torch.testing.assert_close(traj.latents[0], noise * traj.meta["init_noise_sigma"])
    final = shapes_pipe(PROMPT, generator=torch.Generator("cpu").manual_seed(3), num_inference_steps=3,
                        output_type="latent").images.cpu()  # a trajectory's latents are on the CPU
    torch.testing.assert_close(traj.latents[-1], final)


def test_batch_is_every_prompt_with_every_seed_prompt_major(shapes_pipe):
    other = "a large blue square on a white background"
    traj = record(shapes_pipe, [PROMPT, other], seeds=[0, 1], num_inference_steps=2)
    assert traj.prompts == [PROMPT, PROMPT, other, other]
    assert traj.seeds == [0, 1, 0, 1]
    torch.testing.assert_close(traj.latents[0, 0], traj.latents[0, 2])  # same seed, same noise


def test_unedited_rerun_repeats_the_recorded_run(shapes_pipe):
    traj = record(shapes_pipe, PROMPT, seeds=5, num_inference_steps=3)
    again = run_edited(shapes_pipe, traj, [None, (1, lambda z: z)])
    torch.testing.assert_close(again.latents, traj.latents.expand(-1, 2, -1, -1, -1))


def test_arguments_the_recorder_owns_are_refused(shapes_pipe):
    with pytest.raises(ValueError, match="generator= is set by the recorder"):
        record(shapes_pipe, PROMPT, num_inference_steps=2, generator=torch.Generator())


def test_recording_works_on_an_sdxl_pipeline():
    pipe = tiny_pipeline("sdxl")
    traj = record(pipe, "a red square", seeds=1, num_inference_steps=2, height=64, width=64)
    plain = pipe("a red square", generator=torch.Generator("cpu").manual_seed(1), num_inference_steps=2, height=64,
                 width=64, output_type="latent").images.cpu()
    assert traj.latents.shape == (3, 1, 4, 8, 8)
    torch.testing.assert_close(traj.latents[-1], plain)


def test_recording_with_stochastic_ddim_matches_a_plain_call(shapes_pipe):
    """eta > 0 draws scheduler noise from the generators: they must be where the pipeline would have left them."""
    traj = record(shapes_pipe, PROMPT, seeds=[3, 4], num_inference_steps=2, eta=1.0)
    gens = [torch.Generator("cpu").manual_seed(s) for s in (3, 4)]
    plain = shapes_pipe([PROMPT] * 2, generator=gens, num_inference_steps=2, eta=1.0,
                        output_type="latent").images.cpu()
    torch.testing.assert_close(traj.latents[-1], plain)


def test_unet_steps_hold_the_call_each_step_used(shapes_pipe):
    traj = record(shapes_pipe, PROMPT, seeds=3, num_inference_steps=3, unet=True)
    plain = record(shapes_pipe, PROMPT, seeds=3, num_inference_steps=3)
    assert np.array_equal(traj.images, plain.images)  # the hook only observes
    assert traj.unet.inputs.shape == traj.unet.outputs.shape == (3, 2, 4, 16, 16)  # (steps, [uncond, cond], C, h, w)
    assert traj.unet.timesteps.tolist() == traj.timesteps.tolist() and traj.unet.calls == 3
    torch.testing.assert_close(traj.unet.inputs[0, 1], traj.latents[0, 0])  # DDIM does not scale its input
    assert not shapes_pipe.unet._forward_hooks


def test_the_tours_readable_loop_walks_the_recorded_trajectory(shapes_pipe):
    """lab.tour.denoise, written out for teaching, visits the latents the pipeline's own loop visits."""
    traj = record(shapes_pipe, PROMPT, seeds=3, num_inference_steps=4, unet=True)
    run = tour.denoise(shapes_pipe, PROMPT, seed=3, steps=4, guidance=7.5)
    torch.testing.assert_close(run.latents, traj.latents[:, 0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(run.eps_cond, traj.unet.outputs[:, 1], atol=1e-4, rtol=1e-4)
    assert run.timesteps.tolist() == traj.timesteps.tolist()
