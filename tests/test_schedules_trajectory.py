"""analyses.schedules.follow: x0-hat per step, checked against the schedulers' own predictions and the tour's loop."""
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from tiny_models import one_thread, tiny_pipeline  # noqa: F401  (one_thread: autouse for this module)

from analyses.schedules import band_power, follow
from lab.load import with_components


def scheduler_x0(pipe) -> list[torch.Tensor]:
    """Record the scheduler's own pred_original_sample at each step (test-only wrapper on this instance)."""
    seen, original = [], pipe.scheduler.step

    def step(*args, return_dict=True, **kwargs):
        out = original(*args, return_dict=True, **kwargs)
        seen.append(out.pred_original_sample[0].float().clone())
        return out if return_dict else (out.prev_sample,)

    pipe.scheduler.step = step
    return seen


def test_follow_matches_the_tours_readable_loop(shapes_pipe):
    from lab.tour import denoise
    prompt = "a small red circle on a white background"
    run = follow(shapes_pipe, prompt, seed=3, num_inference_steps=6)
    ref = denoise(shapes_pipe, prompt, seed=3, steps=6, guidance=7.5)
    torch.testing.assert_close(run.x0, ref.x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(run.latents, ref.latents, atol=1e-4, rtol=1e-4)
    assert run.timesteps.tolist() == ref.timesteps.tolist()
    assert run.x0_images.shape == (6, 128, 128, 3) and run.xt_images.shape == (7, 128, 128, 3)
    # the last x0-hat is the output up to the noise DDIM leaves at alpha-bar_0 (set_alpha_to_one=False)
    assert np.abs(run.x0_images[-1].astype(int) - run.image.astype(int)).mean() < 12
    assert not shapes_pipe.unet._forward_hooks, "follow must remove its hook"


@pytest.mark.parametrize("scheduler", ["euler", "ddim-v-rescale"])
def test_x0_equals_the_schedulers_prediction(scheduler):
    pipe = tiny_pipeline("sd21")
    call = {}
    if scheduler == "euler":
        pipe = with_components(pipe, scheduler=EulerDiscreteScheduler.from_config(pipe.scheduler.config))
    else:  # v-prediction on a zero-terminal-SNR schedule, with CFG rescale: every branch of the x0 formula
        pipe = with_components(pipe, scheduler=DDIMScheduler.from_config(
            pipe.scheduler.config, prediction_type="v_prediction", rescale_betas_zero_snr=True,
            timestep_spacing="trailing"))
        call = {"guidance_rescale": 0.7}
    seen = scheduler_x0(pipe)
    run = follow(pipe, "a red square", seed=1, num_inference_steps=4, height=64, width=64, **call)
    assert len(seen) == 4 and run.steps == 4
    torch.testing.assert_close(run.x0, torch.stack(seen), atol=1e-4, rtol=1e-3)


def test_follow_runs_sdxl_and_leaves_it_unhooked():
    pipe = tiny_pipeline("sdxl")
    run = follow(pipe, "a red square", seed=0, num_inference_steps=3, height=64, width=64, decode=False)
    assert run.x0.shape == (3, 4, 8, 8) and run.band_error.shape == (3, 3)
    assert torch.isfinite(run.band_error).all() and run.meta["pipeline"] == "StableDiffusionXLPipeline"
    assert not pipe.unet._forward_hooks


def test_band_error_falls_to_the_final_image(shapes_pipe):
    # grey, not black or white: DDIM's last step (to alpha-bar 0.99915, not 1) moves the latent by ~7% (0.03 x the
    # guided noise prediction); on black or white the decoder turns that into up to ~30% of the final image's low-band
    # energy (measured on the 31,090-step weights), on grey into almost nothing
    run = follow(shapes_pipe, "a large blue square on a grey background", seed=0, num_inference_steps=8)
    assert float(run.band_error[-1, 0]) < 0.05  # the last x0-hat has the output's outline
    assert (run.band_error[0] > run.band_error[-1]).all()
    assert all(0 <= s <= run.steps for s in run.settled())


def test_band_power_adds_up_to_the_energy():
    x = torch.randn(2, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(band_power(x, 4).sum(1), x.double().pow(2).sum(dim=(1, 2, 3)))
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * 2.0 - 1  # (8, 8) highest frequency
    assert band_power(checker[None, None], 3)[0].argmax() == 2


@pytest.mark.parametrize("kwargs, match", [({"prompt": ""}, "non-empty"), ({"output_type": "pt"}, "output_type"),
                                           ({"bands": 0}, "bands")])
def test_follow_rejects_bad_input(shapes_pipe, kwargs, match):
    args = {"prompt": "a red circle on a black background", **kwargs}
    with pytest.raises(ValueError, match=match):
        follow(shapes_pipe, **args)
