"""The causal notebooks' widgets (p2p, PAG, clockwork, classify) and the functions they call refuse SD3 / Flux
pipelines by name, before any widget is made or the model runs, saying what they need and what is supported."""
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


def test_prompt_to_prompt_refuses_a_dit(pipe):
    with refused(pipe, "prompt-to-prompt"):
        Editor(pipe, "a red square", "a blue square", steps=2)
    with refused(pipe, "prompt-to-prompt"):
        p2p.generate(pipe, [p2p.Request("a red square", "a blue square")], steps=2)


def test_perturbed_attention_guidance_refuses_a_dit(pipe):
    with refused(pipe, "perturbed-attention guidance"):
        Guide(pipe, steps=2)
    with refused(pipe, "perturbed-attention guidance"):
        pag.generate(pipe, ["a red square"], [0], steps=2)


def test_layer_sensitivity_and_reuse_refuse_a_dit(pipe):
    for make in (Noiser, Reuser):
        with refused(pipe, "layer sensitivity and feature reuse"):
            make(pipe, steps=2)
    with refused(pipe, "layer sensitivity and feature reuse"):
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
