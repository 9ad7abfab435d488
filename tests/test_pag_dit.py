"""Perturbed-attention guidance on diffusion transformers: the joint-attention edit against the masked softmax of
diffusers' SD3 PAG, the loop against StableDiffusion3PAGPipeline and against the plain SD3 / Flux pipelines at scale
0, the Flux perturbation against Flux's own processor run with that mask, the layer choice, and the study's
measuring function, on tiny SD3 / FLUX.1-dev pipelines built from their real configs."""
import inspect

import numpy as np
import pytest
import torch

from analyses import pag
from devices import batch_close
from lab.hooks import Context, trace
from tiny_models import TEXT_WIDTH, one_thread, tiny_dit_pipeline  # noqa: F401 (one_thread: autouse fixture)

PROMPTS, SEEDS, MSL = ["a red square", "a blue circle"], [0, 1], 16  # MSL: the T5 window, short to stay fast


@pytest.fixture(scope="module")
def sd3():
    return tiny_dit_pipeline("sd3")


@pytest.fixture(scope="module")
def flux():
    return tiny_dit_pipeline("flux-dev")


def _gens(pipe):
    return [torch.Generator(pipe.device).manual_seed(s) for s in SEEDS]


def _pag_mask(n_image: int, n_text: int, image_first: bool) -> torch.Tensor:
    """diffusers' PAGJointAttnProcessor2_0 mask (S, S): image queries see their own image key and every text key."""
    total = n_image + n_text
    image = slice(0, n_image) if image_first else slice(n_text, total)
    mask = torch.zeros(total, total)
    mask[image, image] = float("-inf")
    mask[image, image].fill_diagonal_(0)
    return mask


@pytest.mark.parametrize("image_first", [True, False], ids=["sd3-order", "flux-order"])
def test_the_image_identity_edit_is_the_masked_softmax_on_the_perturbed_rows_only(image_first):
    scores = torch.randn(2, 3, 7, 7, dtype=torch.float64)  # rows [cond, perturbed], 3 heads, 4 image + 3 text
    probs = scores.softmax(-1)
    ctx = Context("transformer_blocks.0.attn", 0, 0.0, ("cond", "perturbed"), 1, (2, 2))
    out = pag.image_identity(image_first)(probs, ctx)
    torch.testing.assert_close(out[1], (scores[1] + _pag_mask(4, 3, image_first)).softmax(-1))
    torch.testing.assert_close(out[0], probs[0])


def test_the_image_identity_edit_refuses_a_map_without_text_keys():
    ctx = Context("transformer_blocks.0.attn2", 0, 0.0, ("perturbed",), 1, (2, 2))
    with pytest.raises(ValueError, match="4 tokens and an image grid of 4: no text keys"):
        pag.image_identity(True)(torch.rand(1, 2, 4, 4), ctx)


@pytest.mark.parametrize("guidance", [0.0, 5.0])
def test_sd3_at_scale_0_the_images_equal_the_pipelines_exactly(sd3, guidance):
    ours = pag.generate(sd3, PROMPTS, SEEDS, steps=3, guidance=guidance, pag_scale=0.0, height=64, width=64,
                        max_sequence_length=MSL)
    theirs = sd3(PROMPTS, num_inference_steps=3, guidance_scale=guidance, generator=_gens(sd3), height=64, width=64,
                 output_type="np", max_sequence_length=MSL).images
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("layers, applied, guidance", [("mid", ["blocks.1"], 0.0), ("mid", ["blocks.1"], 5.0),
                                                        ("all", ["blocks.0", "blocks.1", "blocks.2"], 5.0)])
def test_sd3_pag_gives_the_images_of_diffusers_stable_diffusion_3_pag_pipeline(sd3, layers, applied, guidance):
    """Measured on the CPU (2026-11): the images differ by at most 5.4e-6 (the perturbed layers run eager float32
    math, diffusers' SDPA), PAG itself moves them by 0.016 (mid) to 0.054 (all): batch_close's 1e-5 holds them."""
    from diffusers import StableDiffusion3PAGPipeline

    assert pag.layers(sd3, layers) == [f"transformer_{a}.attn" for a in applied]  # the layers diffusers perturbs
    ours = pag.generate(sd3, PROMPTS, SEEDS, steps=3, guidance=guidance, pag_scale=3.0, layers=layers, height=64,
                        width=64, max_sequence_length=MSL)
    takes = inspect.signature(StableDiffusion3PAGPipeline).parameters
    ref = StableDiffusion3PAGPipeline(**{k: v for k, v in sd3.components.items() if k in takes},
                                      pag_applied_layers=applied)
    ref.set_progress_bar_config(disable=True)
    theirs = ref(PROMPTS, num_inference_steps=3, guidance_scale=guidance, pag_scale=3.0, generator=_gens(sd3),
                 height=64, width=64, output_type="np", max_sequence_length=MSL).images
    batch_close(torch.from_numpy(ours), torch.from_numpy(theirs))
    plain = pag.generate(sd3, PROMPTS, SEEDS, steps=3, guidance=guidance, pag_scale=0.0, height=64, width=64,
                         max_sequence_length=MSL)
    assert np.abs(ours - plain).max() > 1e-3  # and PAG did change them


