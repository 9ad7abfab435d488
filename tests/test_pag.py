"""Perturbed-attention guidance: the identity edit, the layer choice and the sampling loop on tiny SD1.5 / SD2.1 /
SDXL pipelines built from their real configs, the clean-object verdict, and the study at small size."""
import re

import numpy as np
import pytest
import torch

from analyses import pag
from analyses.pag.score import CHECKS, scenes, verdict
from lab.hooks import trace
from lab.world import render
from devices import batch_close
from resume import rerun_without
from tiny_models import one_thread, tiny_pipeline  # noqa: F401

PROMPTS, SEEDS = ["a red square", "a blue circle"], [0, 1]


@pytest.fixture(scope="module", params=["sd15", "sd21", "sdxl"])
def pipe(request):
    return tiny_pipeline(request.param)


def _pipeline_images(pipe, guidance):
    gens = [torch.Generator(pipe.device).manual_seed(s) for s in SEEDS]
    return pipe(PROMPTS, num_inference_steps=3, guidance_scale=guidance, generator=gens, height=64, width=64,
                output_type="np").images


@pytest.mark.parametrize("guidance", [0.0, 7.5])
def test_at_scale_0_the_images_equal_the_pipelines_exactly(pipe, guidance):
    ours = pag.generate(pipe, PROMPTS, SEEDS, steps=3, guidance=guidance, pag_scale=0.0, height=64, width=64)
    assert np.array_equal(ours, _pipeline_images(pipe, guidance))


def test_a_nonzero_scale_changes_the_images(pipe):
    plain = pag.generate(pipe, PROMPTS, SEEDS, steps=3, pag_scale=0.0, height=64, width=64)
    guided = pag.generate(pipe, PROMPTS, SEEDS, steps=3, pag_scale=3.0, layers="all", height=64, width=64)
    assert np.abs(plain - guided).max() > 1e-3


def test_the_identity_edit_makes_each_querys_output_its_own_value(pipe):
    name = pag.layers(pipe, "mid")[0]
    attn = dict(pipe.unet.named_modules())[name]
    seen = {}
    hooks = [attn.to_v.register_forward_hook(lambda m, i, o: seen.__setitem__("v", o)),  # (B, q, inner)
             attn.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))]  # (B, q, channels)
    x = torch.randn(2, pipe.unet.config.in_channels, 8, 8)
    text = torch.randn(2, 77, pipe.unet.config.cross_attention_dim)
    added = None
    if hasattr(pipe, "text_encoder_2"):
        added = {"text_embeds": torch.randn(2, pipe.text_encoder_2.config.projection_dim),
                 "time_ids": torch.zeros(2, 6)}
    try:
        with torch.no_grad(), trace(pipe.unet, [], edits={name: pag.identity_attention}, branches=("cond",)):
            pipe.unet(x, 500, encoder_hidden_states=text, added_cond_kwargs=added)
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(seen["out"], attn.to_out[0](seen["v"]))


@torch.no_grad()
def _two_calls(pipe, guidance, pag_scale=3.0, steps=3):
    """The reference: PAG's perturbed prediction as a second UNet call on the conditional rows alone."""
    from analyses.pag.guidance import _conditioning, _step_kwargs

    unet, n, cfg, names = pipe.unet, len(PROMPTS), guidance > 1, pag.layers(pipe, "all")
    gens = [torch.Generator(pipe.device).manual_seed(s) for s in SEEDS]
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    text, added = _conditioning(pipe, PROMPTS, pipe.device, cfg, 64, 64)
    scheduler.set_timesteps(steps, device=pipe.device)
    latents = pipe.prepare_latents(n, unet.config.in_channels, 64, 64, text.dtype, pipe.device, gens)
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(torch.cat([latents] * 2) if cfg else latents, t)
        eps = unet(x, t, encoder_hidden_states=text, added_cond_kwargs=added or None, return_dict=False)[0]
        eps_cond = eps
        if cfg:
            eps_uncond, eps_cond = eps.chunk(2)  # each (n, c, h, w)
            eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        with trace(unet, [], edits={name: pag.identity_attention for name in names}, branches=("cond",)):
            perturbed = unet(x[-n:], t, encoder_hidden_states=text[-n:], return_dict=False,
                             added_cond_kwargs={k: v[-n:] for k, v in added.items()} or None)[0]
        latents = scheduler.step(eps + pag_scale * (eps_cond - perturbed), t, latents, **_step_kwargs(scheduler, gens),
                                 return_dict=False)[0]
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=gens)[0]
    return pipe.image_processor.postprocess(image, output_type="np", do_denormalize=[True] * n)


