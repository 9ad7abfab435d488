"""Interventions through trace(edits=...) and edited(): scale_tokens, replace_attention, block edits, run_until."""
import pytest
import torch

from tiny_models import generate, one_thread, tiny_pipeline  # noqa: F401 (one_thread: autouse fixture)

from lab.hooks import Keep, edited, replace_attention, run_until, scale_tokens, select, trace

ATTN2 = "up_blocks.3.attentions.0.transformer_blocks.0.attn2"


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline("sd15")


def test_an_edit_that_returns_none_only_observes(pipe):
    ref = generate(pipe)
    seen = []
    with trace(pipe, [], edits={ATTN2: lambda probs, ctx: seen.append((ctx.step, ctx.branches, probs.shape))}):
        out = generate(pipe)
    assert (out - ref).abs().max() <= 1e-5
    assert seen == [(0, ("uncond", "cond"), (2, 8, 64, 77)), (1, ("uncond", "cond"), (2, 8, 64, 77))]


def test_scale_tokens_zero_silences_a_token_in_the_cond_branch_only(pipe):
    ref = generate(pipe)
    names = select(pipe, kind="attn2")
    with trace(pipe, [ATTN2], keep=Keep(steps="sum"), edits={n: scale_tokens([2], 0.0) for n in names}) as tr:
        out = generate(pipe)
    maps = tr.cache[ATTN2]  # (branch, batch, head, q, k); kept maps are the edited ones
    cond, uncond = tr.cache.meta["branches"].index("cond"), tr.cache.meta["branches"].index("uncond")
    assert maps[cond, ..., 2].abs().max() == 0
    assert maps[uncond, ..., 2].abs().max() > 0
    assert (out - ref).abs().max() > 1e-4


def test_scale_tokens_mask_limits_the_edit_to_masked_queries(pipe):
    mask = torch.zeros(64, 64)
    mask[:, :32] = 1  # left half of the image
    with trace(pipe, [ATTN2], keep=Keep(steps=[0], branches=("cond",))) as plain:
        generate(pipe)
    with trace(pipe, [ATTN2], keep=Keep(steps=[0], branches=("cond",)),
               edits={ATTN2: scale_tokens(1, 3.0, mask=mask)}) as edited:
        generate(pipe)
    # (head, h, w, k) at step 0, cond, batch 0
    a, b = plain.cache[ATTN2][0, 0, 0].reshape(8, 8, 8, 77), edited.cache[ATTN2][0, 0, 0].reshape(8, 8, 8, 77)
    assert torch.allclose(b[:, :, :4, 1], 3 * a[:, :, :4, 1], atol=1e-6)  # left half: tripled
    assert torch.allclose(b[:, :, 4:, 1], a[:, :, 4:, 1], atol=1e-6)  # right half: untouched


def _pair(pipe, edits=None, prompts=("a red square", "a blue circle")):
    """Two prompts in one batch, each from its own seed: (2, 3, H, W)."""
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    with trace(pipe, [], edits=edits or {}):
        return pipe(list(prompts), height=64, width=64, num_inference_steps=2, generator=gens,
                    output_type="pt").images


def test_scale_tokens_per_row_tokens_and_masks_edit_each_prompt_as_alone(pipe):
    names = select(pipe, kind="attn2")
    left = torch.zeros(64, 64)
    left[:, :32] = 1
    masks = torch.stack([left, torch.zeros(64, 64)])  # row 1: an all-zero mask, so no edit
    both = _pair(pipe, {n: scale_tokens([[2], [3]], 0.0, mask=masks) for n in names})
    row0 = _pair(pipe, {n: scale_tokens([2], 0.0, mask=left) for n in names})[0]
    plain = _pair(pipe)
    assert (both[0] - row0).abs().max() <= 1e-5  # row 0 edited as the one-mask edit edits it (float rounding aside)
    assert (both[0] - plain[0]).abs().max() > 1e-4
    assert (both[1] - plain[1]).abs().max() <= 1e-5  # row 1 untouched


