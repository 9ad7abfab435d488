"""Tracing full tiny pipelines of each supported architecture: SD1.5, SD2.1 (linear projection, upcast) and SDXL."""
import pytest
import torch

from tiny_models import generate, one_thread, tiny_pipeline  # noqa: F401 (one_thread: autouse fixture)

from lab.hooks import Keep, points, select, trace


@pytest.fixture(scope="module", params=[("sd15", "ddim"), ("sd21", "ddim"), ("sdxl", "euler")], ids=lambda p: p[0])
def pipe(request):
    return tiny_pipeline(*request.param)


def test_capture_is_exact_and_shapes_follow_the_points(pipe):
    ref = generate(pipe, steps=2)
    names = select(pipe, kind=("attn1", "attn2", "block"))
    before = pipe.unet.attn_processors
    with trace(pipe, names, keep=Keep(steps="sum")) as tr:
        out = generate(pipe, steps=2)
    assert (out - ref).abs().max().item() <= 1e-5
    assert all(pipe.unet.attn_processors[k] is v for k, v in before.items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in pipe.unet.modules())
    pts = {p.name: p for p in points(pipe, image_size=64)}
    cache = tr.cache
    assert list(cache) == names
    for name in names:
        p, t = pts[name], cache[name]
        h, w = p.resolution
        assert cache.resolution(name) == (h, w)
        if p.kind == "block":
            assert t.shape == (2, 1, p.channels, h, w), name  # (branch, batch, channel, h, w)
        else:
            keys = 77 if p.kind == "attn2" else h * w
            assert t.shape == (2, 1, p.heads, h * w, keys), name  # (branch, batch, head, query, key)
            assert torch.allclose(t.sum(-1), torch.full((), 2.0), atol=1e-4)  # two steps of probabilities


def test_timesteps_and_layout_without_guidance(pipe):
    with trace(pipe, select(pipe, kind="attn2")[:1], keep=Keep(steps="all")) as tr:
        generate(pipe, prompt=["a red square", "a blue circle"], steps=2, guidance_scale=1.0)
    c = tr.cache
    name = next(iter(c))
    assert c.meta["layout"] == ["cond"] and c[name].shape[1:3] == (1, 2)
    assert c.meta["timesteps"] == [float(t) for t in pipe.scheduler.timesteps]
    assert c.meta["prompt"] == ["a red square", "a blue circle"] and c.meta["pipeline"] == type(pipe).__name__
