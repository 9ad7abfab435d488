"""ConceptAttention (method="concept") on tiny SD3.5-medium and FLUX.1-dev pipelines: observe-only concept maps from
the attention layers' output space, through the same daam.generate / global_maps / word_map."""
import pytest
import torch

from tiny_models import generate_dit, one_thread, tiny_dit_pipeline, tiny_pipeline  # noqa: F401 (one_thread: autouse)

from analyses import daam

PROMPT = "a red square next to a blue circle"
CONCEPTS = ["square", "circle", "red"]


@pytest.fixture(scope="module", params=["sd35m", "flux-dev"])
def pipe(request):
    return tiny_dit_pipeline(request.param)


def run_of(pipe, concepts=CONCEPTS, **kw):
    return daam.generate(pipe, PROMPT, seed=0, steps=2, height=64, width=64, max_sequence_length=16,
                         method="concept", concepts=concepts, **kw)


@pytest.fixture(scope="module")
def run(pipe):
    return run_of(pipe)


def test_the_image_is_bit_identical_and_the_model_restored(pipe):
    ref = generate_dit(pipe, PROMPT)
    before = dict(pipe.transformer.attn_processors)
    with daam.capture(pipe, PROMPT, method="concept", concepts=CONCEPTS, max_sequence_length=16) as cap:
        out = generate_dit(pipe, PROMPT)
    assert torch.equal(out, ref)
    assert all(pipe.transformer.attn_processors[k] is v for k, v in before.items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in pipe.transformer.modules())
    assert len(cap.cache) == len(pipe.transformer.transformer_blocks) + len(
        getattr(pipe.transformer, "single_transformer_blocks", None) or [])


def test_every_layer_and_step_is_kept_per_concept(pipe, run):
    name = "transformer_blocks.0.attn"
    assert run.cache[name].shape == (2, 1, 16, 3) and run.cache.axes[name] == ("step", "batch", "query", "concept")
    assert run.cache.meta["daam"]["concepts"] == CONCEPTS and run.images.shape == (1, 64, 64, 3)


def test_maps_are_a_softmax_over_concepts_and_not_uniform(run):
    g = daam.global_maps(run)
    assert g.maps.shape == (3, 4, 4) and g.concepts == tuple(CONCEPTS) and g.image_size == (64, 64)
    torch.testing.assert_close(g.maps.sum(0), torch.ones(4, 4))
    assert g.maps.std(dim=(1, 2)).min() > 1e-4  # each concept's map varies over the image
    assert (g.maps.mean(dim=(1, 2)) - 1 / 3).abs().max() > 1e-3  # and the concepts differ


def test_word_maps_name_the_concepts(pipe, run):
    g = daam.global_maps(run)
    m = daam.word_map(g, pipe, "Circle")
    assert m.shape == (64, 64) and float(m.min()) == 0.0 and abs(float(m.max()) - 1) < 1e-4
    assert list(daam.word_maps(g, pipe)) == CONCEPTS
    with pytest.raises(ValueError, match="concept 'dog' was not captured; concepts: square, circle, red"):
        daam.word_map(g, pipe, "dog")


def test_slices_by_step_and_block_average_into_the_whole(pipe, run):
    whole = daam.global_maps(run).maps
    by_step = (daam.global_maps(run, steps=[0]).maps + daam.global_maps(run, steps=[1]).maps) / 2
    torch.testing.assert_close(by_step, whole)
    if hasattr(pipe.transformer, "single_transformer_blocks"):
        n = {"double": 2, "single": 2}
        by_block = sum(daam.global_maps(run, blocks=b).maps * k for b, k in n.items()) / 4
        torch.testing.assert_close(by_block, whole)
    with pytest.raises(ValueError, match="heads=0 needs every head kept: .*head_steps='all'"):
        daam.global_maps(run, heads=0)


