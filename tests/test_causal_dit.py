"""The causal notebooks' widgets (p2p, PAG, clockwork, classify) and the functions they call run on SD3 and FLUX.1
pipelines; what has no DiT meaning (clockwork's low_resolution_blocks) refuses them by name, saying what to use."""
import pytest

from tiny_models import one_thread, tiny_dit_pipeline  # noqa: F401 (one_thread: autouse fixture)

from analyses import classify, clockwork, p2p, pag
from analyses.classify.widgets import Picker
from analyses.clockwork.widgets import Noiser, Reuser
from analyses.p2p.widgets import Editor
from analyses.pag.widgets import Guide
from lab.world import make_scene, render

SUPPORTED = "It runs on StableDiffusionPipeline / StableDiffusionXLPipeline"


@pytest.fixture(scope="module", params=["sd3", "flux-schnell"])
def pipe(request):
    return tiny_dit_pipeline(request.param)


def refused(pipe, method):
    kind = "SD3" if type(pipe).__name__ == "StableDiffusion3Pipeline" else "FLUX.1"
    return pytest.raises(NotImplementedError, match=rf"^{method} is not available on {type(pipe).__name__} \({kind}, "
                                                     rf"a diffusion transformer\): .*{SUPPORTED}")


def test_prompt_to_prompt_runs_on_a_dit(pipe):
    """Accepted now (tests/test_p2p_dit.py holds what it computes): the editor draws a swap, generate returns rows."""
    ed = Editor(pipe, "a red square", "a blue square", steps=2, height=64, width=64, max_sequence_length=16)
    assert ed.update(cross_steps=2, self_steps=1) is not None and ed.message.value == ""
    out = p2p.generate(pipe, [p2p.Request("a red square", "a blue square")], steps=2, height=64, width=64,
                       max_sequence_length=16)
    assert out.images["edit 0"].shape == (1, 64, 64, 3)


def test_perturbed_attention_guidance_runs_on_a_dit(pipe):
    gd = Guide(pipe, steps=2, n=1, size=64)  # draws the caption without PAG and with it on 'mid'
    assert gd.w["layers"].options == ("mid", "all")
    images = pag.generate(pipe, ["a red square"], [0], steps=2, pag_scale=3.0, layers="all", height=64, width=64,
                          max_sequence_length=16)
    assert images.shape == (1, 64, 64, 3) and (images >= 0).all() and (images <= 1).all()


def test_layer_sensitivity_and_reuse_run_on_a_dit_and_only_low_resolution_blocks_refuses_it(pipe):
    from lab.hooks import select

    small = dict(height=64, width=64, max_sequence_length=16)
    noiser, reuser = Noiser(pipe, steps=2, n=1, **small), Reuser(pipe, steps=2, n=1, **small)
    blocks = select(pipe, kind="block")
    assert noiser.w["block"].options == tuple(blocks)
    assert reuser.w["blocks"].options == (*clockwork.middle_blocks(pipe), "middle blocks")
    fig = noiser.update(block=blocks[0], step=1, r=1.0)
    assert fig.axes[1].get_title() == f"noise r=1 on {blocks[0]} at step 1"
    assert reuser.update(blocks="middle blocks", k=2).axes[1].get_title() == "middle blocks run every 2"
    with pytest.raises(NotImplementedError, match=r"^low_resolution_blocks is not available on .*reusable_blocks"):
        clockwork.low_resolution_blocks(pipe)


def test_the_diffusion_classifier_runs_on_a_dit(pipe):
    """Acceptance: the classifier has a flow-matching counterpart (analyses.classify.flow; tests/test_classify_dit.py),
    so its picker and both scores run on SD3 and FLUX.1."""
    fig = Picker(pipe, [500], n=2).update(attribute="shape", scene=1)
    assert [len(ax.lines) for ax in fig.axes] == [0, 2]  # the scene, and its two captions' error curves
    image = render(make_scene(0, "test", n_objects=1))
    for score in (classify.errors, classify.attention):
        s = score(pipe, image, ["a red square", "a blue square"], [500])
        assert s.shape == (2, 1) and bool(s.isfinite().all())
