"""The guided tour's library (lab/tour.py) on the built-in model: tokens, the readable loop, captures and figures."""
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from lab import tour
from lab.trajectory import predict_x0

STEPS = 3


@pytest.fixture(scope="module")
def pipe(shapes_pipe):
    torch.set_num_threads(1)
    return shapes_pipe


@pytest.fixture(scope="module")
def run(pipe):
    return tour.denoise(pipe, "a red circle", seed=0, steps=STEPS, guidance=7.5)


def test_tokens_have_start_end_and_padding(pipe):
    rows = tour.tokens(pipe, "a red circle")
    assert len(rows) == pipe.tokenizer.model_max_length
    assert (rows[0].text, rows[0].id, rows[0].role) == ("<|startoftext|>", 49406, "start")
    assert [r.text for r in rows if r.role == "word"] == ["a</w>", "red</w>", "circle</w>"]
    assert (rows[4].id, rows[4].role) == (49407, "end")
    assert {r.id for r in rows if r.role == "padding"} == {49407}
    table = tour.token_table(rows)
    assert "<|startoftext|>" in table and "49406" in table and "49407" in table
    assert table.splitlines()[-1].split() == ["...", "70", "more", "padding,", "positions", "7-76"]
    assert max(len(line) for line in table.splitlines()) <= 40  # fits the tour's narrow output without wrapping


def test_similarity_is_cosine(pipe):
    sim = tour.similarity(tour.embed(pipe, "a red circle"))
    assert sim.shape == (77, 77)
    assert torch.allclose(sim.diagonal(), torch.ones(77), atol=1e-5)


def test_readable_loop_equals_pipeline(pipe, run):
    ref = pipe("a red circle", num_inference_steps=STEPS, guidance_scale=7.5,
               generator=torch.Generator("cpu").manual_seed(0), output_type="np").images[0]
    assert np.abs(ref - run.image).max() < 1e-4


def test_capture_shapes_per_step(run):
    latent = (4, 16, 16)
    assert run.latents.shape == (STEPS + 1, *latent)
    for t in (run.eps_uncond, run.eps_cond, run.x0):
        assert t.shape == (STEPS, *latent)
    assert run.images.shape == (STEPS, 128, 128, 3) and run.images.dtype == np.uint8
    assert run.timesteps.shape == run.alphas.shape == (STEPS,)
    assert torch.all(run.timesteps[:-1] > run.timesteps[1:])  # noisy to clean


def test_guided_prediction_recomputes_from_stored_branches(run):
    g = run.guided(1, 2.0)
    assert torch.allclose(g, run.eps_uncond[1] + 2.0 * (run.eps_cond[1] - run.eps_uncond[1]))
    assert torch.allclose(run.guided(1, 1.0), run.eps_cond[1], atol=1e-5)  # u + (c - u) rounds


def test_divergence_is_zero_for_identical_prompts(pipe, run):
    same = tour.denoise(pipe, "a red circle", seed=0, steps=STEPS, guidance=7.5)
    assert torch.all(tour.divergence(run, same) == 0)


def test_callbacks_return_figures(pipe, run):
    rows = tour.tokens(pipe, "a red circle")
    assert isinstance(tour.text_figure(rows, tour.similarity(tour.embed(pipe, "a red circle"))), Figure)
    assert isinstance(tour.step_figure(run, 0), Figure)
    assert isinstance(tour.step_figure(run, STEPS - 1, guidance=3.0, pipe=pipe), Figure)
    assert isinstance(tour.step_figure(run, 1, guidance=3.0), Figure)  # no pipe: the latent x0-hat
    assert isinstance(tour.compare_figure(run, run, 1), Figure)


def test_step_outside_run_is_an_error(run):
    with pytest.raises(ValueError, match=f"step {STEPS} is outside"):
        tour.step_figure(run, STEPS)


def test_widgets_show_the_run_they_were_given(pipe, run):
    text = tour.text_explorer(pipe, "a red circle")
    prompt, (table, _) = text.children[0], text.children[1].children
    assert prompt.value == "a red circle" and "red&lt;/w&gt;" in table.value and "49406" in table.value
    assert "<|startoftext|>" not in table.value  # escaped: as a tag the browser would show nothing
    prompt.value = "a green square"  # Enter in the box: the table follows
    assert "green&lt;/w&gt;" in table.value and "red&lt;/w&gt;" not in table.value

    steps = tour.step_explorer(pipe, run)
    (step, guidance), (prompt, button) = steps.children[0].children, steps.children[1].children
    assert (step.min, step.max, step.value) == (1, STEPS, 1) and guidance.value == run.guidance
    assert prompt.value == run.prompt and button.description == "run the model again"

    compare = tour.compare_explorer(run, run)
    assert (compare.children[0].max, compare.children[0].value) == (STEPS, STEPS // 2 + 1)


def test_x0_recomputed_from_stored_tensors_matches_the_loop(run):
    for step in range(STEPS):
        x0 = predict_x0(tour._scaled(run, step), run.guided(step), run.alphas[step], run.prediction_type)
        assert torch.allclose(x0, run.x0[step], atol=1e-4)
    assert torch.allclose(tour._scaled(run, 0), run.latents[0], atol=1e-4)  # DDIM does not rescale its input