def test_head_slices_sum_into_the_whole(pipe, run):
    per_head = run_of(pipe, head_steps="all")
    name = "transformer_blocks.0.attn"
    heads = pipe.transformer.config.num_attention_heads
    assert per_head.cache[name].shape == (2, 1, heads, 16, 3)
    torch.testing.assert_close(per_head.cache[name].sum(2), run.cache[name], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(daam.global_maps(per_head).maps, daam.global_maps(run).maps, atol=1e-5, rtol=1e-4)
    one = daam.global_maps(per_head, heads=[0])
    assert one.heads == (0,) and not torch.allclose(one.maps, daam.global_maps(run).maps)
    with pytest.raises(ValueError, match="head 99 is out of range"):
        daam.global_maps(per_head, heads=99)


def test_reordering_the_concepts_permutes_their_maps(pipe, run):
    again = daam.global_maps(run_of(pipe, concepts=CONCEPTS[::-1])).maps
    torch.testing.assert_close(again, daam.global_maps(run).maps.flip(0), atol=1e-5, rtol=1e-4)


def test_bad_requests_are_refused_by_name(pipe):
    with pytest.raises(ValueError, match="method='attention'; valid: 'daam', 'concept'"):
        daam.capture(pipe, PROMPT, method="attention")
    with pytest.raises(ValueError, match=r"concepts=\[\]: give a list of words"):
        daam.capture(pipe, PROMPT, method="concept", concepts=[])
    with pytest.raises(ValueError, match="slices do not apply to method='concept'"):
        daam.capture(pipe, PROMPT, method="concept", concepts=CONCEPTS, slices=True)
    with pytest.raises(MemoryError, match="3 concepts over 2 steps .* over max_bytes"):
        run_of(pipe, max_bytes=1000)


def test_a_unet_is_refused():
    with pytest.raises(ValueError, match="method='concept' needs a diffusion transformer.*UNet2DConditionModel"):
        daam.capture(tiny_pipeline("sd15"), "a red square", method="concept", concepts=["square"])


def test_concepts_that_are_the_prompt_tokens_follow_the_text_stream(pipe):
    """The reference: concepts started from the prompt's own text states go through every block exactly as the text
    stream does, so each layer's map is the image output . the text stream's attention output (to_add_out's input)."""
    from analyses.daam.concept import ConceptCapture

    seen, text_out, image_out, joint_out = [], {}, {}, {}
    dit = pipe.transformer
    hooks = [dit.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["encoder_hidden_states"]), with_kwargs=True)]
    generate_dit(pipe, PROMPT, steps=1)
    cond = -1  # SD3 runs [uncond, cond]; Flux one cond row
    text = seen[0][cond]  # (L, joint_dim): the prompt's encoder states
    cap = ConceptCapture(pipe, [f"c{i}" for i in range(len(text))], PROMPT, max_sequence_length=16)
    cap.embeds = text.float()

    def first_input(into, i):
        def hook(module, args):
            into.setdefault(i, args[0][cond])  # (tokens, inner): the first call, the layer's own

        return hook

    for i, block in enumerate(dit.transformer_blocks):
        if not getattr(block, "context_pre_only", False):
            hooks.append(block.attn.to_add_out.register_forward_pre_hook(first_input(text_out, i)))
            hooks.append(block.attn.to_out[0].register_forward_pre_hook(first_input(image_out, i)))
    n = len(text)
    for i, block in enumerate(getattr(dit, "single_transformer_blocks", None) or []):  # Flux: [text, image] output
        hooks.append(block.attn.register_forward_hook(
            lambda m, a, out, i=i: first_input(joint_out, f"single_transformer_blocks.{i}.attn")(m, (out,))))
    try:
        with cap:
            generate_dit(pipe, PROMPT, steps=1)
    finally:
        for h in hooks:
            h.remove()
    assert text_out
    pairs = {f"transformer_blocks.{i}.attn": (image_out[i], o_t) for i, o_t in text_out.items()}
    pairs.update({name: (out[n:], out[:n]) for name, out in joint_out.items()})
    for name, (o_x, o_t) in pairs.items():
        want = o_x.float() @ o_t.float().T  # (image tokens, text tokens)
        torch.testing.assert_close(cap.cache[name][0, 0], want, atol=1e-4, rtol=1e-4)
