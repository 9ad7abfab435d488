"""lab.hooks.trace on a tiny SD1.5-layout pipeline: capture is exact, cleans up, and labels steps and branches."""
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, SlicedAttnProcessor

from tiny_models import generate, one_thread, tiny_pipeline  # noqa: F401 (one_thread: autouse fixture)

from lab.hooks import Keep, select, trace

ATTN2 = "up_blocks.3.attentions.0.transformer_blocks.0.attn2"
ATTN1 = "down_blocks.0.attentions.1.transformer_blocks.0.attn1"


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline("sd15")


def assert_restored(unet, processors_before):
    after = unet.attn_processors
    assert after.keys() == processors_before.keys()
    assert all(after[k] is processors_before[k] for k in after), "a processor object was not put back"
    for name, m in unet.named_modules():
        assert not m._forward_hooks and not m._forward_pre_hooks, f"hook left on {name!r}"


@pytest.mark.parametrize("keep", [Keep(steps="all"), Keep(steps="sum", heads="mean", branches=("cond",))])
def test_observing_gives_a_bit_identical_image(pipe, keep):
    ref = generate(pipe, steps=3)  # original processors: AttnProcessor2_0 everywhere
    names = select(pipe, kind=("attn1", "attn2", "block"))
    with trace(pipe, names, keep=keep):
        out = generate(pipe, steps=3)
    assert torch.equal(out, ref)


def test_observed_probabilities_are_the_eager_ones(pipe):
    """The probabilities computed beside the layer's own processor equal those of diffusers' AttnProcessor math."""
    seen = {}

    def spy(probs, ctx):
        seen[ctx.step] = probs.detach().clone()  # (B, heads, q, k) from the eager path

    with trace(pipe, [], edits={ATTN1: spy}):
        generate(pipe, steps=2)
    with trace(pipe, [ATTN1], keep=Keep(steps="all")) as tr:
        generate(pipe, steps=2)
    got = tr.cache[ATTN1]  # (step, branch, batch, heads, q, k), branches cond then uncond
    for step in (0, 1):
        want = seen[step].reshape(2, 1, *seen[step].shape[1:])  # (layout uncond/cond, batch, heads, q, k)
        torch.testing.assert_close(got[step, 0], want[1], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got[step, 1], want[0], atol=1e-6, rtol=1e-5)


def test_model_is_restored_after_the_block(pipe):
    before = pipe.unet.attn_processors
    with trace(pipe, select(pipe, kind=("attn1", "attn2", "resnet", "transformer", "block"))):
        generate(pipe)
    assert_restored(pipe.unet, before)


def test_model_is_restored_after_an_exception(pipe):
    before = pipe.unet.attn_processors
    with pytest.raises(KeyboardInterrupt):
        with trace(pipe, [ATTN1, ATTN2, "mid_block"]) as tr:
            generate(pipe)
            raise KeyboardInterrupt
    assert_restored(pipe.unet, before)
    with pytest.raises(RuntimeError, match="no.*if it raised"):
        tr.cache


def test_nested_traces_on_one_layer_each_keep_their_own_view(pipe):
    before = pipe.unet.attn_processors
    with trace(pipe, [ATTN2], keep=Keep(steps="all", heads="mean")) as outer:
        with trace(pipe, [ATTN2], keep=Keep(steps=[1], branches=("cond",))) as inner:
            image = generate(pipe, steps=3)
    assert_restored(pipe.unet, before)
    assert torch.equal(image, generate(pipe, steps=3))
    with trace(pipe, [ATTN2], keep=Keep(steps="all")) as alone:
        generate(pipe, steps=3)
    full = alone.cache[ATTN2]  # (step, branch, batch, head, q, k)
    torch.testing.assert_close(outer.cache[ATTN2], full.mean(3))
    torch.testing.assert_close(inner.cache[ATTN2], full[1:2, :1])


def test_a_second_edit_on_an_edited_layer_is_refused(pipe):
    before = pipe.unet.attn_processors
    with trace(pipe, [], edits={ATTN2: lambda p, ctx: None}):
        with pytest.raises(RuntimeError, match="already edited by an enclosing trace"):
            with trace(pipe.unet, ["mid_block"], edits={ATTN2: lambda p, ctx: None}):
                pass
    assert_restored(pipe.unet, before)


