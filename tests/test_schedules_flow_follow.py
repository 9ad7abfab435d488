"""follow() on tiny SD3 and Flux pipelines: x_T and the final latent are a plain pipeline call's, x0-hat at the last
step is the final latent, Flux's packed tokens come back as (C, h, w)."""
import pytest
import torch

from analyses.schedules import follow
from tiny_models import one_thread, tiny_dit_pipeline  # noqa: F401 (one_thread: autouse fixture)

CALL = dict(height=64, width=64, max_sequence_length=16)
STEPS = 3


@pytest.fixture(scope="module", params=["sd3", "flux-dev"])
def pipe_run(request):
    pipe = tiny_dit_pipeline(request.param)
    return pipe, follow(pipe, "a red square", seed=3, num_inference_steps=STEPS, **CALL)


def _plain_final(pipe):
    """The final latent of a plain call, unpacked to (C, h, w) (output_type='latent' gives Flux's packed tokens)."""
    z = pipe("a red square", generator=torch.Generator("cpu").manual_seed(3), num_inference_steps=STEPS,
             output_type="latent", **CALL).images  # (1, C, h, w) or Flux (1, tokens, 4C)
    if z.ndim == 3:
        z = pipe._unpack_latents(z, 64, 64, pipe.vae_scale_factor)
    return z[0].float()


def _plain_noise(pipe):
    """x_T as the pipeline's prepare_latents draws it from the same seed, unpacked."""
    flux = hasattr(pipe, "_unpack_latents")
    channels = pipe.transformer.config.in_channels // (4 if flux else 1)
    z = pipe.prepare_latents(1, channels, 64, 64, torch.float32, pipe.device, torch.Generator("cpu").manual_seed(3))
    z = z[0] if flux else z  # Flux also returns the image ids
    return (pipe._unpack_latents(z, 64, 64, pipe.vae_scale_factor) if flux else z)[0]


def test_shapes(pipe_run):
    pipe, run = pipe_run
    assert run.latents.shape == (STEPS + 1, 16, 8, 8) and run.x0.shape == (STEPS, 16, 8, 8)
    assert run.x0_images.shape == (STEPS, 64, 64, 3) and run.xt_images.shape == (STEPS + 1, 64, 64, 3)
    assert run.timesteps.shape == (STEPS,) and run.meta["sigmas"].shape == (STEPS + 1,)


def test_x_T_is_the_pipelines_noise(pipe_run):
    pipe, run = pipe_run
    assert torch.equal(run.latents[0], _plain_noise(pipe))


def test_final_latent_is_a_plain_calls(pipe_run):
    pipe, run = pipe_run
    assert torch.equal(run.latents[-1], _plain_final(pipe))


def test_x0_hat_at_the_last_step_is_the_final_latent(pipe_run):
    _, run = pipe_run
    torch.testing.assert_close(run.x0[-1], run.latents[-1], rtol=0, atol=1e-6)


def test_x0_hat_is_x_t_minus_sigma_v(pipe_run):
    _, run = pipe_run
    s = run.meta["sigmas"].float()
    # the Euler step x_next = x_t + (s_next - s) v, with v = (x_t - x0) / s
    v = (run.latents[:-1] - run.x0) / s[:-1, None, None, None]
    torch.testing.assert_close(run.latents[1:], run.latents[:-1] + (s[1:] - s[:-1])[:, None, None, None] * v,
                               rtol=1e-4, atol=1e-5)


def test_signal_share_rises_to_one(pipe_run):
    _, run = pipe_run
    assert run.alphas[0] == 0 and (run.alphas.diff() > 0).all()


def test_sd3_guidance_changes_x0_not_the_rule():
    pipe = tiny_dit_pipeline("sd3")
    a = follow(pipe, "a red square", seed=0, num_inference_steps=2, guidance_scale=1.0, **CALL)
    b = follow(pipe, "a red square", seed=0, num_inference_steps=2, guidance_scale=7.0, **CALL)
    assert a.meta["guidance_scale"] == 1.0 and b.meta["guidance_scale"] == 7.0
    assert torch.equal(a.latents[0], b.latents[0]) and not torch.equal(a.x0[0], b.x0[0])
    torch.testing.assert_close(b.x0[-1], b.latents[-1], rtol=0, atol=1e-6)


def test_refuses_arguments_it_sets():
    with pytest.raises(ValueError, match="latents= is set by follow.*guidance_scale"):
        follow(tiny_dit_pipeline("sd3"), "a red square", latents=torch.zeros(1))


def test_views_draw_a_flow_run(pipe_run):
    from analyses.schedules import views

    _, run = pipe_run
    assert len(views.step_figure(run, 1).axes) == 3
    assert views.step_label(run, 0).startswith(f"step 1/{STEPS}: t = 1000, alpha-bar = 0.0000")


def test_scrubber_scrubs_an_sd3_and_a_flux_run():
    from analyses.schedules.views import Scrubber

    pipes = {"sd3": tiny_dit_pipeline("sd3"), "flux": tiny_dit_pipeline("flux-schnell")}
    scrub = Scrubber(pipes, "a red square", seed=3, steps=STEPS, **CALL)
    box = scrub.box
    assert "lab-scrubber" in box._dom_classes and scrub.text.value.startswith(f"step 1/{STEPS}: t = 1000")
    scrub.scrub.value = 2
    assert scrub.text.value.startswith(f"step 2/{STEPS}") and scrub.text.value != scrub.label(0)
    sd3 = scrub.run
    scrub.model_menu.value = "flux"  # the menu follows the same prompt and seed on the other pipeline
    assert scrub.model == "flux" and scrub.run.latents.shape == (STEPS + 1, 16, 8, 8)  # Flux unpacked to (C, h, w)
    assert (scrub.run.image != sd3.image).any() and scrub.text.value.startswith(f"step 2/{STEPS}")
