"""DIFT features from a DiT block's image tokens, on tiny SD3.5-medium and FLUX.1-dev pipelines."""
import numpy as np
import pytest
import torch

from analyses.dift import dit
from analyses.dift.features import block_features, condition, encode, featurize, prepare
from lab.world import Obj, Scene, render
from tiny_models import one_thread, tiny_dit_pipeline  # noqa: F401 (one_thread: autouse fixture)


@pytest.fixture(scope="module", params=["sd35m", "flux-dev"])
def pipe(request):
    return tiny_dit_pipeline(request.param)


@pytest.fixture(scope="module")
def image():
    return render(Scene((Obj("arrow", "red", "large", 60, 56, 22.0, "left"),), "white"))  # (128, 128, 3) uint8


def flux(pipe):
    return hasattr(pipe.transformer, "single_transformer_blocks")


def _reference(pipe, latents, t, block, cond, seeds, ensemble):
    """The block's image tokens from full transformer passes, read with a plain forward hook and put on the token
    grid by hand, averaged over the same noise draws."""
    module = dict(pipe.transformer.named_modules())[block]
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o[1]))  # (text, image) -> (b, h*w, C)
    out = []
    try:
        with torch.no_grad():
            for i, seed in enumerate(seeds):
                noise = torch.randn((ensemble, *latents.shape[1:]), generator=torch.Generator().manual_seed(seed))
                z0 = latents[i:i + 1].expand(ensemble, -1, -1, -1)
                rows = {k: v[i:i + 1].expand(ensemble, *v.shape[1:]) for k, v in cond.items()}
                pipe.transformer(**dit.call(pipe, z0, noise, t, rows))
                tokens = seen.pop()  # (E, h*w, C)
                h, w = latents.shape[-2] // 2, latents.shape[-1] // 2  # SD3 patch 2, Flux 2x2 packing
                out.append(tokens.mean(0).T.reshape(-1, h, w))  # (C, h, w)
    finally:
        handle.remove()
    return torch.stack(out)  # (N, C, h, w)


def test_features_are_the_block_image_tokens_on_the_grid(pipe, image):
    fmap = featurize(pipe, image, t=261, block="transformer_blocks.1", ensemble=2, size=64)[0]
    assert fmap.tensor.shape == (pipe.transformer.inner_dim, 4, 4) and fmap.input_size == (64, 64)
    assert fmap.meta["block"] == "transformer_blocks.1" and torch.isfinite(fmap.tensor).all()


def test_stopping_early_gives_the_block_output_of_a_full_pass(pipe, image):
    prep = prepare(pipe, [image, image[:, ::-1]], size=64)
    z = encode(pipe, prep.pixels)  # (2, 16, 8, 8)
    cond = condition(pipe, ["a red arrow", ""], prep.input_sizes[0])
    blocks = ["transformer_blocks.0", "single_transformer_blocks.1"] if flux(pipe) else ["transformer_blocks.0",
                                                                                         "transformer_blocks.2"]
    for block in blocks:
        ours = block_features(pipe, z, 300, [block], cond, prep.seeds, ensemble=2, batch_size=4)[block]
        ref = _reference(pipe, z, 300, block, cond, prep.seeds, 2)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_several_blocks_in_one_pass_equal_one_block_each(pipe, image):
    prep = prepare(pipe, [image], size=64)
    z, cond = encode(pipe, prep.pixels), condition(pipe, [""], prep.input_sizes[0])
    names = ["transformer_blocks.0", "transformer_blocks.1"]
    both = block_features(pipe, z, 100, names, cond, prep.seeds, ensemble=2)
    for block, value in both.items():
        alone = block_features(pipe, z, 100, [block], cond, prep.seeds, ensemble=2)[block]
        torch.testing.assert_close(value, alone, atol=1e-6, rtol=1e-5)


def test_features_are_deterministic_by_seed(pipe, image):
    def feats(seed):
        return featurize(pipe, image, t=500, block="transformer_blocks.0", ensemble=1, size=64, seed=seed)[0].tensor

    a = feats(0)
    assert torch.equal(a, feats(0)) and (a - feats(1)).abs().max() > 1e-4


def test_the_noise_is_flow_matching_at_sigma_t_over_1000():
    z0, noise = torch.ones(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    assert torch.equal(dit.noised(z0, noise, 250, 1000), torch.full((1, 2, 2, 2), 0.75))
    assert torch.equal(dit.noised(z0, noise + 2, 0, 1000), z0)


def test_default_block_and_bad_blocks(pipe, image):
    fmap = featurize(pipe, image, t=100, ensemble=1, size=64)[0]
    assert fmap.meta["block"] == f"transformer_blocks.{len(pipe.transformer.transformer_blocks) // 2}"
    with pytest.raises(ValueError, match=r"unknown block 'up_blocks.1'; blocks: transformer_blocks.0, "):
        featurize(pipe, image, block="up_blocks.1", size=64)
    with pytest.raises(ValueError, match=r"size=\(72, 64\) is not a multiple of 16"):
        featurize(pipe, image, size=(72, 64))


def test_the_pipeline_is_unchanged(pipe, image):
    before = dict(pipe.transformer.attn_processors)
    sigmas = pipe.scheduler.sigmas.clone()
    featurize(pipe, [image, image[:50]], ensemble=1, block="transformer_blocks.1", size="multiple")
    assert all(pipe.transformer.attn_processors[k] is v for k, v in before.items())
    assert torch.equal(pipe.scheduler.sigmas, sigmas) and not pipe.transformer.training
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in pipe.transformer.modules())


def test_the_notebooks_view_and_controls_read_a_transformer_block(pipe):
    from ipympl.backend_nbagg import Canvas  # the notebook's %matplotlib widget canvas
    from matplotlib.figure import Figure

    from analyses.dift.explore import controls, make_view, show_point

    fig = Figure()
    Canvas(fig)
    view = make_view(pipe, fig, ensemble=1, size=64)  # default block: the middle double-stream block
    double = [f"transformer_blocks.{i}" for i in range(len(pipe.transformer.transformer_blocks))]
    assert view.block == double[len(double) // 2] and view.fa.tensor.shape[-2:] == (4, 4)  # 64 px: 4x4 tokens
    box = controls(view)
    t_slider, block_menu, _ = box.children[0].children
    single = [f"single_transformer_blocks.{i}" for i in range(len(getattr(pipe.transformer, "single_transformer_blocks",
                                                                          [])))]
    assert block_menu.options == tuple(double + single) and block_menu.value == view.block
    x, y = view.pair.src_kps[0]
    show_point(view, x, y)
    before = fig.axes[2].images[-1].get_array().copy()  # the similarity map on B
    block_menu.value = block_menu.options[-1]  # the last block: Flux's last single-stream block, SD3's last joint
    assert view.block == block_menu.options[-1] and view.fa.meta["block"] == view.block
    assert not np.allclose(fig.axes[2].images[-1].get_array(), before)  # redrawn from the other block's features
    t_slider.value = 900
    assert view.fa.meta["t"] == view.fb.meta["t"] == 900 and view.fb.meta["block"] == view.block