def test_nested_traces_on_other_points_each_keep_their_own(pipe):
    before = pipe.unet.attn_processors
    with trace(pipe, [ATTN2], keep=Keep(steps="sum")) as outer:
        with trace(pipe, [f"{ATTN2}.to_q", "mid_block"], keep=Keep(steps=[1], branches=("cond",))) as inner:
            generate(pipe, steps=3)
    assert_restored(pipe.unet, before)
    with trace(pipe, [ATTN2], keep=Keep(steps="sum")) as alone:
        generate(pipe, steps=3)
    torch.testing.assert_close(outer.cache[ATTN2], alone.cache[ATTN2])
    assert inner.cache.meta["steps"] == [1] and inner.cache.meta["branches"] == ["cond"]
    assert inner.cache[f"{ATTN2}.to_q"].shape[:3] == (1, 1, 1)  # (step, branch, batch, token, channel)


def test_projections_are_what_the_layer_computes(pipe):
    """to_q and to_k of a cross-attention layer, kept by a trace, give back the probabilities it captured."""
    attn = dict(pipe.unet.named_modules())[ATTN2]
    names = [ATTN2, f"{ATTN2}.to_q", f"{ATTN2}.to_k", f"{ATTN2}.to_out.0"]
    with trace(pipe, names, keep=Keep(steps=[0])) as tr:
        generate(pipe, steps=2)
    c = tr.cache
    assert c.axes[f"{ATTN2}.to_q"] == ("step", "branch", "batch", "token", "channel")
    h, w = c.resolution(ATTN2)
    q, k = c[f"{ATTN2}.to_q"][0, 1, 0], c[f"{ATTN2}.to_k"][0, 1, 0]  # cond branch: (h*w, c), (77, c)
    assert q.shape == (h * w, attn.to_q.out_features) and k.shape == (77, attn.to_k.out_features)
    d = q.shape[1] // attn.heads
    q, k = q.view(-1, attn.heads, d).transpose(0, 1), k.view(-1, attn.heads, d).transpose(0, 1)  # (heads, n, d)
    probs = (q @ k.transpose(1, 2) * attn.scale).softmax(-1)  # (heads, h*w, 77)
    torch.testing.assert_close(probs, c[ATTN2][0, 1, 0], atol=1e-5, rtol=1e-4)
    assert c[f"{ATTN2}.to_out.0"].shape[-2:] == (h * w, attn.to_out[0].out_features)


def test_an_edit_on_a_projection_changes_the_image(pipe):
    ref = generate(pipe, steps=2)
    with trace(pipe, edits={f"{ATTN2}.to_v": lambda v, ctx: torch.zeros_like(v)}):
        out = generate(pipe, steps=2)
    assert (out - ref).abs().max().item() > 1e-4


def test_a_trace_is_used_once(pipe):
    tr = trace(pipe, [ATTN2])
    with tr:
        pass
    with pytest.raises(RuntimeError, match="already used"):
        with tr:
            pass


def test_every_step_is_recorded_with_its_timestep(pipe):
    with trace(pipe, [ATTN2, "up_blocks.1"], keep=Keep(steps="all")) as tr:
        generate(pipe, steps=4)
    c = tr.cache
    assert c.meta["timesteps"] == [float(t) for t in pipe.scheduler.timesteps]
    assert c.meta["steps"] == [0, 1, 2, 3] and c.meta["num_inference_steps"] == 4
    assert c[ATTN2].shape == (4, 2, 1, 8, 64, 77)  # (step, branch, batch, head, query=8*8, key)
    assert c.axes["up_blocks.1"] == ("step", "branch", "batch", "channel", "height", "width")
    assert c["up_blocks.1"].shape[-2:] == c.resolution("up_blocks.1") == (4, 4)
    assert c.resolution(ATTN2) == (8, 8) and c.meta["image_size"] == [64, 64] and c.meta["latent_size"] == [8, 8]
    probs = c[ATTN2]
    assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5) and probs.dtype == torch.float32


def test_branches_are_labelled_with_guidance(pipe):
    """At step 0 the latents do not depend on guidance, so the cond maps equal those of an unguided run."""
    keep = Keep(steps=[0])
    with trace(pipe, [ATTN2], keep=keep) as guided:
        generate(pipe, steps=2, guidance_scale=7.5)
    with trace(pipe, [ATTN2], keep=keep) as plain:
        generate(pipe, steps=2, guidance_scale=1.0)
    with trace(pipe, [ATTN2], keep=keep) as empty:
        generate(pipe, prompt="", steps=2, guidance_scale=1.0)
    g, p, e = guided.cache, plain.cache, empty.cache
    assert g.meta["layout"] == ["uncond", "cond"] and g.meta["branches"] == ["cond", "uncond"]
    assert p.meta["layout"] == ["cond"] and p.meta["branches"] == ["cond"]
    assert p[ATTN2].shape == (1, 1, 1, 8, 64, 77)  # one branch, nothing halved
    assert torch.allclose(g.take(ATTN2, step=0, branch="cond"), p.take(ATTN2, step=0, branch="cond"), atol=1e-6)
    assert torch.allclose(g.take(ATTN2, step=0, branch="uncond"), e.take(ATTN2, step=0, branch="cond"), atol=1e-6)
    assert not torch.allclose(g.take(ATTN2, step=0, branch="cond"), e.take(ATTN2, step=0, branch="cond"), atol=1e-4)


