"""DAAM maps on the built-in model: the method against a plain reference, slices, guidance, batches, open vocabulary,
errors, and a capture that leaves the pipeline as it was. Few steps; nothing depends on the model's quality."""
import pytest
import torch
import torch.nn.functional as F

from analyses import daam
from lab.hooks import Cache
from devices import batch_close
from tiny_models import one_thread  # noqa: F401  (one CPU thread for this module)

PROMPTS = ["a small red hexagon to the left of a large blue trapezoid on a white background",
           "a hexagon, a hexagon and a circle"]
STEPS = 3


@pytest.fixture(scope="module")
def pipe(shapes_pipe):
    return shapes_pipe  # the built-in model, loaded once per session (tests/conftest.py)


@pytest.fixture(scope="module")
def run(pipe):
    return daam.generate(pipe, PROMPTS, seed=5, steps=STEPS, slices=True, mid=True, queries=True, head_steps="all")


@pytest.fixture(scope="module")
def summed(pipe):
    return daam.generate(pipe, PROMPTS, seed=5, steps=STEPS)


def reference(cache, batch, names, steps=None, heads=None, branch="cond"):
    """DAAM written out plainly: for each layer and head, sum the steps, upsample bicubically, clamp; then average.
    `cache` keeps every head at every step (run.heads)."""
    latent = tuple(cache.meta["latent_size"])
    maps = []
    for name in names:
        t = cache.take(name, branch=branch, batch=batch)  # (step, head, q, k)
        idx = [cache.meta["steps"].index(s) for s in steps] if steps is not None else list(range(t.shape[0]))
        h, w = cache.resolution(name)
        for head in (heads if heads is not None else range(t.shape[1])):
            m = t[idx, head].sum(0)  # (q, k)
            m = m.T.reshape(1, -1, h, w)  # (1, k, h, w)
            maps.append(F.interpolate(m, size=latent, mode="bicubic", align_corners=False).clamp(min=0)[0])
    return torch.stack(maps).mean(0)  # (k, H, W)


def test_global_maps_equal_a_plain_reference(run):
    names = daam.layer_names(run)
    assert not any(n.startswith("mid_block") for n in names)  # published default: down and up blocks
    g = daam.global_maps(run, batch=0)
    assert g.maps.shape == (77, 16, 16) and not g.heads_averaged
    torch.testing.assert_close(g.maps, reference(run.heads, 0, names), atol=1e-6, rtol=1e-5)


def test_summed_capture_equals_every_step_summed_afterwards(run, summed):
    assert "step" not in summed.cache.axes[daam.layer_names(summed.cache)[0]]
    batch_close(daam.global_maps(summed.cache, batch=1).maps, daam.global_maps(run.heads, batch=1).maps)


def test_word_maps_cover_every_word_at_image_size_in_unit_range(run, pipe):
    g = daam.global_maps(run, batch=0)
    maps = daam.word_maps(g, pipe)
    assert list(maps) == ["a", "small", "red", "hexagon", "to", "the", "left", "of", "large", "blue", "trapezoid",
                          "on", "white", "background"]
    for m in maps.values():
        assert m.shape == (128, 128) and m.min() == 0 and abs(float(m.max()) - 1) < 1e-6
    mask = daam.binarize(maps["hexagon"], 0.4)
    assert mask.dtype == torch.bool and 0 < mask.sum() < 128 * 128
    assert daam.word_map(g, pipe, "hexagon", size=64).shape == (64, 64)


def test_multi_token_word_is_the_mean_of_its_tokens(run, pipe):
    g = daam.global_maps(run, batch=0)
    expected = daam.expand((g.token(4) + g.token(5)) / 2, 128)  # 'hex', 'agon</w>'
    torch.testing.assert_close(daam.word_map(g, pipe, "hexagon"), expected)


