"""DAAM figures and the notebook's explorer: they draw on what they are given and leave matplotlib's state alone."""
import matplotlib
import pytest
from matplotlib.figure import Figure

from analyses import daam
from analyses.daam import plot
from analyses.daam.widgets import Explorer, layer_options, render
from tiny_models import one_thread  # noqa: F401


@pytest.fixture(scope="module")
def pipe(shapes_pipe):
    return shapes_pipe  # the built-in model, loaded once per session (tests/conftest.py)


@pytest.fixture(scope="module")
def run(pipe):
    return daam.generate(pipe, "a large red hexagon above a small blue circle on a white background", steps=3,
                         slices=True, mid=True, head_steps=[1, 2])


def test_plot_helpers_leave_rcparams_and_pyplot_alone(run, pipe):
    before = dict(matplotlib.rcParams)
    g = daam.global_maps(run)
    ax = Figure().add_subplot()
    assert plot.overlay(run.images[0], daam.word_map(g, pipe, "hexagon"), ax=ax, tau=0.4, cmap="jet") is ax
    fig = Figure()
    assert plot.word_grid(run.images[0], daam.word_maps(g, pipe), fig=fig) is fig
    assert isinstance(plot.layer_step_grid(run, pipe, "circle", run.images[0], n_groups=2), Figure)
    assert isinstance(plot.view(run, pipe, run.images[0], "red", steps=[1, 2], heads=[0]), Figure)
    assert dict(matplotlib.rcParams) == before
    import matplotlib.pyplot as plt
    assert plt.get_fignums() == []


def test_overlay_defaults_to_a_perceptual_colormap(run, pipe):
    ax = plot.overlay(run.images[0], daam.word_map(daam.global_maps(run), pipe, "red"))
    assert ax.images[-1].get_cmap().name == "inferno"


def test_explorer_update_redraws_from_the_cache(run, pipe):
    ex = Explorer(run, pipe, run.images[0])
    assert ex.w["word"].options == ("a", "large", "red", "hexagon", "above", "small", "blue", "circle", "on",
                                    "white", "background")
    first = ex.picture.value
    fig = ex.update(word="circle", steps=(1, 2), layer="8x8", head=1, branch="uncond", tau=0.3)
    assert isinstance(fig, Figure) and ex.picture.value != first and ex.message.value == ""
    assert "steps 1-2" in fig._suptitle.get_text()


def test_explorer_says_which_capture_option_gives_a_head_it_did_not_keep(run, pipe):
    ex = Explorer(run, pipe, run.images[0])
    assert ex.update(word="circle", steps=(0, 1), head=0) is None
    assert "capture with head_steps=[0, 1]" in ex.message.value
    fig = ex.update(steps=(0, 2), head=0)  # every step, cond: the published maps hold every head
    assert isinstance(fig, Figure) and ex.message.value == ""
    fig = ex.update(steps=(0, 1), head="all", branch="uncond")
    assert "all heads, averaged first" in fig._suptitle.get_text()


def test_layer_options_list_published_set_resolutions_and_layers(run):
    labels = [label for label, _ in layer_options(run)]
    assert labels[:5] == ["down+up (published)", "all captured", "16x16", "8x8", "4x4"]
    assert "mid.a0" in labels and "up2.a1" in labels


def test_render_is_a_plain_function_with_clear_errors(run, pipe):
    fig = render(run, pipe, run.images[0], "hexagon", steps=(0, 0), layer="16x16", head="all")
    assert isinstance(fig, Figure)
    with pytest.raises(ValueError, match="layer choice 'nope' is not one of: down\\+up"):
        render(run, pipe, run.images[0], "hexagon", layer="nope")