@pytest.mark.parametrize("guidance, layout", [(7.5, ("uncond", "cond")), (1.0, ("cond",))])
def test_layout_is_the_batchs_branches_before_step_0_and_during_the_run(pipe, guidance, layout):
    seen = []
    first = pipe.unet.register_forward_pre_hook(lambda m, a: seen.append(("before", tr.step, tr.layout())))
    try:
        with trace(pipe, [ATTN2]) as tr:  # its pre-hook runs after `first`: at the first call, step is still -1
            generate(pipe, steps=2, guidance_scale=guidance,
                     callback_on_step_end=lambda p, i, t, kw: seen.append(("step", tr.step, tr.layout())) or kw)
    finally:
        first.remove()
    assert seen[:2] == [("before", -1, layout), ("step", 0, layout)] and tr.layout() == layout
    assert tr.cache.meta["layout"] == list(layout)
    with trace(pipe.unet, ["mid_block"], branches=("uncond", "cond")) as bare:
        assert bare.layout() == ("uncond", "cond")  # what the branches= given say, before any call


def test_so_far_is_what_the_trace_has_kept_up_to_each_step(pipe):
    summed, every = [], []
    with trace(pipe, [ATTN2], keep=Keep(steps="sum", heads="mean")) as tr:
        with trace(pipe, [ATTN2], keep=Keep(steps="all")) as tr_all:
            assert tr.so_far(ATTN2) is None  # nothing kept before step 0
            generate(pipe, steps=3, callback_on_step_end=lambda p, i, t, kw: (
                summed.append(tr.so_far(ATTN2)), every.append(tr_all.so_far(ATTN2))) and kw)
    full = tr_all.cache[ATTN2]  # (step, branch, batch, head, q, k)
    for i in range(3):
        assert torch.equal(every[i], full[:i + 1])
        torch.testing.assert_close(summed[i], full[:i + 1].mean(3).sum(0))  # (branch, batch, q, k)
    assert torch.equal(summed[-1], tr.cache[ATTN2])
    with pytest.raises(ValueError, match="'mid_block' is not kept by this trace; it keeps: up_blocks"):
        tr.so_far("mid_block")


def test_batch_index_is_prompt_times_images_per_prompt_plus_image(pipe):
    torch.manual_seed(1)
    latents = torch.randn(4, 4, 8, 8)
    prompts = ["a red square", "a blue circle"]
    with trace(pipe, [ATTN2], keep=Keep(steps=[0], branches=("cond",))) as tr:
        pipe(prompts, num_images_per_prompt=2, latents=latents.clone(), height=64, width=64, num_inference_steps=2,
             output_type="pt")
    c = tr.cache
    assert c.meta["prompt"] == prompts and c.meta["num_images_per_prompt"] == 2
    assert c.meta["tokens"][1] == ["<|startoftext|>", "a</w>", "blue</w>", "circle</w>", "<|endoftext|>"]
    assert c[ATTN2].shape[:3] == (1, 1, 4)
    for prompt_index, image in [(0, 1), (1, 0)]:
        row = prompt_index * 2 + image
        with trace(pipe, [ATTN2], keep=Keep(steps=[0], branches=("cond",))) as one:
            pipe(prompts[prompt_index], latents=latents[row:row + 1].clone(), height=64, width=64,
                 num_inference_steps=2, output_type="pt")
        assert torch.allclose(c.take(ATTN2, step=0, branch="cond", batch=row),
                              one.cache.take(ATTN2, step=0, branch="cond", batch=0), atol=1e-6)