@pytest.mark.parametrize("guidance", [0.0, 7.5])
def test_perturbed_rows_in_the_guided_batch_give_the_images_of_a_separate_perturbed_call(pipe, guidance):
    ours = pag.generate(pipe, PROMPTS, SEEDS, steps=3, guidance=guidance, pag_scale=3.0, layers="all", height=64,
                        width=64)
    batch_close(torch.from_numpy(ours), torch.from_numpy(_two_calls(pipe, guidance)))


def test_the_identity_edit_refuses_cross_attention_maps():
    from lab.hooks import Context
    ctx = Context("mid_block.attentions.0.transformer_blocks.0.attn2", 0, 0.0, ("cond",), 1, (2, 2))
    with pytest.raises(ValueError, match="4 queries and 77 keys"):
        pag.identity_attention(torch.rand(1, 2, 4, 77), ctx)


def test_layer_groups_are_the_self_attention_layers_of_that_part(pipe):
    mid = pag.layers(pipe, "mid")
    assert mid and all(n.startswith("mid_block.") and n.endswith(".attn1") for n in mid)
    assert pag.layers(pipe, ["up", "down"]) == pag.layers(pipe, "down") + pag.layers(pipe, "up")
    assert pag.layers(pipe, "all") == pag.layers(pipe, ["down", "mid", "up"])


def test_an_unknown_layer_is_refused_naming_the_valid_ones(pipe):
    with pytest.raises(ValueError, match=r"layer 'middle' is not a self-attention layer.*valid: down, mid, up, all, "
                                         r"or one of: .*mid_block\.attentions\.0\.transformer_blocks\.0\.attn1"):
        pag.generate(pipe, PROMPTS, SEEDS, steps=1, pag_scale=1.0, layers="middle", height=64, width=64)


def test_a_rendered_scene_is_a_clean_object_and_a_blank_image_is_not():
    scene = scenes(1)[0]
    assert verdict(scene, render(scene)) == {c: True for c in CHECKS}
    assert not verdict(scene, np.full_like(render(scene), 255))["clean"]


def test_a_rendered_world_2_scene_is_read_by_world_2s_parser():
    scene = scenes(1, world=2)[0]
    assert scene.world == 2 and verdict(scene, render(scene)) == {c: True for c in CHECKS}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """(out, section) of the study run once at LAB_SIZE=small."""
    from analyses.pag.study import run
    out = tmp_path_factory.mktemp("pag")
    return out, run(out)


def test_the_study_at_small_size_reports_each_condition_and_the_papers_setting(small_run):
    from analyses.pag.study import conditions
    tmp_path, text = small_run
    assert all(f"| {c.label} |" in text for c in conditions())
    assert "`no CFG + PAG mid 3` against `no CFG`" in text and "improvement **" in text
    assert (tmp_path / "pag_rates.png").exists() and (tmp_path / "pag_examples.png").exists()


def _without_cpu_seconds(section: str) -> list[str]:
    return [re.sub(r"\| [\d.]+ \|$", "|", line) for line in section.splitlines() if not line.startswith("- Time:")]


def test_a_resumed_run_recomputes_only_the_lost_conditions_with_the_same_section(small_run):
    from analyses.pag.study import run
    out, text = small_run
    again, kept = rerun_without(out, "pag", ["no CFG-0.pkl", "CFG 7.5 + PAG up 3-0.pkl"], lambda: run(out))
    assert len(kept) == 4
    assert _without_cpu_seconds(again) == _without_cpu_seconds(text)
