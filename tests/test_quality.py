"""lab.world.quality and the quality study, on the built-in model at small size."""
import numpy as np
import pytest

from lab.world import make_scene, parse, render, score
from lab.world.quality import Evaluation, evaluate, generate, rates, table, wilson


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