def test_repeated_word_averages_occurrences_unless_one_is_chosen(run, pipe):
    g = daam.global_maps(run, batch=1)  # "a hexagon, a hexagon and a circle"
    first, second = (daam.word_map(g, pipe, "hexagon", occurrence=i, normalize=False) for i in (0, 1))
    both = daam.word_map(g, pipe, "hexagon", normalize=False)
    torch.testing.assert_close(both, (first + second) / 2, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(first, second)


def test_head_slices_average_to_all_heads(run):
    parts = [daam.global_maps(run, heads=[h]).maps for h in (0, 1)]
    torch.testing.assert_close((parts[0] + parts[1]) / 2, daam.global_maps(run).maps, atol=1e-6, rtol=1e-5)


def test_resolution_slices_combine_by_layer_count(run):
    n16, n8 = (len(daam.layer_names(run, resolution=r)) for r in (16, 8))
    g16, g8 = (daam.global_maps(run, resolution=r).maps for r in (16, 8))
    torch.testing.assert_close((n16 * g16 + n8 * g8) / (n16 + n8), daam.global_maps(run).maps,
                               atol=1e-6, rtol=1e-5)


def test_step_layer_and_branch_slices_match_the_reference(run):
    name = "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
    g = daam.global_maps(run, batch=1, steps=[1, 2], layers=[name], heads=1, branch="uncond")
    assert g.steps == (1, 2) and g.layers == (name,) and g.heads == (1,) and g.branch == "uncond"
    torch.testing.assert_close(g.maps, reference(run.heads, 1, [name], [1, 2], [1], "uncond"))
    mid = daam.global_maps(run, blocks=("down", "mid", "up"))
    assert any(n.startswith("mid_block") for n in mid.layers)
    assert not torch.allclose(daam.global_maps(run, steps=[0]).maps, daam.global_maps(run).maps)


def test_guidance_off_has_one_branch(pipe):
    r = daam.generate(pipe, "a red circle on a black background", steps=2, guidance=1.0, slices=True)
    assert r.cache.meta["branches"] == ["cond"]
    assert daam.word_map(daam.global_maps(r.cache), pipe, "circle").shape == (128, 128)
    with pytest.raises(ValueError, match="branch 'uncond' was not captured; captured: cond"):
        daam.global_maps(r.cache, branch="uncond")


def test_an_image_in_a_batch_has_the_maps_it_has_alone(pipe, summed):
    alone = daam.generate(pipe, PROMPTS[1], seed=6, steps=STEPS)  # seed 5 + 1: prompt 1's seed in the batch
    batch_close(daam.global_maps(alone.cache).maps, daam.global_maps(summed.cache, batch=1).maps)
    assert daam.global_maps(summed.cache, batch=1).prompt == PROMPTS[1]


def test_open_vocabulary_map_of_the_prompt_reproduces_daam(run, pipe):
    for batch in (0, 1):
        ov = daam.open_vocab(run.queries, pipe, PROMPTS[batch], batch=batch)
        torch.testing.assert_close(ov.maps, daam.global_maps(run, batch=batch).maps, atol=1e-5, rtol=1e-4)
    sliced = dict(steps=[0, 2], heads=[1], resolution=8)
    torch.testing.assert_close(daam.open_vocab(run.queries, pipe, PROMPTS[0], **sliced).maps,
                               daam.global_maps(run, **sliced).maps, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(daam.word_map(daam.open_vocab(run.queries, pipe, PROMPTS[0]), pipe, "trapezoid"),
                               daam.word_map(daam.global_maps(run), pipe, "trapezoid"), atol=1e-4, rtol=1e-4)


def test_open_vocabulary_map_of_a_word_not_in_the_prompt(run, pipe):
    m = daam.word_map(daam.open_vocab(run.queries, pipe, "a purple square"), pipe, "square")
    assert m.shape == (128, 128) and m.min() == 0 and abs(float(m.max()) - 1) < 1e-6
    with pytest.raises(ValueError, match="no queries were kept"):
        daam.open_vocab(None, pipe, "a square")


def test_errors_name_the_bad_value_and_the_valid_ones(run, summed, pipe):
    g = daam.global_maps(run)
    with pytest.raises(ValueError, match="word 'dgo' is not in the prompt 'a small red hexagon .*'; words: a, small"):
        daam.word_map(g, pipe, "dgo")
    with pytest.raises(ValueError, match="summed its steps.*slices=True"):
        daam.global_maps(summed.cache, steps=[0])
    with pytest.raises(ValueError, match="no captured cross-attention layer matches.*16x16"):
        daam.global_maps(run, resolution=32)
    with pytest.raises(ValueError, match="head 2 is out of range .* 2 heads"):
        daam.global_maps(run, heads=[2])
    with pytest.raises(ValueError, match="step 9 was not captured; captured steps: 0..2"):
        daam.global_maps(run, steps=[9])
    with pytest.raises(ValueError, match="batch=2 is out of range: the run had 2 images"):
        daam.global_maps(run, batch=2)


def test_an_empty_prompt_generates_but_has_no_words_to_map(pipe):
    r = daam.generate(pipe, "", steps=1)
    with pytest.raises(ValueError, match="the prompt '' is empty: it has no words to map"):
        daam.word_maps(daam.global_maps(r.cache), pipe)
    with pytest.raises(ValueError, match="the prompt '' is empty"):
        daam.word_map(daam.global_maps(r.cache), pipe, "dog")


def test_capture_checks_the_prompt_it_was_given(pipe):
    with pytest.raises(ValueError, match="was given the prompt 'a dog' but the pipeline encoded 'a cat'"):
        with daam.capture(pipe, "a dog"):
            pipe("a cat", num_inference_steps=1, output_type="np")


def test_capture_leaves_the_pipeline_as_it_was(pipe):
    procs = {n: m.processor for n, m in pipe.unet.named_modules() if hasattr(m, "processor")}
    with pytest.raises(RuntimeError, match="boom"):
        with daam.capture(pipe, "a dog", slices=True, queries=True):
            raise RuntimeError("boom")
    with daam.capture(pipe, "a dog", queries=True):
        pipe("a dog", num_inference_steps=1, output_type="np")
    assert procs == {n: m.processor for n, m in pipe.unet.named_modules() if hasattr(m, "processor")}
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in pipe.unet.modules())


def test_query_capture_refuses_what_exceeds_max_bytes(pipe):
    with daam.capture(pipe, "a dog") as cap:  # what the maps alone take: the queries of 20 steps take more
        pipe("a dog", num_inference_steps=1, output_type="np")
    maps_bytes = sum(t.numel() * 4 for t in cap.cache.values())
    one_step = daam.capture_sizes(pipe, 128, 20, queries=True, query_steps=[10])["queries"]
    with pytest.raises(MemoryError, match=r"over max_bytes=.* nearest capture that fits: "
                                          r"capture\(\.\.\., queries=True, query_steps=\[10\]\)"):
        with daam.capture(pipe, "a dog", queries=True, max_bytes=maps_bytes + one_step):
            pipe("a dog", num_inference_steps=20, output_type="np")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in pipe.unet.modules())


