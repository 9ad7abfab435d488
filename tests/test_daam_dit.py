"""DAAM through the same front door on tiny SD3.5-medium and FLUX.1-dev pipelines: daam.generate / global_maps /
word_map / capture_sizes as for UNets, maps from the image->text views, words through both text encoders."""
import pytest
import torch

from tiny_models import one_thread, tiny_dit_pipeline  # noqa: F401 (one_thread: autouse fixture)

from analyses import daam
from analyses.daam import dit

PROMPT = "a red square next to a blue circle"
LONG = "a red square " + "and a blue circle " * 4 + "with a green triangle"


@pytest.fixture(scope="module", params=["sd35m", "flux-dev"])
def pipe(request):
    return tiny_dit_pipeline(request.param)


def sd3(pipe):
    return hasattr(pipe, "text_encoder_3")


def run_of(pipe, prompt=PROMPT, steps=2, **kw):
    return daam.generate(pipe, prompt, seed=0, steps=steps, height=64, width=64, max_sequence_length=16, **kw)


@pytest.fixture(scope="module")
def run(pipe):
    return run_of(pipe, slices=True, head_steps="all")


def test_every_joint_layer_is_aggregated_on_one_grid(pipe, run):
    assert list(run.cache) == dit.layers(pipe) == daam.daam_layers(pipe)
    if not sd3(pipe):
        assert any(n.startswith("single_transformer_blocks.") for n in run.cache)  # both streams' blocks
    g = daam.global_maps(run)
    assert g.maps.shape == (run.cache.meta["text_tokens"], 4, 4)  # (keys, h, w): the 4x4 token grid of 64 px
    assert g.image_size == (64, 64) and g.layers == tuple(run.cache) and not g.heads_averaged
    assert (g.maps >= 0).all() and g.maps.sum() > 0


def test_word_maps_use_every_encoder_that_holds_the_word(pipe, run):
    g = daam.global_maps(run)
    m = daam.word_map(g, pipe, "square")
    assert m.shape == (64, 64) and float(m.min()) == 0.0 and abs(float(m.max()) - 1.0) < 1e-4
    found = dit.align(g, pipe, "square")
    if sd3(pipe):
        assert found.encoders == ("clip", "t5") and found.keys == (3, 77 + 2)  # CLIP: <start> a red square; T5
    else:
        assert found.encoders == ("t5",) and found.keys == (2,)
    assert set(daam.word_maps(g, pipe)) == {"a", "red", "square", "next", "to", "blue", "circle"}


def test_slices_by_step_head_and_block_recombine_into_the_published_maps(pipe, run):
    whole = daam.global_maps(run).maps
    by_step = daam.global_maps(run, steps=[0]).maps + daam.global_maps(run, steps=[1]).maps
    torch.testing.assert_close(by_step, whole, atol=1e-5, rtol=1e-5)
    heads = pipe.transformer.config.num_attention_heads
    by_head = sum(daam.global_maps(run, heads=h).maps for h in range(heads)) / heads
    torch.testing.assert_close(by_head, whole, atol=1e-5, rtol=1e-5)
    if not sd3(pipe):
        n = {b: len(dit.layers(pipe, b)) for b in ("double", "single")}
        by_block = sum(daam.global_maps(run, blocks=b).maps * n[b] for b in n) / sum(n.values())
        torch.testing.assert_close(by_block, whole, atol=1e-5, rtol=1e-5)
    first = daam.global_maps(run, layers=list(run.cache)[:1])
    assert first.layers == tuple(run.cache)[:1] and not torch.allclose(first.maps, whole)


def test_the_default_capture_averages_heads_and_gives_the_same_maps(pipe, run):
    light = run_of(pipe)
    assert "head" not in light.cache.axes[next(iter(light.cache))] and light.slices is None
    torch.testing.assert_close(daam.global_maps(light).maps, daam.global_maps(run).maps, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="head_steps="):
        daam.global_maps(light, heads=0)
    with pytest.raises(ValueError, match="unknown block 'up'; blocks: double, single"):
        daam.global_maps(light, blocks="up")


def test_capture_sizes_predict_the_bytes_kept(pipe, run):
    keys = run.cache.meta["text_tokens"]
    sizes = daam.capture_sizes(pipe, 64, steps=2, prompt=PROMPT, keys=keys, slices=True, head_steps="all")
    for role in ("cache", "slices", "heads"):
        assert sizes[role] == sum(t.nbytes for t in getattr(run, role).values()), role