def test_step_reductions_agree_with_keeping_everything(pipe):
    keeps = {"all": Keep(), "sum": Keep(steps="sum"), "mean": Keep(steps="mean", heads="mean"),
             "pick": Keep(steps=[-1, 1], tokens=[1, 2], branches=("cond",))}
    caches = {}
    for label, keep in keeps.items():
        with trace(pipe, [ATTN2, "mid_block"], keep=keep) as tr:
            generate(pipe, steps=3)
        caches[label] = tr.cache
    full = caches["all"][ATTN2]  # (step, branch, batch, head, q, k)
    assert torch.allclose(caches["sum"][ATTN2], full.sum(0), atol=1e-5)
    assert caches["sum"].axes[ATTN2] == ("branch", "batch", "head", "query", "key")
    assert caches["sum"].meta["summed_steps"] == [0, 1, 2] and len(caches["sum"].meta["timesteps"]) == 3
    assert torch.allclose(caches["mean"][ATTN2], full.mean(0).mean(2), atol=1e-6)
    assert caches["mean"].axes[ATTN2] == ("branch", "batch", "query", "key")
    pick = caches["pick"]
    assert pick.meta["steps"] == [1, 2]
    assert torch.allclose(pick[ATTN2], full[1:3, :1, ..., 1:3], atol=1e-6)  # cond is branch 0 by default order
    assert torch.allclose(pick["mid_block"], caches["all"]["mid_block"][1:3, :1], atol=1e-5)  # tokens: attn2 only


def test_memory_budget_is_refused_before_generation(pipe):
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    before = pipe.unet.attn_processors
    try:
        with pytest.raises(MemoryError) as e:
            with trace(pipe, select(pipe, kind="attn1"), max_bytes=100_000):
                generate(pipe, steps=25)
    finally:
        handle.remove()
    msg = str(e.value)
    assert "25 steps" in msg and "max_bytes=97.7 KiB" in msg and "steps='sum'" in msg and "heads='mean'" in msg
    assert len(calls) == 1  # refused at the first UNet call, before any denoising work was done
    assert_restored(pipe.unet, before)


def test_memory_budget_of_a_bare_unet_is_checked_at_the_step_that_exceeds(pipe):
    unet = pipe.unet
    sample, text = torch.randn(1, 4, 8, 8), torch.randn(1, 77, unet.config.cross_attention_dim)
    one_step = 8 * 64 * 77 * 4  # heads * queries * keys * fp32
    with pytest.raises(MemoryError, match="after 3 steps"):
        with trace(unet, [ATTN2], max_bytes=int(2.5 * one_step)) as tr:
            for t in (900, 600, 300):
                unet(sample, t, text)
    assert tr.step == 2


def test_bare_unet_needs_no_pipeline_and_takes_the_branch_layout(pipe):
    unet = pipe.unet
    sample, text = torch.randn(2, 4, 8, 8), torch.randn(2, 77, unet.config.cross_attention_dim)
    with trace(unet, ["up_blocks.1"]) as tr:  # default layout for a bare UNet: every row 'cond'
        unet(sample, 500, text)
    assert tr.cache["up_blocks.1"].shape == (1, 1, 2, 128, 4, 4) and tr.cache.meta["timesteps"] == [500.0]
    with trace(unet, ["up_blocks.1"], branches=("uncond", "cond"), keep=Keep(branches=("cond",))) as tr2:
        unet(sample, 500, text)
    assert torch.allclose(tr2.cache["up_blocks.1"][0, 0, 0], tr.cache["up_blocks.1"][0, 0, 1])


def test_a_batch_can_have_branches_of_its_own_and_keeps_and_edits_name_them(pipe):
    """PAG's layout: perturbed rows beside uncond and cond in one batch."""
    unet = pipe.unet
    torch.manual_seed(0)
    sample, text = torch.randn(3, 4, 8, 8), torch.randn(3, 77, unet.config.cross_attention_dim)
    seen = []
    layout = ("uncond", "cond", "perturbed")
    with trace(unet, [ATTN2], keep=Keep(branches=("perturbed", "uncond")), branches=layout,
               edits={"mid_block": lambda out, ctx: seen.append((ctx.branches, ctx.rows("perturbed")))}) as tr:
        unet(sample, 500, text)
    with trace(unet, [ATTN2]) as alone:  # a bare UNet: every row 'cond'
        unet(sample, 500, text)
    kept, every = tr.cache[ATTN2], alone.cache[ATTN2]  # (step, branch, batch, head, q, k): (1, 2, 1, ..), (1, 1, 3, ..)
    torch.testing.assert_close(kept[0, 0, 0], every[0, 0, 2], atol=1e-6, rtol=1e-5)  # perturbed: the third row
    torch.testing.assert_close(kept[0, 1, 0], every[0, 0, 0], atol=1e-6, rtol=1e-5)  # uncond: the first
    assert tr.cache.meta["layout"] == list(layout) and tr.cache.meta["branches"] == ["perturbed", "uncond"]
    assert seen == [(layout, slice(2, 3))]