def test_scale_tokens_refuses_rows_that_do_not_match_the_batch(pipe):
    names = select(pipe, kind="attn2")
    with pytest.raises(ValueError, match="3 rows of tokens or masks but the batch"):
        _pair(pipe, {n: scale_tokens([[2], [3], [4]], 0.0) for n in names})


def test_edited_is_trace_with_edits_only(pipe):
    names = select(pipe, kind="attn2")
    with trace(pipe, [], edits={n: scale_tokens([2], 0.0) for n in names}):
        ref = generate(pipe)
    with edited(pipe, {n: scale_tokens([2], 0.0) for n in names}) as tr:
        out = generate(pipe)
    assert (out - ref).abs().max() == 0 and len(tr.cache) == 0
    assert all(type(m.processor).__name__ != "CaptureProcessor" for m in pipe.unet.modules() if hasattr(m, "processor"))


def test_before_edits_keeps_the_models_own_maps_at_an_edited_point(pipe):
    with trace(pipe, [ATTN2, "mid_block"], keep=Keep(steps=[0])) as plain:
        generate(pipe)
    with trace(pipe, [ATTN2], keep=Keep(steps=[0], before_edits=True), edits={ATTN2: scale_tokens([2], 0.0)}) as own:
        with trace(pipe, [ATTN2], keep=Keep(steps=[0])) as replaced:  # an observer keeps the replacement
            generate(pipe)
    cond = plain.cache.meta["branches"].index("cond")
    torch.testing.assert_close(own.cache[ATTN2], plain.cache[ATTN2], atol=1e-6, rtol=1e-5)  # step 0: same input
    assert own.cache[ATTN2][0, cond, ..., 2].abs().max() > 0 and replaced.cache[ATTN2][0, cond, ..., 2].max() == 0
    assert own.cache.meta["keep"]["before_edits"] is True
    with trace(pipe, ["mid_block"], keep=Keep(steps=[0], before_edits=True),
               edits={"mid_block": lambda out, ctx: out * 2}) as block:
        generate(pipe)
    assert torch.equal(block.cache["mid_block"], plain.cache["mid_block"])


def test_replace_attention_puts_the_source_maps_in_the_target_run(pipe):
    names = select(pipe, kind="attn2", block="up")
    with trace(pipe, names, keep=Keep(steps="all")) as src:
        generate(pipe, prompt="a red square", steps=3)
    with trace(pipe, names, keep=Keep(steps="all"),
               edits={n: replace_attention(src.cache, steps=[0, 1]) for n in names}) as dst:
        generate(pipe, prompt="a blue circle", steps=3)
    with trace(pipe, names, keep=Keep(steps="all")) as free:
        generate(pipe, prompt="a blue circle", steps=3)
    for n in names:
        assert torch.allclose(dst.cache[n][:2], src.cache[n][:2], atol=1e-6)
        assert not torch.allclose(dst.cache[n][2], src.cache[n][2], atol=1e-4)
    assert not torch.allclose(dst.cache[names[0]][2], free.cache[names[0]][2], atol=1e-4)  # later steps follow


def test_replace_attention_explains_what_the_cache_lacks(pipe):
    with trace(pipe, [ATTN2], keep=Keep(steps=[0])) as src:
        generate(pipe)
    with pytest.raises(ValueError, match=r"no step 1 .* kept steps \[0\]"):
        with trace(pipe, [], edits={ATTN2: replace_attention(src.cache)}):
            generate(pipe)


def test_a_block_edit_replaces_its_output_and_skip(pipe):
    ref = generate(pipe)
    with trace(pipe, ["down_blocks.2", "up_blocks.1"], keep=Keep(steps=[0]),
               edits={"down_blocks.2": lambda h, ctx: torch.zeros_like(h)}) as tr:
        out = generate(pipe)
    assert tr.cache["down_blocks.2"].abs().max() == 0
    assert (out - ref).abs().max() > 1e-4
    skips = []
    handle = pipe.unet.up_blocks[0].register_forward_pre_hook(
        lambda m, args, kw: skips.append(kw["res_hidden_states_tuple"][0].abs().max().item()), with_kwargs=True)
    try:
        with trace(pipe, [], edits={"down_blocks.2": lambda h, ctx: torch.zeros_like(h)}):
            generate(pipe, steps=1)
    finally:
        handle.remove()
    assert skips == [0.0]  # down_blocks.2's output doubles as up_blocks.0's first skip: replaced there too


