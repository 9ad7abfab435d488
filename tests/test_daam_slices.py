"""DAAM's views of one run on the built-in model: the published maps, every step with heads averaged (the slices),
every head at chosen steps or layers; which cache answers which slice; the prompt's keys only; float16 storage; a
capture over max_bytes refused before step 0 with options that fit, pasteable."""
import re

import pytest
import torch

from analyses import daam
from tiny_models import one_thread  # noqa: F401  (one CPU thread for this module)

PROMPT = "a small red hexagon to the left of a large blue trapezoid on a white background"
STEPS = 3


@pytest.fixture(scope="module")
def pipe(shapes_pipe):
    return shapes_pipe  # the built-in model, loaded once per session (tests/conftest.py)


@pytest.fixture(scope="module")
def run(pipe):
    """Every view: slices (heads averaged), every head at every step, and the published maps."""
    return daam.generate(pipe, PROMPT, seed=2, steps=STEPS, slices=True, mid=True, head_steps="all")


@pytest.fixture(scope="module")
def explorer(pipe):
    """The notebook explorer's capture: slices of the prompt's keys, heads and queries at the middle step."""
    return daam.generate(pipe, PROMPT, seed=2, steps=STEPS, **daam.explorer_options(STEPS))


def test_slices_keep_every_step_and_branch_with_heads_averaged(run):
    name = daam.layer_names(run)[0]
    assert run.slices.axes[name] == ("step", "branch", "batch", "query", "key")
    assert run.slices.meta["steps"] == [0, 1, 2] and run.slices.meta["branches"] == ["cond", "uncond"]
    torch.testing.assert_close(run.slices[name], run.heads[name].mean(dim=3), atol=1e-7, rtol=1e-6)


def test_head_averaged_slices_equal_the_method_at_the_latent_resolution(run):
    exact = daam.global_maps(run.heads, steps=[1, 2], resolution=16)
    averaged = daam.global_maps(run.slices, steps=[1, 2], resolution=16)  # nothing upsampled: nothing clamped
    assert averaged.heads_averaged and not exact.heads_averaged
    torch.testing.assert_close(averaged.maps, exact.maps, atol=1e-6, rtol=1e-5)


def test_head_averaged_slices_are_close_to_the_method_over_every_layer(run, pipe):
    for steps, branch in (([0], "cond"), ([1, 2], "uncond"), (None, "cond")):
        exact = daam.global_maps(run.heads, steps=steps, branch=branch, blocks=None)
        averaged = daam.global_maps(run.slices, steps=steps, branch=branch, blocks=None)
        assert (averaged.maps <= exact.maps + 1e-6).all()  # a clamped mean is at most the mean of clamped heads
        gap = exact.maps - averaged.maps  # measured: at most 4% of the maximum, 0.13% of the mean on average
        assert gap.max() <= 0.05 * exact.maps.max() and gap.mean() <= 0.005 * exact.maps.mean()
        for word in ("hexagon", "trapezoid", "red"):
            a, b = daam.word_map(averaged, pipe, word), daam.word_map(exact, pipe, word)
            assert (a - b).abs().max() < 0.05  # measured: 0.044 at most
            assert (daam.binarize(a) == daam.binarize(b)).float().mean() > 0.99  # measured: >= 99.7% of pixels


def test_a_run_reads_each_slice_from_the_cache_that_holds_it(run):
    published = daam.global_maps(run)
    assert not published.heads_averaged
    assert torch.equal(published.maps, daam.global_maps(run.cache).maps)  # all steps, cond: the published cache
    assert torch.equal(daam.global_maps(run, heads=[0]).maps, daam.global_maps(run.cache, heads=[0]).maps)
    stepped = daam.global_maps(run, steps=[1], branch="uncond")  # every head was kept there: exact
    assert not stepped.heads_averaged
    assert torch.equal(stepped.maps, daam.global_maps(run.heads, steps=[1], branch="uncond").maps)


