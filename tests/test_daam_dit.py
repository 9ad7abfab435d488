"""DAAM on tiny SD3.5-medium and FLUX.1-dev pipelines: maps from the image->text views, words through both encoders."""
import pytest
import torch

from tiny_models import one_thread, tiny_dit_pipeline  # noqa: F401 (one_thread: autouse fixture)

from analyses.daam import dit

PROMPT = "a red square next to a blue circle"


@pytest.fixture(scope="module", params=["sd35m", "flux-dev"])
def pipe(request):
    return tiny_dit_pipeline(request.param)


@pytest.fixture(scope="module")
def run(pipe):
    return dit.generate(pipe, PROMPT, seed=0, steps=2, size=64, slices=True, heads=True, max_sequence_length=16)


def test_every_joint_layer_is_aggregated_on_one_grid(pipe, run):
    names = dit.layers(pipe)
    assert list(run.cache) == names and all(n.endswith(".attn:image->text") for n in names)
    if pipe.transformer.__class__.__name__.startswith("Flux"):
        assert any(n.startswith("single_transformer_blocks.") for n in names)  # both streams' blocks
    g = dit.global_maps(run)
    assert g.shape == (run.cache.meta["text_tokens"], 4, 4)  # (keys, h, w): the 4x4 token grid of 64 px
    assert torch.allclose(g.sum(0).sum(), g.sum(), atol=1e-4) and (g >= 0).all()


def test_word_maps_use_every_encoder_that_holds_the_word(pipe, run):
    m = dit.word_map(run, pipe, "square")
    assert m.heat.shape == (64, 64) and float(m.heat.min()) == 0.0 and abs(float(m.heat.max()) - 1.0) < 1e-6
    if hasattr(pipe, "text_encoder_3"):  # SD3
        assert m.encoders == ("clip", "t5") and m.keys == (3, 77 + 2)  # CLIP: <start> a red square; T5: a red square
    else:
        assert m.encoders == ("t5",) and m.keys == (2,)


def test_slices_by_step_head_and_block_sum_to_the_published_maps(run):
    whole = dit.global_maps(run)
    steps = dit.global_maps(run, steps=[0]) + dit.global_maps(run, steps=[1])
    torch.testing.assert_close(steps, whole, atol=1e-5, rtol=1e-5)
    heads = run.cache[next(iter(run.cache))].shape[-3]
    per_head = sum(dit.global_maps(run, heads=[h]) for h in range(heads)) / heads
    torch.testing.assert_close(per_head, whole, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(dit.global_maps(run, layers_=list(run.cache)[:1]), whole)


def test_the_default_capture_averages_heads_and_gives_the_same_maps(pipe, run):
    light = dit.generate(pipe, PROMPT, seed=0, steps=2, size=64, max_sequence_length=16)
    assert "head" not in light.cache.axes[next(iter(light.cache))]
    torch.testing.assert_close(dit.global_maps(light), dit.global_maps(run), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="heads=True"):
        dit.global_maps(light, heads=[0])


def test_a_word_past_the_t5_window_is_mapped_from_clip_and_says_so(pipe):
    if not hasattr(pipe, "text_encoder_3"):
        pytest.skip("Flux has one text window (T5)")
    long = "a red square " + "and a blue circle " * 4 + "with a green triangle"
    run = dit.generate(pipe, long, seed=0, steps=1, size=64, max_sequence_length=16)
    m = dit.word_map(run, pipe, "triangle")
    assert m.encoders == ("clip",) and "past the T5 window (16 keys" in m.note


def test_a_word_in_no_window_is_refused_naming_the_windows(pipe):
    long = "a red square " + "and a blue circle " * 4 + "with a green triangle"
    if hasattr(pipe, "text_encoder_3"):
        pytest.skip("SD3's CLIP window holds the whole prompt")
    run = dit.generate(pipe, long, seed=0, steps=1, size=64, max_sequence_length=16)
    with pytest.raises(ValueError, match="'triangle' is in no text encoder's window: .*past the T5 window"):
        dit.word_map(run, pipe, "triangle")
    with pytest.raises(ValueError, match="'zebra' is not in the prompt"):
        dit.word_map(run, pipe, "zebra")
