"""analyses.schedules.views: the schedules notebook's figures and controls, called as plain functions."""
import pytest
from tiny_models import one_thread  # noqa: F401  (autouse: one thread for this module)

from analyses import schedules as S
from analyses.schedules.views import Scrubber, schedule_explorer, schedule_figure, step_label


@pytest.fixture(scope="module")
def published():
    return S.published_schedules()


@pytest.mark.parametrize("spacing, zero_snr, first", [("leading", False, 901), ("trailing", True, 999)])
def test_schedule_figure_marks_the_visited_timesteps(published, spacing, zero_snr, first):
    fig = schedule_figure(published, "sd-1.5", spacing, 10, zero_snr)
    left, right = fig.axes
    assert len(left.lines) == 2  # the schedule and its zero-terminal-SNR rescale
    (marks,) = right.collections
    offsets = marks.get_offsets()  # (t, log SNR); log SNR is -inf (masked) where the SNR is zero
    assert offsets.shape[0] == 10 and offsets.data[0, 0] == first
    assert right.get_title().startswith(f"{spacing}, 10 steps")
    assert ("terminal SNR 0.00e+00" in right.get_title()) == zero_snr


def test_schedule_explorer_offers_every_schedule_and_spacing(published):
    box = schedule_explorer(published, steps=10)
    (name, steps, zero_snr), spacing, out = box.children[0].children, box.children[1], box.children[2]
    assert list(name.options) == list(published) and name.value == "sd-1.5" and steps.value == 10
    assert list(spacing.options) == list(S.SPACINGS) and zero_snr.value is False
    assert type(out).__name__ == "Output"


def test_scrubber_follows_a_run_and_regenerates(shapes_pipe):
    scrub = Scrubber({"shapes": shapes_pipe}, "a large red circle on a white background", seed=0, steps=3)
    assert scrub.run.steps == 3 and scrub.label(0) == step_label(scrub.run, 0)
    assert scrub.label(2).startswith("step 3/3: t = ")
    fig = scrub.figure(1)
    assert len(fig.axes) == 3 and len(fig.axes[2].lines) == 4  # three bands and the step marker
    box = scrub.box
    assert "lab-scrubber" in box._dom_classes and scrub.text.value.startswith("step 1/3")
    scrub.scrub.value = 2
    assert scrub.text.value.startswith("step 2/3")
    first = scrub.run
    scrub.button.click()  # same model, prompt and seed: the same generation again
    assert scrub.run is not first and (scrub.run.x0_images == first.x0_images).all()
    scrub.seed.value = 1
    scrub.button.click()
    assert scrub.run.seed == 1 and (scrub.run.image != first.image).any()
