"""The diffusion classifier on diffusion transformers (tiny SD3 and FLUX.1-schnell; FLUX.1-dev for its guidance):
flow-matching errors at sigma = t / 1000, the transformer called as the pipeline calls it, attention agreement from
the joint attention's image->text views, and the study's per-item measure end to end."""
import numpy as np
import pytest
import torch

from analyses import classify
from analyses.classify import flow
from tiny_models import one_thread, tiny_dit_pipeline  # noqa: F401

IMAGE = np.zeros((64, 64, 3), np.uint8) + np.array([200, 30, 30], np.uint8)


@pytest.fixture(scope="module", params=["sd3", "flux-schnell"])
def pipe(request):
    return tiny_dit_pipeline(request.param)


def test_errors_are_finite_one_per_caption_and_timestep_and_equal_for_equal_captions(pipe):
    e = classify.errors(pipe, IMAGE, ["a red square", "a red square", "a blue circle"], [100, 500, 900])
    assert e.shape == (3, 3) and bool(torch.isfinite(e).all()) and bool((e > 0).all())
    torch.testing.assert_close(e[0], e[1])  # the same noise for every caption
    assert not torch.equal(e[0], e[2])


def test_a_fixed_seed_gives_the_same_errors_and_another_seed_others(pipe):
    e = classify.errors(pipe, IMAGE, ["a red square"], [300, 700], seed=1)
    assert torch.equal(e, classify.errors(pipe, IMAGE, ["a red square"], [300, 700], seed=1))
    assert not torch.equal(e, classify.errors(pipe, IMAGE, ["a red square"], [300, 700], seed=2))


def test_timestep_t_is_sigma_t_over_1000_whatever_the_shift_and_the_pipelines_scheduler_is_left_alone(pipe):
    before = pipe.scheduler.timesteps.clone()
    latents = classify.encode_image(pipe, IMAGE)  # (1, 16, 8, 8)
    xt, target, t = flow.noisy(pipe, latents, [250, 750], torch.Generator().manual_seed(0))
    noise = torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(0)).to(latents)
    sigma = torch.tensor([0.25, 0.75]).to(latents)[:, None, None, None]
    torch.testing.assert_close(xt, (1 - sigma) * latents + sigma * noise)  # tiny SD3's shift is 3: not applied
    torch.testing.assert_close(target, (noise - latents).expand_as(target))
    torch.testing.assert_close(t.cpu(), torch.tensor([250.0, 750.0]))
    assert torch.equal(pipe.scheduler.timesteps, before)


def _captured(pipe, call) -> dict:
    """The transformer's keyword arguments and output in the one call `call` makes."""
    seen = {}
    pre = pipe.transformer.register_forward_pre_hook(lambda m, a, kw: seen.update(kwargs=dict(kw)), with_kwargs=True)
    post = pipe.transformer.register_forward_hook(lambda m, a, kw, out: seen.update(out=out[0]), with_kwargs=True)
    try:
        call()
    finally:
        pre.remove(), post.remove()
    return seen


def _same_call_as_the_pipelines_first_step(pipe):
    """At t = 1000 (sigma 1: x_t is the noise) errors() calls the transformer with the very inputs of a one-step
    pipeline call started from the same noise (Flux: packed, with img_ids / txt_ids; dev: guidance at 3.5), and its
    error is the pipeline's velocity against noise - x0."""
    sd3 = type(pipe).__name__ == "StableDiffusion3Pipeline"
    ours = _captured(pipe, lambda: classify.errors(pipe, IMAGE, ["a red square"], [1000], seed=3))
    x0 = classify.encode_image(pipe, IMAGE)  # (1, 16, 8, 8)
    noise = torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(3))[None].to(x0)  # as errors() drew it

    def pack(x):
        return x if sd3 else pipe._pack_latents(x, 1, *x.shape[1:])

    theirs = _captured(pipe, lambda: pipe("a red square", latents=pack(noise), height=64, width=64,
                                          num_inference_steps=1, output_type="latent",
                                          **({"guidance_scale": 1.0} if sd3 else {})))  # SD3: no CFG branch
    assert ours["kwargs"].keys() == theirs["kwargs"].keys()
    for name, value in theirs["kwargs"].items():
        same = torch.equal(ours["kwargs"][name], value) if torch.is_tensor(value) else ours["kwargs"][name] == value
        assert same, f"{name} differs from the pipeline's"
    assert (theirs["kwargs"].get("guidance") is not None) == (pipe.transformer.config.get("guidance_embeds", False))
    assert torch.equal(ours["out"], theirs["out"])
    e = classify.errors(pipe, IMAGE, ["a red square"], [1000], seed=3)
    torch.testing.assert_close(e[0, 0], ((theirs["out"].float() - pack(noise - x0).float()) ** 2).mean())