def test_flux_at_scale_0_the_images_equal_the_pipelines_exactly(flux):
    ours = pag.generate(flux, PROMPTS, SEEDS, steps=3, guidance=3.5, pag_scale=0.0, height=64, width=64,
                        max_sequence_length=MSL)
    theirs = flux(PROMPTS, num_inference_steps=3, guidance_scale=3.5, generator=_gens(flux), height=64, width=64,
                  output_type="np", max_sequence_length=MSL).images
    assert np.array_equal(ours, theirs)


def test_flux_pag_changes_the_images(flux):
    plain, guided = (pag.generate(flux, PROMPTS, SEEDS, steps=3, guidance=3.5, pag_scale=s, layers="all", height=64,
                                  width=64, max_sequence_length=MSL) for s in (0.0, 3.0))
    assert np.abs(plain - guided).max() > 1e-3


class _Masked:
    """Flux's own attention processor, run with a fixed attention mask (the reference for the perturbed layers)."""

    def __init__(self, orig, mask):
        self.orig, self.mask = orig, mask

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        return self.orig(attn, hidden_states, encoder_hidden_states, self.mask, image_rotary_emb)


@torch.no_grad()
def test_flux_perturbed_layers_equal_fluxs_processor_with_the_sd3_pag_mask(flux):
    transformer, names = flux.transformer, pag.layers(flux, "all")  # double- and single-stream blocks
    assert any(n.startswith("single_") for n in names) and any(n.startswith("transformer_blocks") for n in names)
    g = torch.Generator().manual_seed(0)
    kw = dict(hidden_states=torch.randn(1, 16, transformer.config.in_channels, generator=g),  # a 4x4 token grid
              encoder_hidden_states=torch.randn(1, 8, transformer.config.joint_attention_dim, generator=g),
              pooled_projections=torch.randn(1, TEXT_WIDTH, generator=g), timestep=torch.tensor([0.6]),
              guidance=torch.tensor([3.5]))
    kw = {k: torch.cat([v, v]).to(transformer.device) for k, v in kw.items()}  # rows [cond, perturbed]
    kw.update(txt_ids=torch.zeros(8, 3, device=transformer.device),
              img_ids=flux._prepare_latent_image_ids(1, 4, 4, transformer.device, torch.float32))
    with trace(transformer, [], edits={n: pag.image_identity(False) for n in names}, branches=("cond", "perturbed")):
        ours = transformer(**kw, return_dict=False)[0]  # (2, 16, 64)
    plain = transformer(**kw, return_dict=False)[0]
    mask = torch.stack([torch.zeros(24, 24), _pag_mask(16, 8, image_first=False)])[:, None]  # (2, 1, S, S)
    modules = dict(transformer.named_modules())
    origs = {n: modules[n].processor for n in names}
    try:
        for n in names:
            modules[n].processor = _Masked(origs[n], mask.to(transformer.device))
        theirs = transformer(**kw, return_dict=False)[0]
    finally:
        for n in names:
            modules[n].processor = origs[n]
    batch_close(ours, theirs)
    batch_close(ours[0], plain[0])  # the cond row is left as it is
    assert (ours[1] - plain[1]).abs().max() > 1e-4  # and the perturbed one is not


def test_dit_layer_groups_and_block_names(sd3, flux):
    assert pag.groups(sd3) == ("mid", "all")
    assert pag.layers(sd3, "all") == [f"transformer_blocks.{i}.attn" for i in range(3)]
    assert pag.layers(sd3, ["transformer_blocks.2", "transformer_blocks.0.attn"]) == [
        "transformer_blocks.0.attn", "transformer_blocks.2.attn"]
    assert pag.layers(flux, "mid") == ["single_transformer_blocks.0.attn"]  # the middle of 2 double + 2 single


def test_an_unknown_dit_layer_is_refused_naming_the_valid_ones(sd3):
    with pytest.raises(ValueError, match=r"layer 'up' is not a joint-attention layer of this SD3Transformer2DModel; "
                                         r"valid: mid, all, or one of: transformer_blocks\.0, "):
        pag.generate(sd3, PROMPTS, SEEDS, steps=1, pag_scale=0.0, layers="up", height=64, width=64)


def test_the_studys_measuring_function_runs_on_sd3_with_its_layer_choices(sd3):
    from analyses.pag.score import scenes
    from analyses.pag.study import Condition, conditions, measure_batch

    assert {c.layers for c in conditions("sd3")} == {"mid", "all"}
    out = measure_batch(sd3, Condition(5.0, 3.0, "mid"), scenes(2), steps=2, keep_images=True)
    assert len(out["verdicts"]) == 2 and out["images"].shape == (2, 64, 64, 3)
    assert out["images"].dtype == np.uint8
