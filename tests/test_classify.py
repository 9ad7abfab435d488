"""The diffusion model as a classifier: denoising-error and attention scores on tiny SD1.5 / SD2.1 / SDXL pipelines,
the binding pairs, and the built-in model preferring a scene's true caption."""
import numpy as np
import pytest
import torch

from analyses import classify
from lab.world import render
from tiny_models import one_thread, tiny_pipeline  # noqa: F401

IMAGE = np.zeros((64, 64, 3), np.uint8) + np.array([200, 30, 30], np.uint8)


@pytest.fixture(scope="module", params=["sd15", "sd21", "sdxl"])
def pipe(request):
    return tiny_pipeline(request.param)


def test_errors_are_one_per_caption_and_timestep_and_equal_for_equal_captions(pipe):
    e = classify.errors(pipe, IMAGE, ["a red square", "a red square", "a blue circle"], [100, 500, 900])
    assert e.shape == (3, 3) and bool((e > 0).all())
    torch.testing.assert_close(e[0], e[1])  # the same noise for every caption
    assert not torch.equal(e[0], e[2])


def test_attention_agreement_is_one_per_caption_and_timestep(pipe):
    a = classify.attention(pipe, IMAGE, ["a red square", "a blue circle"], [100, 900])
    assert a.shape == (2, 2) and bool(((a > 0) & (a <= 1)).all())


def test_rank_puts_the_least_error_first():
    assert classify.rank(torch.tensor([[3.0, 3.0], [1.0, 2.0]])) == [1, 0]
    assert classify.rank(torch.tensor([[3.0, 3.0], [1.0, 2.0]]), higher_is_better=True) == [0, 1]


def test_binding_pairs_swap_the_objects_attribute():
    for attribute in classify.ATTRIBUTES:
        for p in classify.pairs(3, attribute):
            a, b = p.scene.objects
            assert getattr(a, attribute) != getattr(b, attribute)
            assert getattr(a, attribute) in p.swapped and p.swapped != p.true


def test_world_2_binding_pairs_swap_colours_the_background_allows():
    from lab.world import backgrounds
    for p in classify.pairs(3, "colour", world=2):
        a, b = p.scene.objects
        assert p.scene.world == 2 and p.scene.background in p.swapped and p.swapped != p.true
        assert all(backgrounds.allowed(p.scene.backdrop, o.colour) for o in (a, b))  # so either may take the other's


def test_an_unknown_attribute_is_refused_naming_the_attributes():
    with pytest.raises(ValueError, match="'size' is not one of: colour, shape"):
        classify.pairs(1, "size")


def test_the_built_in_model_prefers_the_true_caption_of_a_rendered_scene(shapes_pipe):
    p = classify.pairs(1, "colour")[0]
    e = classify.errors(shapes_pipe, render(p.scene), [p.true, p.swapped], classify.timesteps(4))
    assert classify.rank(e) == [0, 1]


def test_the_study_at_small_size_reports_each_attribute_and_method(tmp_path):
    from analyses.classify.study import run
    text = run(tmp_path)
    assert all(f"| {a} | {m} |" in text for a in classify.ATTRIBUTES for m in ("denoising error",
                                                                                "attention agreement"))
    assert (tmp_path / "classify_margins.png").exists()
