"""The tour's readable flow-matching loop (lab/tour_flow.py) on tiny SD3 / SD3.5 pipelines: it equals pipe(...)."""
import numpy as np
import pytest
import torch

from lab import tour
from tiny_models import one_thread, tiny_dit_pipeline  # noqa: F401 (one_thread: autouse fixture)

STEPS = 3
T5 = 16  # max_sequence_length, to stay fast


def _plain(pipe, guidance, output_type="np"):
    return pipe("a red circle", num_inference_steps=STEPS, guidance_scale=guidance, max_sequence_length=T5,
                generator=torch.Generator("cpu").manual_seed(0), output_type=output_type).images[0]


@pytest.fixture(scope="module", params=["sd3", "sd35m"])
def pipe_run(request):
    pipe = tiny_dit_pipeline(request.param)
    return pipe, tour.denoise(pipe, "a red circle", seed=0, steps=STEPS, guidance=7.0, max_sequence_length=T5)


def test_readable_loop_equals_pipeline_bit_for_bit(pipe_run):
    pipe, run = pipe_run
    assert np.array_equal(run.image, _plain(pipe, 7.0))
    assert torch.equal(run.latents[-1], _plain(pipe, 7.0, "latent").float())


def test_capture_shapes_per_step(pipe_run):
    _, run = pipe_run
    assert run.latents.shape == (STEPS + 1, 16, 8, 8)
    assert run.eps_uncond.shape == run.eps_cond.shape == run.x0.shape == (STEPS, 16, 8, 8)
    assert run.images.shape == (STEPS, 64, 64, 3) and run.prediction_type == "flow"
    assert run.sigmas.shape == (STEPS + 1,) and run.sigmas[0] == 1 and run.sigmas[-1] == 0


def test_x0_at_the_last_step_is_the_final_latent(pipe_run):
    _, run = pipe_run
    torch.testing.assert_close(run.x0[-1], run.latents[-1], rtol=0, atol=1e-6)


def test_guided_velocity_recomputes_the_step(pipe_run):
    _, run = pipe_run
    s = run.sigmas.float()
    for i in range(STEPS):
        torch.testing.assert_close(run.latents[i + 1], run.latents[i] + (s[i + 1] - s[i]) * run.guided(i),
                                   rtol=0, atol=1e-6)


def test_flux_is_refused_by_name():
    with pytest.raises(ValueError, match="FluxPipeline.*SD3.*follow"):
        tour.denoise(tiny_dit_pipeline("flux-schnell"), "a red circle", steps=1)


def test_flow_options_refused_on_a_unet(shapes_pipe):
    with pytest.raises(ValueError, match="max_sequence_length= apply to SD3"):
        tour.denoise(shapes_pipe, "a red circle", steps=1, max_sequence_length=T5)


def test_step_figure_recomputes_x0_at_another_guidance(pipe_run):
    pipe, run = pipe_run
    fig = tour.step_figure(run, 1, guidance=2.0, pipe=pipe)
    titles = [a.get_title() for a in fig.axes]
    assert "predicted velocity (guided)\n(recomputed at guidance 2)" in titles
    assert any(t.startswith("predicted clean image x0-hat") for t in titles)


@pytest.mark.parametrize("arch, windows", [("sd3", ["CLIP", "T5"]), ("flux-schnell", ["T5"])])
def test_text_explorer_shows_every_window_the_transformer_reads(arch, windows):
    pipe = tiny_dit_pipeline(arch)
    rows = tour.tokens(pipe, "a red circle", max_sequence_length=T5)
    assert list(dict.fromkeys(r.encoder for r in rows)) == windows and len(rows) == 77 * (arch == "sd3") + T5
    assert [r.text for r in rows if r.encoder == "T5" and r.role == "word"] == ["▁a", "▁red", "▁circle"]
    assert tour.embed(pipe, "a red circle", max_sequence_length=T5).shape == (len(rows), 64)  # T5's width
    box = tour.text_explorer(pipe, "a red circle", max_sequence_length=T5)
    prompt, (table, _) = box.children[0], box.children[1].children
    assert all(f"{w} window" in table.value for w in windows) and "▁red" in table.value
    prompt.value = "a green square"
    assert "▁green" in table.value and "▁red" not in table.value


def test_step_explorer_scrubs_and_reruns_an_sd3_run(pipe_run, monkeypatch):
    pipe, run = pipe_run
    shown = []
    monkeypatch.setattr(tour, "_show", lambda out, fig: shown.append(fig._suptitle.get_text()))
    box = tour.step_explorer(pipe, run, max_sequence_length=T5)
    (step, guidance), (prompt, button) = box.children[0].children, box.children[1].children
    step.value = 2
    assert shown[-1].startswith("'a red circle': step 2 of 3") and "guidance 7" in shown[-1]
    prompt.value, guidance.value = "a blue square", 3.0
    button.click()  # the whole trajectory again, with the T5 window it was made with
    assert shown[-1].startswith("'a blue square': step 2 of 3") and shown[-1].endswith("guidance 3")