def test_without_every_head_a_step_slice_is_head_averaged(explorer):
    g = daam.global_maps(explorer, steps=[0], branch="uncond")
    assert g.heads_averaged and g.steps == (0,)
    middle = daam.global_maps(explorer, steps=[STEPS // 2])  # head_steps=[middle]: every head there
    assert not middle.heads_averaged


def test_a_head_slice_the_run_did_not_keep_names_the_capture_option(explorer):
    with pytest.raises(ValueError, match=r"heads=\[0\], steps \[0\], branch 'cond' need every head.*"
                                         r"capture with head_steps=\[0\]"):
        daam.global_maps(explorer, steps=[0], heads=[0])
    assert daam.global_maps(explorer, steps=[STEPS // 2], heads=[0], branch="uncond").heads == (0,)


def test_head_layers_keep_every_head_of_those_layers_only(pipe):
    r = daam.generate(pipe, "a red circle", steps=2, head_layers=["up_blocks.*"], head_steps=[1])
    assert all(n.startswith("up_blocks") for n in r.heads) and r.heads.meta["steps"] == [1]
    assert daam.global_maps(r, steps=[1], heads=0, blocks="up").heads == (0,)
    with pytest.raises(ValueError, match=r"head_steps=\[1\] and head_layers=\['down_blocks"):
        daam.global_maps(r, steps=[1], heads=0)
    with pytest.raises(ValueError, match=r"head_layers=\['mid_block\.\*'\] matches none of the captured layers"):
        daam.capture(pipe, "a red circle", head_layers=["mid_block.*"])


def test_prompt_tokens_keep_only_the_prompts_keys_and_the_same_maps(run, explorer, pipe):
    n = len(pipe.tokenizer(PROMPT).input_ids)  # start token, the prompt's tokens, end token
    name = daam.layer_names(explorer)[0]
    assert explorer.slices[name].shape[-1] == n and explorer.heads[name].shape[-1] == n
    assert explorer.cache[name].shape[-1] == 77  # the published maps keep every key
    mine, full = daam.global_maps(explorer, steps=[0, 1]), daam.global_maps(run.slices, steps=[0, 1])
    assert mine.keys == tuple(range(n))
    torch.testing.assert_close(mine.maps, full.maps[:n], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(daam.word_map(mine, pipe, "trapezoid"), daam.word_map(full, pipe, "trapezoid"))


def test_float16_storage_halves_the_slices_and_keeps_the_maps(run, pipe):
    half = daam.generate(pipe, PROMPT, seed=2, steps=STEPS, slices=True, mid=True, dtype=torch.float16)
    name = daam.layer_names(half)[0]
    assert half.slices[name].dtype == torch.float16 and half.cache[name].dtype == torch.float32
    torch.testing.assert_close(daam.global_maps(half, steps=[0, 2]).maps,
                               daam.global_maps(run.slices, steps=[0, 2]).maps, atol=2e-3, rtol=2e-3)
    with pytest.raises(ValueError, match=r"dtype=torch.int8; storage dtypes: torch.float32, torch.float16"):
        daam.capture(pipe, PROMPT, slices=True, dtype=torch.int8)


def test_a_capture_over_max_bytes_is_refused_before_step_0_with_options_that_fit(pipe):
    opts = dict(slices=True, mid=True, queries=True)
    need = daam.capture_bytes(pipe, 128, STEPS, prompt=PROMPT, **opts)
    calls = []
    hook = pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(MemoryError, match=r"would keep .* over max_bytes=.*The nearest capture that fits: "
                                              r"capture\(\.\.\., .*\)") as e:
            daam.generate(pipe, PROMPT, steps=STEPS, max_bytes=need // 2, **opts)
    finally:
        hook.remove()
    assert calls == []  # no UNet step ran
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in pipe.unet.modules())
    fits = re.search(r"fits: capture\(\.\.\., (.*?)\) \(", str(e.value)).group(1)  # e.g. "slices=True, tokens='prompt'"
    pasted = eval(f"dict({fits})", {"torch": torch})
    r = daam.generate(pipe, PROMPT, steps=STEPS, max_bytes=need // 2, mid=True, **pasted)  # the pasted options run
    kept = [c for c in (r.cache, r.slices, r.heads, r.queries) if c is not None]
    assert sum(t.nbytes for c in kept for t in c.values()) <= need // 2


def test_capture_sizes_equal_the_bytes_of_the_caches(explorer, pipe):
    sizes = daam.capture_sizes(pipe, 128, STEPS, prompt=PROMPT, **daam.explorer_options(STEPS))
    kept = {role: sum(t.nbytes for t in getattr(explorer, role).values()) for role in sizes}
    assert sizes == kept and set(sizes) == {"cache", "slices", "heads", "queries"}