def test_queries_at_chosen_steps(pipe):
    with daam.capture(pipe, "a dog", queries=True, query_steps=[1]) as cap:
        pipe("a dog", num_inference_steps=3, output_type="np")
    assert cap.queries.meta["steps"] == [1]
    with pytest.raises(ValueError, match=r"step 0 has no kept queries; kept steps: \[1\]"):
        daam.open_vocab(cap.queries, pipe, "a dog", steps=[0])


def test_a_saved_cache_gives_the_same_maps(run, tmp_path, pipe):
    loaded = Cache.load(run.slices.save(tmp_path / "run.safetensors"))
    torch.testing.assert_close(daam.global_maps(loaded, batch=1, steps=[1]).maps,
                               daam.global_maps(run.slices, batch=1, steps=[1]).maps)
    assert daam.global_maps(loaded).prompt == PROMPTS[0]


def test_relative_maps_divide_by_the_sum_of_the_prompt_tokens(run, pipe):
    g = daam.global_maps(run, batch=0)
    n = len(pipe.tokenizer.tokenize(PROMPTS[0]))
    total = sum(g.token(t) for t in range(1, n + 1))
    expected = daam.expand(((g.token(4) + g.token(5)) / 2) / (total + 1e-6), 128)
    torch.testing.assert_close(daam.word_map(g, pipe, "hexagon", relative=True), expected)
    torch.testing.assert_close(daam.word_maps(g, pipe, relative=True)["hexagon"], expected)