def test_prompt_tokens_are_kept_in_each_window(pipe):
    run = run_of(pipe, steps=1, slices=True, tokens="prompt")
    kept = run.slices.meta["keep"]["tokens"]
    t5 = [0, 1, 2, 3, 4, 5, 6, 7, 8]  # a red square next to a blue circle </s>
    assert kept == ([*range(10), *(77 + t for t in t5)] if sd3(pipe) else t5)  # CLIP: <start> ... <end>
    g = daam.global_maps(run, steps=[0])  # from the slices: only those keys
    torch.testing.assert_close(daam.word_map(g, pipe, "circle"),
                               daam.word_map(daam.global_maps(run), pipe, "circle"), atol=1e-5, rtol=1e-4)


def test_a_word_past_the_t5_window_is_mapped_from_clip_and_says_so(pipe):
    if not sd3(pipe):
        pytest.skip("Flux has one text window (T5)")
    g = daam.global_maps(run_of(pipe, LONG, steps=1))
    with pytest.warns(UserWarning, match="mapped without T5: 'triangle' is past the T5 window \\(16 keys"):
        m = daam.word_map(g, pipe, "triangle")
    assert m.shape == (64, 64) and dit.align(g, pipe, "triangle").encoders == ("clip",)


def test_a_word_in_no_window_is_refused_naming_the_windows(pipe):
    if sd3(pipe):
        pytest.skip("SD3's CLIP window holds the whole prompt")
    g = daam.global_maps(run_of(pipe, LONG, steps=1))
    with pytest.raises(ValueError, match="'triangle' is in no text encoder's window: .*past the T5 window"):
        daam.word_map(g, pipe, "triangle")
    with pytest.raises(ValueError, match="'zebra' is not in the prompt"):
        daam.word_map(g, pipe, "zebra")
    assert "triangle" not in daam.word_maps(g, pipe) and "square" in daam.word_maps(g, pipe)


def test_a_capture_over_budget_is_refused_before_step_0_with_one_that_fits(pipe):
    with pytest.raises(MemoryError, match=r"The nearest capture that fits: capture\(\.\.\., .*\)"):
        run_of(pipe, slices=True, head_steps="all", max_bytes=40_000)


def test_open_vocabulary_queries_are_refused_on_a_dit(pipe):
    with pytest.raises(NotImplementedError, match="queries=True .* not available on diffusion transformers"):
        run_of(pipe, queries=True)


def test_the_figures_draw_a_dit_run(pipe, run):
    from matplotlib.figure import Figure

    from analyses.daam import plot

    fig = plot.layer_step_grid(run, pipe, "circle", run.images[0], n_groups=2)
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels[0] == "d0" and labels[-1] == "published"
    assert isinstance(plot.view(run, pipe, run.images[0], "red", steps=[1], heads=[0]), Figure)


def test_the_explorer_capture_runs_on_a_dit(pipe):
    run = run_of(pipe, steps=2, **daam.explorer_options(2, pipe))
    assert run.heads is not None and run.slices is not None and run.queries is None
    assert daam.word_map(daam.global_maps(run, steps=[1], heads=0), pipe, "red").shape == (64, 64)


def test_the_explorer_offers_and_draws_every_layer_choice_of_a_dit(pipe, run):
    from analyses.daam.widgets import Explorer, layer_options

    labels = [label for label, _ in layer_options(run)]
    assert labels[0] == "every joint layer (published)" and "down+up (published)" not in labels
    ex = Explorer(run, pipe, run.images[0])
    for label in labels[:3]:
        fig = ex.update(word="red", steps=(0, 1), layer=label, head="all", branch="cond", tau=0.4)
        assert fig is not None and ex.message.value == "", ex.message.value


def test_relative_maps_divide_by_every_prompt_token_of_each_window(pipe, run):
    g = daam.global_maps(run)
    keys = dit.prompt_keys(g, pipe)
    assert keys == ([*range(1, 9), *range(77, 85)] if sd3(pipe) else list(range(8)))  # 8 tokens, no start / end
    rel = daam.word_map(g, pipe, "square", relative=True)
    assert rel.shape == (64, 64) and not torch.allclose(rel, daam.word_map(g, pipe, "square"))
