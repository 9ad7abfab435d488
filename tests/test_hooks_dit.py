"""lab.hooks on diffusion transformers built from the real SD3-medium, SD3.5-medium/large and FLUX.1-dev/schnell
configs (tests/tiny_models.py: heads kept, head_dim 8, blocks cut to the fewest that keep every block type)."""
import pytest
import torch

from tiny_models import generate_dit, one_thread, tiny_dit, tiny_dit_pipeline  # noqa: F401 (one_thread: autouse)

from lab.hooks import Cache, Keep, points, run_until, scale_tokens, select, trace
from lab.hooks.dit import VIEWS, layout

ARCHS = ["sd3", "sd35m", "sd35l", "flux-dev", "flux-schnell"]
ATTENTION = ("joint", *VIEWS)


def guidance(arch):
    return 3.5 if arch.startswith("flux") else 5.0


@pytest.fixture(scope="module", params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def pipe(arch):
    return tiny_dit_pipeline(arch)


def assert_restored(model, before):
    after = model.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in after)
    for name, m in model.named_modules():
        assert not m._forward_hooks and not m._forward_pre_hooks, f"hook left on {name!r}"


@pytest.mark.parametrize("name", ARCHS)
def test_points_follow_the_real_block_counts(name):
    model = tiny_dit(name, full_depth=True)
    pts = points(model)
    modules = dict(model.named_modules())
    assert all(p.name.split(":")[0] in modules for p in pts)
    blocks = [p.name for p in pts if p.kind == "block"]
    joint = [p for p in pts if p.kind == "joint"]
    cfg = model.config
    if name.startswith("flux"):
        assert blocks == [f"transformer_blocks.{i}" for i in range(19)] + [
            f"single_transformer_blocks.{i}" for i in range(38)]
    else:
        assert blocks == [f"transformer_blocks.{i}" for i in range(cfg.num_layers)]
        assert f"transformer_blocks.{cfg.num_layers - 1}:text" not in {p.name for p in pts}  # SD3 drops it last
    dual = [p.name for p in pts if p.name.endswith(".attn2")]
    assert dual == [f"transformer_blocks.{i}.attn2" for i in cfg.get("dual_attention_layers", ())]
    assert all(p.heads == cfg.num_attention_heads and p.head_dim == 8 for p in joint)


def test_points_are_in_forward_order(pipe):
    order = []
    modules = dict(pipe.transformer.named_modules())
    pts = [p for p in points(pipe) if ":" not in p.name]  # views and streams have their layer's / block's place
    handles = [modules[p.name].register_forward_hook(lambda m, a, o, n=p.name: order.append(n)) for p in pts]
    try:
        generate_dit(pipe, steps=1, guidance_scale=1.0)
    finally:
        for h in handles:
            h.remove()
    assert order == [p.name for p in pts]


def test_token_layout_at_real_sizes(pipe, arch):
    lay = layout(pipe, 1024)
    assert lay.grid == (64, 64) and lay.image == 4096
    if arch.startswith("flux"):
        assert lay.text == 512 and lay.order == ("text", "image") and lay.span("image") == slice(512, None)
    else:
        assert lay.text == 77 + 256 and lay.order == ("image", "text") and lay.span("text") == slice(4096, None)
    p = {p.name: p for p in points(pipe, image_size=(512, 768), text_tokens=93)}["transformer_blocks.0.attn"]
    assert p.resolution == (32, 48) and p.text_tokens == 93


def test_observing_every_view_gives_a_bit_identical_image(pipe, arch):
    ref = generate_dit(pipe, guidance_scale=guidance(arch))
    before = pipe.transformer.attn_processors
    names = select(pipe, kind=(*ATTENTION, "block", "text_block"))
    with trace(pipe, names, keep=Keep(steps="sum", heads="mean")) as tr:
        out = generate_dit(pipe, guidance_scale=guidance(arch))
    assert torch.equal(out, ref)
    assert_restored(pipe.transformer, before)
    assert list(tr.cache) == names


def test_the_probabilities_are_the_softmax_the_layer_attends_with(pipe, arch, monkeypatch):
    """Every joint map equals softmax(q k^T / sqrt(d)) of the q and k the layer's SDPA call received."""
    names = [p.name for p in points(pipe) if p.kind == "joint" or p.name.endswith(".attn2")]  # one per layer
    heads = pipe.transformer.config.num_attention_heads
    with trace(pipe, names, keep=Keep(steps=[0])) as tr:
        generate_dit(pipe, steps=1, guidance_scale=guidance(arch))
    seen, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        q, k = kwargs.get("query", args[0] if args else None), kwargs.get("key", args[1] if len(args) > 1 else None)
        if q.shape[1] == heads:  # the transformer's layers (the text encoders have 4 heads)
            seen.append((q.float() @ k.float().transpose(-1, -2) * 8 ** -0.5).softmax(-1))  # (B, heads, S, S)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    generate_dit(pipe, steps=1, guidance_scale=guidance(arch))
    assert len(seen) == len(names)
    layout_ = tr.cache.meta["layout"]
    for name, want in zip(names, seen):
        want = want.reshape(len(layout_), -1, *want.shape[1:])  # (layout branch, batch, heads, S, S)
        got = tr.cache.take(name, step=0, branch="cond")  # (batch, heads, S, S)
        torch.testing.assert_close(got, want[layout_.index("cond")], atol=1e-6, rtol=1e-5)


