"""lab.world.quality and the quality study, on the built-in model at small size; world_of, and scoring in world 2."""
import json

import numpy as np
import pytest

import lab
from lab.load import MODELS, with_random_unet
from lab.world import make_scene, parse, render, score, world_of
from lab.world.quality import (GOALS, Evaluation, evaluate, evaluation_scenes, generate, goals, rates, table,
                               wilson)
from resume import rerun_without


def _relabelled(folder, world):
    """The built-in model's folder (its parts linked, not copied) with a training.json that says `world`."""
    folder.mkdir()
    for part in (MODELS / "shapes").iterdir():
        if part.name != "training.json":
            (folder / part.name).symlink_to(part)
    meta = json.loads((MODELS / "shapes" / "training.json").read_text())
    (folder / "training.json").write_text(json.dumps({**meta, "world": world}))
    return folder


@pytest.fixture(scope="module")
def world2_pipe(tmp_path_factory):
    """The built-in (world-1) weights in a folder whose training.json says world 2: scored as a world-2 model."""
    return lab.load(_relabelled(tmp_path_factory.mktemp("w2") / "shapes", 2))


def test_wilson_interval_contains_the_rate_and_narrows_with_n():
    lo, hi = wilson(8, 10)
    assert lo < 0.8 < hi
    lo2, hi2 = wilson(80, 100)
    assert hi2 - lo2 < hi - lo
    assert abs(wilson(0, 10)[0]) < 1e-12
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook 95% Wilson interval of 8/10
    assert wilson(10, 10)[1] == 1.0 and all(x != x for x in wilson(0, 0))  # clamped to [0, 1]; NaN for no trials


def test_table_scores_rendered_scenes_as_perfect():
    scenes = [make_scene(i, "test", n_objects=2) for i in range(5)]
    result = Evaluation(verdicts={"two objects": [score(s, parse(render(s))) for s in scenes]})
    assert rates(result)["two objects", "all"] == (5, 5)
    assert "5/5 = 100.0%" in table(result)


def test_generate_is_deterministic_per_seed(shapes_pipe):
    scenes = [make_scene(1, "test")]
    a = generate(shapes_pipe, scenes, steps=3, seed=4)
    b = generate(shapes_pipe, scenes, steps=3, seed=4)
    assert a.dtype == np.uint8 and a.shape == (1, 128, 128, 3)
    assert np.array_equal(a, b)


def test_evaluate_scores_every_group(shapes_pipe):
    result = evaluate(shapes_pipe, n=2, steps=3)
    assert set(result.verdicts) == {"one object", "two objects", "two objects, held-out"}
    assert all(len(v) == 2 for v in result.verdicts.values())
    assert result.seconds_per_image > 0


def test_quality_study_writes_its_figure_and_section(tmp_path):
    from analyses import quality_study
    section = quality_study.run(tmp_path)
    assert (tmp_path / "samples.png").stat().st_size > 10_000
    assert "| one object | colour |" in section


def test_the_quality_study_resumes_from_its_batches_with_the_same_table(tmp_path):
    from analyses.quality_study import config, run
    cfg = config(samples=1, n=10, steps=2)  # batches of 8 and 2 per group
    table = [line for line in run(tmp_path, config=cfg).splitlines() if line.startswith("| ")]
    again, kept = rerun_without(tmp_path, "quality", ["two objects-8.pkl"], lambda: run(tmp_path, config=cfg))
    assert len(kept) == 5
    assert [line for line in again.splitlines() if line.startswith("| ")] == table


def test_save_figure_writes_an_ordinary_readable_file(tmp_path):
    import os
    from matplotlib.figure import Figure
    from lab.plotting import save_figure
    path = save_figure(Figure(figsize=(1, 1)), tmp_path / "sub" / "f.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    assert list((tmp_path / "sub").iterdir()) == [path]  # no temporary file left behind


def test_world_of_the_built_in_model_is_1(shapes_pipe):
    assert world_of(shapes_pipe) == world_of("shapes") == world_of(with_random_unet(shapes_pipe)) == 1


def test_world_of_reads_world_2_from_the_folders_training_json(world2_pipe):
    assert world_of(world2_pipe) == 2
    assert world_of(with_random_unet(world2_pipe)) == 2  # a pipeline rebuilt from parts keeps its parts' folder
    assert world_of(world2_pipe.name_or_path) == 2


def test_world_of_refuses_an_unknown_world(tmp_path):
    folder = _relabelled(tmp_path / "shapes", 3)
    with pytest.raises(ValueError, match="world=3; worlds: 1, 2"):
        world_of(folder)


def test_evaluate_on_world_2_draws_world_2_scenes_and_scores_the_background(world2_pipe):
    result = evaluate(world2_pipe, n=2, steps=2, keep_images=True)  # the world comes from training.json
    assert result.world == 2
    assert set(result.verdicts) == {"one object", "two objects", "two objects, held-out"}
    assert all(len(v) == 2 and all("background" in x for x in v) for v in result.verdicts.values())
    scenes = evaluation_scenes("one object", 2, world=2)
    assert [s.world for s in scenes] == [2, 2]  # the verdicts are these world-2 scenes read by world 2's parser
    assert result.verdicts["one object"] == [score(s, parse(im, world=2))
                                             for s, im in zip(scenes, result.images["one object"])]
    assert evaluate(world2_pipe, n=1, steps=2, groups=("one object",), world=1).world == 1  # world= overrides it
    assert [row.split(" | ")[0] for row in goals(result).splitlines()[2:]] == [
        "| one object: colour", "| one object: shape", "| one object: background",
        "| two objects: both right (colour and shape)"]


def test_world_2_goals_are_met_only_by_the_intervals_lower_end():
    def result(k, n, world):
        verdicts = [{"colour": i < k, "shape": True, "background": True} for i in range(n)]
        return Evaluation(verdicts={"one object": verdicts}, world=world)

    assert "| one object: colour | 200/200 = 100.0% | 98.1% - 100.0% | >= 95% | **met** |" in goals(result(200, 200, 2))
    by_estimate = "**met by the estimate, not by the interval**"
    assert f"| one object: colour | 190/200 = 95.0% | 91.0% - 97.3% | >= 95% | {by_estimate} |" in goals(
        result(190, 200, 2))
    assert "| two objects: both right (colour and shape) | not measured |" in goals(result(200, 200, 2))
    assert ">= 95% met by the estimate, not by the interval |" in table(result(190, 200, 2))
    assert ">= 95% met |" in table(result(190, 200, 1))  # world 1's table: the rate itself, as always printed
    assert set(GOALS) == {("one object", "colour"), ("one object", "shape"), ("one object", "background"),
                          ("two objects", "objects")}