def test_an_edit_of_the_wrong_shape_is_an_error(pipe):
    with pytest.raises(ValueError, match=r"returned shape \(1, 8\).*\(2, 8, 64, 77\)"):
        with trace(pipe, [], edits={ATTN2: lambda probs, ctx: probs[:1, :, 0, 0]}):
            generate(pipe)


def test_run_until_returns_the_block_output_without_running_the_rest(pipe):
    unet = pipe.unet
    torch.manual_seed(0)
    sample, text = torch.randn(1, 4, 8, 8), torch.randn(1, 77, unet.config.cross_attention_dim)
    with trace(unet, ["up_blocks.1"]) as tr:
        unet(sample, 500, text)
    late = []
    handle = unet.conv_out.register_forward_hook(lambda *a: late.append(1))
    try:
        feats = run_until(unet, "up_blocks.1", sample, 500, encoder_hidden_states=text)
    finally:
        handle.remove()
    assert late == [] and feats.shape == (1, 128, 4, 4)
    assert torch.allclose(feats, tr.cache["up_blocks.1"][0, 0], atol=1e-6)
    assert not any(m._forward_hooks for m in unet.modules())


def test_run_until_a_down_block_returns_its_hidden_states(pipe):
    unet = pipe.unet
    sample, text = torch.randn(1, 4, 8, 8), torch.randn(1, 77, unet.config.cross_attention_dim)
    assert run_until(unet, "down_blocks.1", sample, 10, text).shape == (1, 64, 2, 2)
    with pytest.raises(ValueError, match="nearest: down_blocks.1"):
        run_until(unet, "down_block.1", sample, 10, text)


def test_a_swap_that_runs_its_module_changes_nothing_and_is_put_back(pipe):
    ref = generate(pipe)
    block = pipe.unet.mid_block
    with trace(pipe, swaps={"mid_block": lambda run, ctx: run()}):
        assert "forward" in vars(block)  # the instance's forward, the module itself left in place
        out = generate(pipe)
    assert torch.equal(out, ref)
    assert pipe.unet.mid_block is block and "forward" not in vars(block)


def test_a_swap_that_returns_a_kept_output_skips_the_module(pipe):
    kept, runs = {}, []

    def reuse(run, ctx):  # run the block at step 0 only, then reuse its output
        if ctx.step == 0:
            kept["out"] = run()
        return kept["out"]

    handle = pipe.unet.mid_block.resnets[0].register_forward_hook(lambda m, a, o: runs.append(1))
    try:
        with trace(pipe, ["mid_block"], keep=Keep(steps="all"), swaps={"mid_block": reuse}) as tr:
            out = generate(pipe, steps=3)
    finally:
        handle.remove()
    assert len(runs) == 1
    seen = tr.cache["mid_block"]  # (step, branch, batch, c, h, w): a trace on the point sees what the swap returned
    assert torch.equal(seen[0], seen[2]) and not torch.equal(out, generate(pipe, steps=3))


def test_a_swap_is_put_back_also_after_an_error(pipe):
    with pytest.raises(RuntimeError, match="boom"):
        with trace(pipe, swaps={"up_blocks.1": lambda run, ctx: run()}):
            raise RuntimeError("boom")
    assert "forward" not in vars(pipe.unet.up_blocks[1])


def test_a_swap_of_an_attention_layer_or_of_a_swapped_module_is_refused(pipe):
    with pytest.raises(ValueError, match="attn2 point is not a whole module's output; swaps take block, resnet"):
        trace(pipe, swaps={ATTN2: lambda run, ctx: run()})
    with trace(pipe, swaps={"mid_block": lambda run, ctx: run()}):
        with pytest.raises(RuntimeError, match="'mid_block' is already swapped by an enclosing trace"):
            with trace(pipe, swaps={"mid_block": lambda run, ctx: run()}):
                pass
    assert "forward" not in vars(pipe.unet.mid_block)
