"""analyses.svd.judge and .views: parser verdicts on rendered scenes, and the notebook's figures without a browser."""
import dataclasses

import numpy as np
import pytest
from tiny_models import one_thread  # noqa: F401  (autouse: one thread for this module)

from analyses.svd import changed, changed_scene, kept
from analyses.svd.judge import MIN_AREA, read
from analyses.svd.views import Explorer, trajectory_figure
from lab.world import make_scene, parse, render


def test_changed_scene_changes_one_attribute_of_the_first_object():
    scene = make_scene(11, "test", n_objects=2)
    for attribute in ("colour", "size"):
        target = changed_scene(scene, attribute)
        assert getattr(target.objects[0], attribute) != getattr(scene.objects[0], attribute)
        assert target.objects[1] == scene.objects[1] and target.caption != scene.caption


def test_a_rendered_edit_is_judged_changed_and_kept():
    scene = make_scene(12, "test", n_objects=1)
    target = changed_scene(scene, "colour")
    source, edited = parse(render(scene)), parse(render(target))
    assert changed(target, edited, "colour") and not changed(target, source, "colour")
    assert kept(source, edited, ignore="colour")["all"]
    assert not kept(source, edited)["colour"]


def test_a_world_2_colour_edit_keeps_an_allowed_colour_and_is_read_by_world_2s_parser():
    from analyses.svd.experiments import pair_scenes
    from lab.world import backgrounds
    for scene, target in pair_scenes("colour", 6, world=2):
        assert scene.world == target.world == 2 and backgrounds.allowed(target.backdrop, target.objects[0].colour)
        source, edited = read(render(scene), 2), read(render(target), 2)
        assert edited.background == scene.background
        assert changed(target, edited, "colour") and not changed(target, source, "colour")
        assert kept(source, edited, ignore="colour")["all"]


def test_read_ignores_blobs_smaller_than_any_world_object():
    scene = make_scene(12, "test", n_objects=1)
    image = render(scene).copy()
    corner = (0, 0) if scene.objects[0].x > 40 or scene.objects[0].y > 40 else (120, 120)
    image[corner[0] + 2:corner[0] + 8, corner[1] + 2:corner[1] + 8] = (220, 30, 30)  # a 36-pixel red smudge
    assert 36 < MIN_AREA and len(parse(image).objects) == 2
    assert [(o.colour, o.shape) for o in read(image).objects] == [(scene.objects[0].colour, scene.objects[0].shape)]


def test_a_moved_object_is_not_kept():
    scene = make_scene(12, "test", n_objects=1)
    obj = scene.objects[0]
    moved = dataclasses.replace(scene, objects=(dataclasses.replace(obj, x=obj.x + 10 if obj.x < 64 else obj.x - 10),))
    verdict = kept(parse(render(scene)), parse(render(moved)))
    assert not verdict["position"] and not verdict["all"]


def test_explorer_figure_shows_three_images_and_the_spectra(shapes_pipe):
    ex = Explorer(shapes_pipe, steps=2)
    fig = ex.figure("a small red circle on a black background", "a small blue circle on a black background",
                    seed=0, t=1, k=2, mode="both")
    assert len(fig.axes) == 4 and len(fig.axes[0].images) == 1
    assert len(ex._cache) == 2  # each (prompt, seed) recorded once
    with pytest.raises(ValueError, match=r"step 3 is outside 0\.\.2"):
        ex.edit("a small red circle on a black background", "a small blue circle on a black background", 0, 3, 1)


def test_trajectory_figure_draws_one_generation(shapes_pipe):
    ex = Explorer(shapes_pipe, steps=2)
    fig = trajectory_figure(ex.trajectory("a small red circle on a black background", 0))
    assert len(fig.axes) == 4 and np.isfinite(fig.axes[0].lines[0].get_xydata()).all()


def test_explorer_transfers_on_sd3_and_refuses_flux_by_name():
    from tiny_models import tiny_dit_pipeline

    ex = Explorer(tiny_dit_pipeline("sd3"), steps=2, height=64, width=64, max_sequence_length=16)
    source, target = "a red square", "a blue circle"
    assert ex.trajectory(source, 0).latents.shape == (3, 1, 16, 8, 8)  # SD3's 16 latent channels
    r = 8  # full rank of an 8x8 channel
    whole = ex.edit(source, target, 0, t=2, k=r, mode="both")  # the final latent takes every singular pair
    np.testing.assert_allclose(whole.images[0, 0].astype(int), whole.target_image.astype(int), atol=1)
    none = ex.edit(source, target, 0, t=2, k=0, mode="both")  # nothing taken: the source run again
    np.testing.assert_allclose(none.images[0, 0].astype(int), none.source_image.astype(int), atol=1)
    assert np.abs(whole.source_image.astype(int) - whole.target_image.astype(int)).max() > 8
    fig = ex.figure(source, target, seed=0, t=1, k=2, mode="values")
    assert len(fig.axes[3].get_legend().get_texts()) == 16  # one spectrum per SD3 latent channel
    with pytest.raises(NotImplementedError, match="FluxPipeline \\(FLUX.1\\) hands its callback latents packed"):
        Explorer(tiny_dit_pipeline("flux-schnell"), steps=1, height=64, width=64).trajectory(source, 0)
