"""Layer sensitivity and feature reuse on diffusion transformers: noise on a block's image (or text) stream, and a
span of blocks skipped with its last residual added back, on tiny SD3 and FLUX.1-schnell pipelines built from their
real configs (SD3: 3 joint blocks, the last without a text output; Flux: 2 double- and 2 single-stream blocks)."""
import numpy as np
import pytest
import torch

from analyses import clockwork
from analyses.clockwork import study
from lab.hooks import select
from tiny_models import one_thread, tiny_dit_pipeline  # noqa: F401 (one_thread: autouse fixture)

PROMPTS, SEEDS = ["a red square", "a blue circle"], [0, 1]
SMALL = dict(height=64, width=64, max_sequence_length=16)


@pytest.fixture(scope="module", params=["sd3", "flux-schnell"])
def pipe(request):
    return tiny_dit_pipeline(request.param)


def _generate(pipe, steps=4):
    gens = [torch.Generator(pipe.device).manual_seed(s) for s in SEEDS]
    return pipe(PROMPTS, num_inference_steps=steps, generator=gens, output_type="np", **SMALL).images


def _tail(pipe):
    """Every block but the first: a span whose end is SD3's text-less last block, or that crosses Flux's double- /
    single-stream boundary."""
    return select(pipe, kind="block")[1:]


def test_with_r_0_every_perturbed_row_is_the_plain_image_bit_for_bit(pipe):
    first, last = select(pipe, kind="block")[0], select(pipe, kind="block")[-1]
    plan = [clockwork.Perturbation(first, 0, 0.0), clockwork.Perturbation(last, 1, 0.0),
            clockwork.Perturbation(f"{first}:text", 0, 0.0)]
    out = clockwork.perturbed(pipe, PROMPTS, SEEDS, 2, plan, **SMALL)
    for p in plan:
        assert np.array_equal(out[p], out["plain"]), p


def test_noise_on_the_text_stream_is_an_option_and_moves_the_image(pipe):
    p = clockwork.Perturbation("transformer_blocks.0:text", 0, 2.0)
    assert p.block in clockwork.perturbable(pipe)
    out = clockwork.perturbed(pipe, PROMPTS[:1], SEEDS[:1], 2, [p], **SMALL)
    assert clockwork.moved(out["plain"][0], out[p][0])["pixel rms"] > 0


def test_sensitivity_is_a_finite_block_x_step_table_whose_rows_are_the_dits_blocks(pipe):
    blocks, rms, changed = study.sensitivity(pipe, n=1, steps=2, **SMALL)
    assert blocks == select(pipe, kind="block")  # forward order; Flux: double-stream, then single-stream
    assert any(b.startswith("single_transformer_blocks.") for b in blocks) == ("Flux" in type(pipe).__name__)
    assert rms.shape == changed.shape == (len(blocks), 2)
    assert np.isfinite(rms).all() and rms.max() > 0


def test_the_default_span_is_the_middle_of_the_blocks(pipe):
    expected = {"StableDiffusion3Pipeline": ["transformer_blocks.1"],
                "FluxPipeline": ["transformer_blocks.1", "single_transformer_blocks.0"]}[type(pipe).__name__]
    assert clockwork.middle_blocks(pipe) == clockwork.reusable_blocks(pipe) == expected
    assert clockwork.group_name(pipe) == "middle blocks"


def test_a_span_reusing_nothing_gives_the_plain_images_exactly(pipe):
    plain = _generate(pipe)
    with clockwork.reuse(pipe, _tail(pipe), clockwork.every(1, 4)) as stats:
        wrapped = _generate(pipe)
    assert np.array_equal(plain, wrapped)
    assert all((s.ran, s.reused) == (4, 0) for s in stats.values())


def test_a_reused_span_does_not_run_on_the_reused_steps(pipe):
    span, blocks = _tail(pipe), select(pipe, kind="block")
    modules = dict(pipe.transformer.named_modules())
    calls = {b: 0 for b in blocks}
    handles = [modules[f"{b}.attn"].register_forward_hook(lambda m, a, o, b=b: calls.__setitem__(b, calls[b] + 1))
               for b in blocks]  # the blocks' compute (hooks on a block itself see the reused output)
    try:
        with clockwork.reuse(pipe, span, clockwork.every(2, 4)) as stats:
            reused = _generate(pipe)
    finally:
        for h in handles:
            h.remove()
    assert calls == {b: 2 if b in span else 4 for b in blocks}
    assert all((s.ran, s.reused) == (2, 2) for s in stats.values())
    assert not np.array_equal(reused, _generate(pipe))


def test_span_reuse_is_diffusers_first_block_cache_when_that_never_recomputes():
    """First Block Cache runs the first block and, when its residual changed little, adds the rest's last residual:
    with a threshold it never reaches, that is reusing every block but the first on every step but 0."""
    from diffusers.hooks import FirstBlockCacheConfig

    pipe = tiny_dit_pipeline("flux-schnell")  # diffusers' SD3 pipeline runs no cache_context for it
    with clockwork.reuse(pipe, _tail(pipe), range(1, 4)):
        ours = _generate(pipe)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=1e9))
    try:
        theirs = _generate(pipe)
    finally:
        pipe.transformer.disable_cache()
    assert np.array_equal(ours, theirs)
    assert not np.array_equal(ours, _generate(pipe))


def test_blocks_that_are_not_one_span_are_refused_naming_a_span(pipe):
    blocks = select(pipe, kind="block")
    with pytest.raises(ValueError, match=r"one span of consecutive blocks in forward order .* e\.g\. transformer_bl"):
        with clockwork.reuse(pipe, [blocks[0], blocks[2]], [1]):
            pass
    with pytest.raises(ValueError, match=r"'mid_block' is not a block of this transformer; blocks: transformer_bl"):
        with clockwork.reuse(pipe, ["mid_block"], [1]):
            pass


def test_the_span_is_put_back_also_after_an_error(pipe):
    modules = dict(pipe.transformer.named_modules())
    with pytest.raises(RuntimeError, match="boom"):
        with clockwork.reuse(pipe, _tail(pipe), [1]):
            raise RuntimeError("boom")
    for b in select(pipe, kind="block"):
        assert "forward" not in vars(modules[b]) and not modules[b]._forward_pre_hooks, b


def test_the_studys_measuring_functions_and_report_run_on_a_tiny_sd3():
    pipe = tiny_dit_pipeline("sd3")
    sens = study.sensitivity(pipe, n=1, steps=2, **SMALL)
    rows, images, share = study.reuse_runs(pipe, n=1, steps=3, **SMALL)
    assert list(rows) == ["plain", "middle blocks, run every 2"] and list(share) == ["transformer_blocks.1"]
    assert 0 < rows["middle blocks, run every 2"]["saved estimated"] < 1 and images["plain"].shape == (1, 64, 64, 3)
    info = {"n_sens": 1, "steps_sens": 2, "n_reuse": 1, "steps_reuse": 3, "size": "small", "total": 1.0,
            "resolutions": {b: "4x4" for b in sens[0]}, "family": "sd3"}
    text = study.section(sens, rows, share, info)
    assert "| transformer_blocks.2 | 4x4 |" in text and "transformer time saved" in text
    assert "Goal: `middle blocks, run every 2`" in text and "UNet" not in text