@pytest.mark.parametrize("make", [lambda: "slicing", AttnProcessor, AttnProcessor2_0, lambda: SlicedAttnProcessor(2)])
def test_user_processors_do_not_hide_maps_and_are_put_back(pipe, make):
    with trace(pipe, [ATTN1, ATTN2], keep=Keep(steps=[0])) as ref:
        reference = generate(pipe)
    proc = make()
    pipe.enable_attention_slicing() if proc == "slicing" else pipe.unet.set_attn_processor(proc)
    try:
        before = pipe.unet.attn_processors
        with trace(pipe, [ATTN1, ATTN2], keep=Keep(steps=[0])) as tr:
            out = generate(pipe)
        assert_restored(pipe.unet, before)
    finally:
        pipe.unet.set_attn_processor(AttnProcessor2_0())
    for name in (ATTN1, ATTN2):
        assert torch.allclose(tr.cache[name], ref.cache[name], atol=1e-6)
    assert (out - reference).abs().max() <= 1e-5


def test_an_unknown_processor_is_refused_rather_than_replaced(pipe):
    class Custom(AttnProcessor):
        pass

    before = pipe.unet.attn_processors
    pipe.unet.set_attn_processor({k: (Custom() if ATTN2 in k else v) for k, v in before.items()})
    try:
        with pytest.raises(ValueError, match="uses Custom.*AttnProcessor2_0"):
            with trace(pipe, [ATTN2]):
                pass
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in pipe.unet.modules())
    finally:
        pipe.unet.set_attn_processor(before)


def test_bad_keep_values_name_the_valid_ones(pipe):
    with pytest.raises(ValueError, match="valid: 'all', 'sum', 'mean'"):
        Keep(steps="last")
    with pytest.raises(ValueError, match="give branch labels, each once: cond, uncond"):
        Keep(branches=("cond", "cond"))
    with pytest.raises(ValueError, match="Keep.branches has 'positive', which is not a branch of this run; its "
                                         "branches: uncond, cond"):
        with trace(pipe, [ATTN2], keep=Keep(branches=("positive",))):
            generate(pipe)
    with pytest.raises(ValueError, match=r"Keep.tokens \[80\] out of range: cross-attention has 77"):
        with trace(pipe, [ATTN2], keep=Keep(tokens=[80])):
            generate(pipe)
    with pytest.raises(ValueError, match="only \\('cond',\\)"):
        with trace(pipe, [ATTN2], keep=Keep(branches=("uncond",))):
            generate(pipe, guidance_scale=1.0)


def test_a_projection_a_fused_processor_skips_is_reported():
    fused = tiny_pipeline("sd15")
    fused.unet.fuse_qkv_projections()  # self-attention's to_q still exists, but the processor calls to_qkv
    with pytest.raises(RuntimeError, match=r"to_q' never ran: .*FusedAttnProcessor2_0"):
        with trace(fused, [f"{ATTN1}.to_q"]):
            generate(fused, steps=1)


def test_an_over_budget_keep_names_the_nearest_keep_that_fits_and_it_runs(pipe):
    names = select(pipe, kind="attn2")
    with pytest.raises(MemoryError) as e:
        with trace(pipe, names, keep=Keep(steps="all"), max_bytes=400_000):
            generate(pipe, steps=4)
    msg = str(e.value)
    suggested = msg.split("The nearest keep that fits: ")[1].split(". Other ways")[0]
    assert suggested.startswith("Keep(") and "steps=" not in suggested  # still every step
    keep = eval(suggested, {"Keep": Keep, "torch": torch})
    with trace(pipe, names, keep=keep, max_bytes=400_000) as tr:
        generate(pipe, steps=4)
    assert sum(t.numel() * t.element_size() for t in tr.cache.tensors.values()) <= 400_000
    assert tr.cache.meta["steps"] == [0, 1, 2, 3]


def test_a_keep_over_the_free_memory_is_refused_naming_it(pipe):
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(MemoryError, match=r"free on the CPU \(available memory\)"):
            with trace(pipe, select(pipe, kind="attn1"), max_bytes=2**62):  # 4096 x 4096 maps at 512 px
                generate(pipe, steps=50, size=512)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_a_model_moved_during_the_trace_is_an_error(pipe):
    unet = pipe.unet
    sample, text = torch.randn(1, 4, 8, 8), torch.randn(1, 77, unet.config.cross_attention_dim)
    with pytest.raises(RuntimeError, match="ran on cpu at step 0 and on meta at step 1"):
        with trace(unet, [ATTN2]):
            unet(sample, 900, text)
            unet(sample.to("meta"), 600, text.to("meta"))
