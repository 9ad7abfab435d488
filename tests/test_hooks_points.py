"""lab.hooks.points / select on UNets built from the real SD1.5, SD2.1 and SDXL configurations."""
import pytest
import torch

from tiny_models import one_thread, tiny_unet  # noqa: F401 (one_thread: autouse fixture)

from lab.hooks import points, select
from lab.hooks.points import check_names


@pytest.fixture(scope="module", params=["sd15", "sd21", "sdxl"])
def unet(request):
    return tiny_unet(request.param)


def _unet_inputs(unet, latent=(8, 8), batch=1):
    torch.manual_seed(0)
    sample = torch.randn(batch, 4, *latent)
    text = torch.randn(batch, 7, unet.config.cross_attention_dim)
    kw = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, pooled), "time_ids": torch.randn(batch, 6)}
    return (sample, torch.tensor(10), text), kw


def _run_recording(unet, latent):
    """Forward the UNet with a hook on every point; return [(name, output spatial size or query count)]."""
    modules = dict(unet.named_modules())
    seen, handles = [], []
    for p in points(unet):
        def hook(mod, args, out, name=p.name):
            out = out[0] if isinstance(out, tuple) else out
            if p_kinds[name] in ("attn1", "attn2"):
                seen.append((name, args[0].shape[1]))  # (B, q, c): q queries
            elif p_kinds[name] == "projection":
                seen.append((name, (out.shape[1], out.shape[2])))  # (B, tokens, c)
            else:
                seen.append((name, tuple(out.shape[-2:])))
        handles.append(modules[p.name].register_forward_hook(hook))
    p_kinds = {p.name: p.kind for p in points(unet)}
    args, kw = _unet_inputs(unet, latent)
    try:
        with torch.no_grad():
            unet(*args, **kw)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_names_are_real_module_paths(unet):
    modules = dict(unet.named_modules())
    pts = points(unet)
    assert pts and all(p.name in modules for p in pts)
    assert {p.kind for p in pts} == {"attn1", "attn2", "block", "projection", "resnet", "transformer"}
    attn = [p.name for p in pts if p.kind in ("attn1", "attn2")]
    proj = [p.name for p in pts if p.kind == "projection"]
    assert proj == [f"{a}.{x}" for a in attn for x in ("to_q", "to_k", "to_v", "to_out.0")]


def test_points_are_listed_in_forward_order(unet):
    seen = _run_recording(unet, (8, 8))
    assert [name for name, _ in seen] == [p.name for p in points(unet)]


def test_resolution_matches_the_tensors_of_a_non_square_image(unet):
    latent = (8, 16)
    seen = dict(_run_recording(unet, latent))
    for p in points(unet, image_size=(latent[0] * 8, latent[1] * 8)):
        h, w = p.resolution
        if p.kind == "projection":  # text tokens (7 here) for cross-attention keys and values, else h*w queries
            assert seen[p.name] == (7 if p.reads_text() else h * w, p.channels), p.name
            continue
        assert seen[p.name] == (h * w if p.kind in ("attn1", "attn2") else (h, w)), p.name


def test_head_layout_follows_the_real_configs():
    sd15 = [p for p in points(tiny_unet("sd15")) if p.kind == "attn2"]
    assert {p.heads for p in sd15} == {8}  # SD1.5: attention_head_dim=8 is the head count
    sd21 = {p.block_index: p.heads for p in points(tiny_unet("sd21")) if p.kind == "attn2" and p.block == "down"}
    assert sd21 == {0: 5, 1: 10, 2: 20}
    sdxl = [p for p in points(tiny_unet("sdxl")) if p.kind == "attn2"]
    assert all(p.heads * p.head_dim == p.channels for p in sdxl)
    per_block = {(p.block, p.block_index): 0 for p in sdxl}
    for p in sdxl:
        per_block[(p.block, p.block_index)] += 1
    # SDXL: no attention in down_blocks.0; 2 transformer layers per attention at level 1, (reduced) 2 at level 2
    assert ("down", 0) not in per_block
    assert per_block[("down", 1)] == 2 * 2 and per_block[("mid", 0)] == 2


def test_select_filters_combine():
    unet = tiny_unet("sd15")
    attn2 = select(unet, kind="attn2")
    assert len(attn2) == 16 and all(n.endswith("attn2") for n in attn2)
    up = select(unet, kind=("attn1", "attn2"), block="up")
    assert len(up) == 18 and all(n.startswith("up_blocks") for n in up)
    lowres = select(unet, kind="attn2", resolution=(2, 2), image_size=64)
    assert lowres and all(p.resolution == (2, 2) for p in points(unet, 64) if p.name in lowres)
    two = select(unet, kind="attn2", resolution=[2, 8], image_size=64)
    assert len(two) == len(lowres) + 5 and set(lowres) < set(two)  # 8x8: down_blocks.0 (2) and up_blocks.3 (3)
    assert select(unet, pattern="up_blocks.1.*attn2") == [n for n in attn2 if n.startswith("up_blocks.1.")]
    assert select(unet, kind="block") == [f"down_blocks.{i}" for i in range(4)] + ["mid_block"] + [
        f"up_blocks.{i}" for i in range(4)]


def test_select_errors_name_the_valid_values():
    unet = tiny_unet("sd15")
    with pytest.raises(ValueError, match="kinds: attn1, attn2"):
        select(unet, kind="cross")
    with pytest.raises(ValueError, match="resolutions there: 8x8"):
        select(unet, kind="attn2", resolution=3, image_size=64)
    with pytest.raises(ValueError, match="needs image_size"):
        select(unet, resolution=8)


def test_unknown_name_suggests_nearest_real_ones():
    unet = tiny_unet("sd15")
    with pytest.raises(ValueError) as e:
        check_names(unet, ["up_blocks.1.attentions.0.transformer_block.0.attn2"])
    assert "up_blocks.1.attentions.0.transformer_blocks.0.attn2" in str(e.value)


def test_non_unet_models_are_not_supported_yet():
    from diffusers import Transformer2DModel

    dit = Transformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, sample_size=8, patch_size=2,
                             num_layers=1, norm_type="ada_norm_zero", num_embeds_ada_norm=10)
    for model in (dit, torch.nn.Linear(2, 2)):
        with pytest.raises(NotImplementedError, match="not supported yet.*UNet2DConditionModel"):
            points(model)

    class FakeDiTPipeline:
        transformer = dit

    with pytest.raises(NotImplementedError, match=r"transformer=Transformer2DModel"):
        select(FakeDiTPipeline(), kind="attn2")
