"""Layer sensitivity and feature reuse: the relative-noise edit, perturbed rows in one batch, and blocks skipped by a
swapped-in wrapper, on tiny SD1.5 / SD2.1 / SDXL pipelines built from their real configs; the study at small size."""
import numpy as np
import pytest
import torch

from analyses import clockwork
from lab.hooks import Context
from lab.world import make_scene, render
from devices import batch_close
from resume import rerun_without
from tiny_models import one_thread, tiny_pipeline  # noqa: F401

PROMPTS, SEEDS = ["a red square", "a blue circle"], [0, 1]


@pytest.fixture(scope="module", params=["sd15", "sd21", "sdxl"])
def pipe(request):
    return tiny_pipeline(request.param)


def _generate(pipe, steps=4):
    gens = [torch.Generator(pipe.device).manual_seed(s) for s in SEEDS]
    return pipe(PROMPTS, num_inference_steps=steps, generator=gens, height=64, width=64, output_type="np").images


def test_the_noise_edit_adds_noise_of_relative_size_r_to_its_rows_only():
    plan = [clockwork.Perturbation("mid_block", 2, 0.3)]
    ctx = Context("mid_block", 2, 0.0, ("uncond", "cond"), 4, (4, 4))  # 2 conditions x 2 images per branch
    x = torch.randn(8, 16, 4, 4)  # (branch * conditions * images, c, h, w)
    out = clockwork.noise_edit(plan, n=2)(x, ctx)
    moved = (out - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)  # (8,)
    torch.testing.assert_close(moved, torch.tensor([0, 0, 0.3, 0.3, 0, 0, 0.3, 0.3]))


def test_the_noise_edit_leaves_other_steps_and_blocks_alone():
    edit = clockwork.noise_edit([clockwork.Perturbation("mid_block", 2, 0.3)], n=1)
    x = torch.randn(2, 16, 4, 4)
    assert edit(x, Context("mid_block", 1, 0.0, ("cond",), 2, (4, 4))) is None
    assert edit(x, Context("up_blocks.0", 2, 0.0, ("cond",), 2, (4, 4))) is None


def test_with_r_0_every_perturbed_row_is_the_plain_image(pipe):
    plan = [clockwork.Perturbation("mid_block", 0, 0.0), clockwork.Perturbation("up_blocks.0", 1, 0.0)]
    out = clockwork.perturbed(pipe, PROMPTS, SEEDS, 3, plan, height=64, width=64)
    for p in plan:
        batch_close(torch.from_numpy(out[p]).float(), torch.from_numpy(out["plain"]).float(), atol=1.5, rtol=0)


def test_noise_on_a_block_moves_the_built_in_models_image(shapes_pipe):
    scene = make_scene(0, "test", n_objects=1)
    p = clockwork.Perturbation("down_blocks.0", 0, 2.0)
    out = clockwork.perturbed(shapes_pipe, [scene.caption], [scene.seed], 4, [p])
    assert clockwork.moved(out["plain"][0], out[p][0])["pixel rms"] > 1


def test_a_perturbation_of_an_unknown_block_is_refused_naming_the_blocks(pipe):
    with pytest.raises(ValueError, match=r"block must be one of down_blocks\.0, .*mid_block"):
        clockwork.perturbed(pipe, PROMPTS, SEEDS, 3, [clockwork.Perturbation("mid", 0, 0.5)], height=64, width=64)


def test_low_resolution_blocks_are_the_last_down_the_mid_and_the_first_up_block(pipe):
    last = len(pipe.unet.down_blocks) - 1
    assert clockwork.low_resolution_blocks(pipe) == [f"down_blocks.{last}", "mid_block", "up_blocks.0"]


def test_wrapped_blocks_reusing_nothing_give_the_plain_images_exactly(pipe):
    plain = _generate(pipe)
    with clockwork.reuse(pipe, clockwork.low_resolution_blocks(pipe), []):
        wrapped = _generate(pipe)
    assert np.array_equal(plain, wrapped)


def test_a_reused_block_does_not_run_on_the_reused_steps(pipe):
    inner = pipe.unet.mid_block.resnets[0]  # the block's compute (hooks on the block itself see the reused output)
    runs = []
    handle = inner.register_forward_hook(lambda m, a, o: runs.append(1))
    try:
        with clockwork.reuse(pipe, ["mid_block"], clockwork.every(2, 4)) as stats:
            reused = _generate(pipe)
    finally:
        handle.remove()
    assert len(runs) == 2 and (stats["mid_block"].ran, stats["mid_block"].reused) == (2, 2)
    assert not np.array_equal(reused, _generate(pipe))


def test_the_blocks_are_put_back_also_after_an_error(pipe):
    before = [id(m) for m in pipe.unet.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        with clockwork.reuse(pipe, clockwork.low_resolution_blocks(pipe), [1]):
            raise RuntimeError("boom")
    assert [id(m) for m in pipe.unet.modules()] == before


def test_reusing_an_unknown_block_is_refused_naming_the_blocks(pipe):
    with pytest.raises(ValueError, match=r"'mid' is not a block of this UNet; blocks: down_blocks\.0, .*mid_block"):
        with clockwork.reuse(pipe, ["mid"], [1]):
            pass


def test_every_k_reuses_all_but_the_steps_that_run():
    assert clockwork.every(2, 5) == [1, 3] and clockwork.every(3, 7) == [1, 2, 4, 5] and clockwork.every(1, 4) == []


def test_an_image_has_not_moved_from_itself_and_a_recoloured_one_has():
    scene = make_scene(0, "test", n_objects=1)
    image = render(scene)
    assert clockwork.moved(image, image) == {"pixel rms": 0.0, "reading changed": False}
    other = render(make_scene(1, "test", n_objects=1))
    assert clockwork.moved(image, other)["pixel rms"] > 0


def test_a_world_2_image_is_read_by_world_2s_parser_background_name_included():
    from analyses.clockwork.score import reading
    scene = make_scene(2, "test", n_objects=1, world=2)
    obj = scene.objects[0]
    assert reading(render(scene), 2) == (scene.background, ((obj.colour, obj.shape, obj.size),))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """(out, section) of the study run once at LAB_SIZE=small."""
    from analyses.clockwork.study import run
    out = tmp_path_factory.mktemp("clockwork")
    return out, run(out)


def test_the_study_at_small_size_reports_sensitivity_and_reuse(small_run):
    tmp_path, text = small_run
    assert "| mid_block |" in text and "| low-res blocks, run every 2 |" in text and "Goal:" in text
    assert (tmp_path / "clockwork_sensitivity.png").exists() and (tmp_path / "clockwork_reuse.png").exists()


def test_a_rerun_reads_its_sensitivity_batch_back_with_the_same_table(small_run):
    from analyses.clockwork.study import run
    out, text = small_run
    again, kept = rerun_without(out, "clockwork", [], lambda: run(out))
    assert kept == ["sensitivity-0.pkl"]  # one image at small size
    # the part before "Reuse:": the reuse table times the UNet, so its savings differ from run to run
    assert again.split("Reuse:")[0] == text.split("Reuse:")[0]