def test_views_are_slices_of_the_joint_map_each_kept_alone(pipe, arch):
    layer = "transformer_blocks.1.attn"
    with trace(pipe, [layer], keep=Keep(steps="all")) as whole:
        generate_dit(pipe, guidance_scale=guidance(arch))
    joint = whole.cache[layer]  # (step, branch, batch, head, S, S)
    text = whole.cache.meta["text_tokens"]
    image = joint.shape[-1] - text
    spans = {"image": slice(0, image), "text": slice(image, None)} if not arch.startswith("flux") else {
        "text": slice(0, text), "image": slice(text, None)}
    for view in VIEWS:
        with trace(pipe, [f"{layer}:{view}"], keep=Keep(steps="all")) as alone:
            generate_dit(pipe, guidance_scale=guidance(arch))
        q, k = view.split("->")
        assert list(alone.cache) == [f"{layer}:{view}"]
        torch.testing.assert_close(alone.cache[f"{layer}:{view}"], joint[..., spans[q], spans[k]])


def test_block_outputs_are_both_streams_with_the_image_on_its_grid(pipe):
    with trace(pipe, ["transformer_blocks.0", "transformer_blocks.0:text"], keep=Keep(steps=[0])) as tr:
        generate_dit(pipe, steps=1, guidance_scale=1.0)
    c = tr.cache
    width = pipe.transformer.inner_dim
    assert c["transformer_blocks.0"].shape == (1, 1, 1, width, 4, 4)  # (step, branch, batch, channel, h, w)
    assert c.axes["transformer_blocks.0:text"] == ("step", "branch", "batch", "token", "channel")
    assert c["transformer_blocks.0:text"].shape[-2:] == (c.meta["text_tokens"], width)


def test_run_until_returns_the_block_image_stream(pipe):
    with trace(pipe, ["transformer_blocks.0"], keep=Keep(steps=[0])) as tr:
        calls = []
        handle = pipe.transformer.register_forward_pre_hook(
            lambda m, a, kw: calls.append(dict(kw)), with_kwargs=True)
        try:
            generate_dit(pipe, steps=1, guidance_scale=1.0)
        finally:
            handle.remove()
    feats = run_until(pipe, "transformer_blocks.0", **calls[0])  # (B, c, h, w)
    torch.testing.assert_close(feats, tr.cache["transformer_blocks.0"][0, 0])


def test_guidance_layout_is_read_from_the_pipeline(pipe, arch):
    with trace(pipe, ["transformer_blocks.0.attn:image->text"], keep=Keep(steps=[0])) as tr:
        generate_dit(pipe, steps=1, guidance_scale=guidance(arch))
    meta = tr.cache.meta
    if arch.startswith("flux"):  # dev: a guidance embedding; schnell: none; neither has an unconditional branch
        assert meta["layout"] == ["cond"] and meta["guidance_embedding"] == (arch == "flux-dev")
    else:
        assert meta["layout"] == ["uncond", "cond"] and meta["guidance_embedding"] is False
    assert meta["pipeline"] == type(pipe).__name__ and meta["image_size"] == [64, 64]


def test_an_edit_of_the_image_to_text_view_changes_the_image(pipe, arch):
    names = select(pipe, kind="image->text")
    ref = generate_dit(pipe, guidance_scale=guidance(arch))
    with trace(pipe, [], edits={n: scale_tokens(0, 1.0) for n in names}):  # eager math, nothing changed
        same = generate_dit(pipe, guidance_scale=guidance(arch))
    with trace(pipe, [], edits={n: scale_tokens(list(range(8)), 0.0) for n in names}):
        edited = generate_dit(pipe, guidance_scale=guidance(arch))
    torch.testing.assert_close(same, ref, atol=1e-4, rtol=0)
    assert (edited - ref).abs().max() > 1e-3


def test_model_is_restored_after_an_exception(pipe):
    before = pipe.transformer.attn_processors
    with pytest.raises(KeyboardInterrupt):
        with trace(pipe, select(pipe, kind=("image->text", "block")), edits={
                "transformer_blocks.1.attn:text->text": lambda p, ctx: None}):
            generate_dit(pipe, steps=1)
            raise KeyboardInterrupt
    assert_restored(pipe.transformer, before)


def test_an_unknown_processor_is_refused_by_name(pipe):
    class Custom:
        def __call__(self, attn, hidden_states, *args, **kwargs):
            raise AssertionError("never called")

    before = pipe.transformer.attn_processors
    pipe.transformer.set_attn_processor({k: (Custom() if k.startswith("transformer_blocks.0.") else v)
                                         for k, v in before.items()})
    try:
        with pytest.raises(ValueError, match=r"'transformer_blocks.0.attn' uses Custom.*FluxAttnProcessor"):
            with trace(pipe, ["transformer_blocks.0.attn:image->text"]):
                pass
    finally:
        pipe.transformer.set_attn_processor(dict(before))  # it empties the dict it is given
    assert_restored(pipe.transformer, before)


def test_an_over_budget_keep_is_refused_before_step_0(pipe, arch):
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(MemoryError) as e:
            with trace(pipe, select(pipe, kind="joint"), keep=Keep(steps="all"), max_bytes=100_000):
                generate_dit(pipe, steps=4, guidance_scale=guidance(arch))
    finally:
        handle.remove()
    assert len(calls) == 1 and "4 steps" in str(e.value) and "heads='mean'" in str(e.value)


def test_a_cache_of_views_saves_and_loads(pipe, tmp_path):
    with trace(pipe, select(pipe, kind="image->text")[:2], keep=Keep(steps="sum", heads="mean")) as tr:
        generate_dit(pipe, steps=1)
    back = Cache.load(tr.cache.save(tmp_path / "views.safetensors"))
    assert list(back) == list(tr.cache) and all(torch.equal(back[n], tr.cache[n]) for n in back)
