"""DAAM on tiny SD1.5 / SD2.1 / SDXL pipelines built from their real configs: layers, shapes, any image size, SDXL's
two text encoders (alignment with its first tokenizer), open-vocabulary maps equal to the regular ones."""
import pytest
import torch

from analyses import daam
from tiny_models import one_thread, tiny_pipeline  # noqa: F401

PROMPT = "a hexagon left of a trapezoid"


@pytest.fixture(scope="module")
def sdxl():
    return tiny_pipeline("sdxl")


@pytest.fixture(scope="module")
def sdxl_run(sdxl):
    return daam.generate(sdxl, PROMPT, steps=2, slices=True, queries=True, height=64, width=64)


def test_sdxl_layers_are_its_down_and_up_cross_attention(sdxl):
    names = daam.daam_layers(sdxl)
    assert names and all(n.split(".")[0] in ("down_blocks", "up_blocks") for n in names)
    assert not any(n.startswith("down_blocks.0") for n in names)  # SDXL's first block has no attention
    assert len(daam.daam_layers(sdxl, mid=True)) == len(names) + 2  # two transformer layers in its mid block


def test_sdxl_aligns_with_its_first_tokenizer_and_maps_every_word(sdxl, sdxl_run):
    assert daam.tokenizer_of(sdxl) is sdxl.tokenizer
    g = daam.global_maps(sdxl_run.cache)
    assert g.maps.shape == (77, 8, 8) and g.image_size == (64, 64)
    maps = daam.word_maps(g, sdxl)
    assert list(maps) == ["a", "hexagon", "left", "of", "trapezoid"]
    assert all(m.shape == (64, 64) and 0 <= float(m.min()) and float(m.max()) <= 1 for m in maps.values())


def test_sdxl_open_vocabulary_of_the_prompt_reproduces_daam(sdxl, sdxl_run):
    ov = daam.open_vocab(sdxl_run.queries, sdxl, PROMPT)
    torch.testing.assert_close(ov.maps, daam.global_maps(sdxl_run.cache).maps, atol=1e-5, rtol=1e-4)
    assert daam.word_map(daam.open_vocab(sdxl_run.queries, sdxl, "a circle"), sdxl, "circle").shape == (64, 64)


@pytest.mark.parametrize("arch", ["sd15", "sd21"])
def test_sd1_and_sd2_at_a_non_square_size(arch):
    pipe = tiny_pipeline(arch)
    run = daam.generate(pipe, [PROMPT, "a circle"], steps=2, guidance=1.0, height=64, width=96, queries=True)
    g = daam.global_maps(run.cache, batch=1)
    assert g.maps.shape == (77, 8, 12) and g.image_size == (64, 96)
    assert daam.word_map(g, pipe, "circle").shape == (64, 96)
    res = {tuple(run.cache.resolution(n)) for n in daam.layer_names(run.cache)}
    assert res == {(8, 12), (4, 6), (2, 3)}  # 64x96 px: latents 8x12, then halved by each down block
    torch.testing.assert_close(daam.open_vocab(run.queries, pipe, "a circle", batch=1).maps, g.maps,
                               atol=1e-5, rtol=1e-4)