def test_the_transformer_gets_what_the_pipeline_gives_it_at_its_first_step(pipe):
    _same_call_as_the_pipelines_first_step(pipe)


def test_flux_dev_gets_the_pipelines_default_guidance_embedding():
    _same_call_as_the_pipelines_first_step(tiny_dit_pipeline("flux-dev"))


def test_attention_agreement_is_one_per_caption_and_timestep(pipe):
    a = classify.attention(pipe, IMAGE, ["a red square", "a blue circle"], [100, 900])
    assert a.shape == (2, 2) and bool(((a > 0) & (a <= 1)).all())
    assert not torch.equal(a[0], a[1])


def test_the_text_windows_words_are_aligned_in_are_those_a_trace_records(pipe):
    from lab.hooks import Keep, select, trace

    text = flow.conditioning(pipe, ["a red square"])
    xt, _, t = flow.noisy(pipe, classify.encode_image(pipe, IMAGE), [500], torch.Generator().manual_seed(0))
    name = select(pipe, kind="image->text")[0]
    with trace(pipe.transformer, [name], keep=Keep(heads="mean"), branches=("cond",)) as tr:
        flow.velocity(pipe, xt, t, text)
    assert [(w["encoder"], w["keys"]) for w in tr.cache.meta["context"]] == [
        (w["encoder"], w["keys"]) for w in flow.context(pipe, text)]


def test_an_image_the_transformer_cannot_tile_is_refused_naming_the_multiple(pipe):
    with pytest.raises(ValueError, match=r"a 72x72 image .* multiples of 16 pixels"):
        classify.errors(pipe, np.zeros((72, 72, 3), np.uint8), ["a red square"], [500])


def test_the_studys_measure_runs_end_to_end_on_a_dit(pipe):
    from analyses.classify.study import METHODS, measure

    right, margins, seconds, (pair, e) = measure(pipe, 1, [300, 700])
    assert set(right) == {(a, m) for a in classify.ATTRIBUTES for m in METHODS}
    assert all(len(r) == 1 for r in right.values()) and set(seconds) == set(METHODS)
    assert e.shape == (2, 2) and bool(torch.isfinite(e).all())
    assert all(m.shape == (1, 2) and np.isfinite(m).all() for m in margins.values())


def test_sd3_without_t5_as_shapes_dit_is_built_scores_from_its_clip_window():
    from diffusers import StableDiffusion3Pipeline

    sd3 = tiny_dit_pipeline("sd3")
    no_t5 = StableDiffusion3Pipeline(**{**sd3.components, "text_encoder_3": None, "tokenizer_3": None})
    e = classify.errors(no_t5, IMAGE, ["a red square", "a blue circle"], [500])
    a = classify.attention(no_t5, IMAGE, ["a red square", "a blue circle"], [500])
    assert bool(torch.isfinite(e).all()) and bool(((a > 0) & (a <= 1)).all())


def test_the_study_reports_a_dits_velocity_error_and_joint_attention():
    from analyses.classify.study import section

    info = {"n": 1, "timesteps": [50, 950], "seconds": {"denoising error": 0.1, "attention agreement": 0.2},
            "size": "small", "total": 1.0, "family": "dit"}
    text = section({("colour", "denoising error"): [True]}, info)
    assert "transformer's velocity prediction" in text and "sigma = t / 1000" in text and "UNet" not in text
