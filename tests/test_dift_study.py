"""The DIFT study's pairs, subsets and run(), and the notebook's click handler, on the built-in model."""
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.figure import Figure

from analyses.dift.explore import controls, make_view, new_pair, on_click, set_setting
from analyses.dift.evaluate import subsets
from analyses.dift.pairs import SHAPE_CYCLE, world_pairs
from analyses.dift.study import config, run
from resume import rerun_without
from tiny_models import one_thread  # noqa: F401


@pytest.fixture(scope="module")
def pipe(shapes_pipe):  # the built-in model, loaded once per session (conftest)
    return shapes_pipe


def test_world_pairs_share_a_shape_and_differ_in_the_rest():
    pairs = world_pairs(len(SHAPE_CYCLE) * 2)
    for p in pairs:
        a, b = p.info["src_obj"], p.info["trg_obj"]
        assert a.shape == b.shape == p.category and a.size != b.size
        assert (a.colour == b.colour) == p.info["same_colour"]
        assert not np.array_equal(p.src[0, 0], p.trg[0, 0])  # backgrounds differ
        assert p.src_kps.shape == p.trg_kps.shape == (len(p.info["names"]), 2)
        x0, y0, x1, y1 = p.trg_bbox
        assert (p.trg_kps >= [x0 - 1, y0 - 1]).all() and (p.trg_kps <= [x1 + 1, y1 + 1]).all()
    arrows = [p for p in pairs if p.category == "arrow"]
    assert [p.info["mirrored"] for p in arrows] == [True, False, True, False]
    for p in arrows:  # 'tip' follows meaning: it is on the side the arrow points to
        a, b = p.info["src_obj"], p.info["trg_obj"]
        tip_a, tip_b = a.keypoints["tip"][0] - a.x, b.keypoints["tip"][0] - b.x
        assert (np.sign(tip_a) != np.sign(tip_b)) == p.info["mirrored"]
    assert world_pairs(1, first=5)[0].name == pairs[5].name
    np.testing.assert_array_equal(world_pairs(1, first=5)[0].src, pairs[5].src)


def test_mirrored_subsets_tell_meaning_from_geometry():
    p = world_pairs(1)[0]  # a mirrored arrow pair
    names, named = p.info["names"], p.info["trg_named"]
    twin = {"tip": "tail", "tail": "tip"}
    geometric = np.array([named[twin.get(n, n)] for n in names])  # every point matched by side, not by name
    rec = {"pred": geometric, "correct": np.array([n not in twin for n in names]), "info": p.info}
    s = subsets({"pairs": [rec]})
    assert s["mirrored tip/tail: by geometry"] == {"per_point": 1.0, "points": 2}
    assert s["mirrored tip/tail: by meaning"]["per_point"] == 0.0
    assert s["arrows, mirrored"]["points"] == len(names) and s["same colour"]["pairs"] == 0


def _rows(section: str, first_cell: str) -> list[list[float]]:
    """The numbers of each Markdown table row whose first cell starts with `first_cell`, in order."""
    out = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith(first_cell):
            out.append([float(c) for c in cells[1:] if c.replace(".", "", 1).isdigit()])
    return out


TINY = dict(pairs=2, timesteps=[261], blocks=["up_blocks.1"], ensemble=1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(out, section) of the study run once at a tiny size."""
    out = tmp_path_factory.mktemp("dift")
    return out, run(out, config=config(**TINY))


def test_run_writes_figures_and_a_report_section(tiny_run):
    tmp_path, section = tiny_run
    for name in ("dift_grid.png", "dift_baselines.png", "dift_examples.png", "dift_similarity.png"):
        assert (tmp_path / name).stat().st_size > 1000
        assert f"({name})" in section
    # each method: a row of the features table (per point, per image) and of the looser-threshold table (4 alphas)
    for method in ("DIFT (t=261, up_blocks.1)", "pixels", "VAE latents", "random UNet (best: t=261"):
        table, curve = _rows(section, method)[:2]
        assert len(table) == 2 and all(0 <= x <= 1 for x in table)
        assert len(curve) == 4 and curve == sorted(curve) and curve[0] == table[0]  # PCK never falls as alpha grows
    for factor in ("colour", "size", "position", "background"):  # DIFT, pixels, VAE latents on one-factor pairs
        assert [len(r) for r in _rows(section, factor)] == [3]
    scores = {m: _rows(section, m)[0][0] for m in ("DIFT (t=261", "pixels", "VAE latents", "random UNet")}
    met = scores["DIFT (t=261"] >= 0.8 and scores["DIFT (t=261"] - max(list(scores.values())[1:]) >= 0.2
    assert ("**met**" in section) == met and ("**not met**" in section) == (not met)


def test_a_resumed_run_recomputes_only_the_lost_items_with_the_same_section(tiny_run):
    out, section = tiny_run
    lost = ["trained-261.pkl", "factors.pkl"]
    again, kept = rerun_without(out, "dift", lost, lambda: run(out, config=config(**TINY)))
    assert len(kept) == 4  # the random grid, the prompted cell, the baselines, the hardest factor's grid
    assert again == section


def test_pck_curve_rises_with_alpha_and_matches_the_evaluation():
    import torch

    from analyses.dift.features import FeatureMap
    from analyses.dift.match import evaluate_pairs
    from analyses.dift.evaluate import pck_curve
    pairs = world_pairs(3)
    fmaps = {}
    for p in pairs:  # features: the images themselves, so the curve is a pixel-matching one
        for key, img in ((p.src_id, p.src), (p.trg_id, p.trg)):
            fmaps[key] = FeatureMap(torch.from_numpy(np.asarray(img, np.float32)).permute(2, 0, 1), (128, 128),
                                    (128, 128), {})
    result = evaluate_pairs(pairs, fmaps, alpha=0.1)
    curve = pck_curve(result, pairs, alphas=(0.1, 0.3, 10.0))
    assert curve[0.1] == result["all"]["per_point"]
    assert curve[0.1] <= curve[0.3] <= curve[10.0] == 1.0  # ten boxes reach across the whole 128 px image


def test_a_click_on_image_a_shows_its_match_in_b(pipe):
    fig = Figure()
    view = make_view(pipe, fig, pair_index=0, ensemble=1)
    ax_a, ax_b = fig.axes[:2]
    x, y = view.pair.src_kps[0]
    best = on_click(SimpleNamespace(inaxes=ax_a, xdata=x, ydata=y), view)
    assert view.query == (x, y) and best == view.best
    assert 0 <= best[0] < 128 and 0 <= best[1] < 128
    assert on_click(SimpleNamespace(inaxes=ax_b, xdata=5.0, ydata=5.0), view) is None  # clicks on B do nothing
    assert on_click(SimpleNamespace(inaxes=None, xdata=None, ydata=None), view) is None
    set_setting(view, t=50, block="up_blocks.2")
    assert view.fa.meta["t"] == 50 and view.fa.meta["block"] == "up_blocks.2" and view.query == (x, y)
    new_pair(view)
    assert view.pair_index == 1 and view.query is None and view.pair.name.startswith("001")


@pytest.mark.parametrize("world", [1, 2])
def test_one_factor_pairs_change_b_in_that_factor_only(world):
    from analyses.dift.pairs import FACTORS, one_factor_pairs
    from lab.world import backgrounds
    pairs = world_pairs(len(SHAPE_CYCLE), world=world)
    for factor in FACTORS:
        for p, q in zip(pairs, one_factor_pairs(pairs, factor)):
            a, b = q.info["src_obj"], q.info["trg_obj"]
            same = {"colour": a.colour == b.colour, "size": a.size == b.size, "position": (a.x, a.y) == (b.x, b.y),
                    "background": q.info["src_background"] == q.info["trg_background"]}
            if factor == "size":  # a grown object near the border moves just enough to stay inside the image
                same["position"] = True
            assert [k for k, v in same.items() if not v] == [factor], (p.name, factor)
            assert a.shape == b.shape and a.direction == b.direction and q.src is p.src
            if factor in ("colour", "background"):  # nothing moved: the answer is where the point was
                np.testing.assert_allclose(q.trg_kps, q.src_kps)
            assert q.trg.shape == (128, 128, 3) and q.info["factor"] == factor
            if world == 2:  # B's colour is one world 2 allows on B's background
                assert backgrounds.allowed(q.info["trg_backdrop"], b.colour)
                assert q.info["trg_backdrop"].name == q.info["trg_background"]
    with pytest.raises(ValueError, match="'shape'.*colour, size, position, background"):
        one_factor_pairs(pairs, "shape")


def test_world_1_pairs_are_unchanged():
    import hashlib
    from analyses.dift.pairs import FACTORS, one_factor_pairs
    pairs = world_pairs(len(SHAPE_CYCLE) * 2)
    digest = hashlib.sha256()
    for p in pairs + [q for f in FACTORS for q in one_factor_pairs(pairs, f)]:
        digest.update(p.src.tobytes()), digest.update(p.trg.tobytes()), digest.update(p.trg_kps.tobytes())
    assert digest.hexdigest()[:16] == "2aa74463cde1331b"  # taken before world 2's pairs existed (commit 91e1502)


def test_world_2_background_pairs_differ_only_in_the_background():
    from analyses.dift.pairs import one_factor_pairs
    from lab.world import backgrounds, parse
    from lab.world.scenes import coverage
    pairs = world_pairs(len(SHAPE_CYCLE), world=2)
    names = {p.info["src_background"] for p in pairs} | {p.info["trg_background"] for p in pairs}
    assert names <= set(backgrounds.NAMES) and not names <= {"black", "grey", "white"}
    for q in one_factor_pairs(pairs, "background"):
        a, b = q.info["src_obj"], q.info["trg_obj"]
        assert a == b and q.info["src_background"] != q.info["trg_background"], q.name
        np.testing.assert_allclose(q.trg_kps, q.src_kps)
        inside = coverage(a) == 1.0  # pixels the object covers whole: the same colour on either background
        assert (q.src[inside] == q.trg[inside]).all() and (q.src[~inside] != q.trg[~inside]).any(-1).mean() > 0.5
        for image, side in ((q.src, "src"), (q.trg, "trg")):
            parsed = parse(image, world=2)
            assert parsed.background == q.info[f"{side}_background"]
            assert [(f.colour, f.shape) for f in parsed.objects] == [(a.colour, a.shape)]
            assert backgrounds.allowed(q.info[f"{side}_backdrop"], a.colour)


def test_the_notebooks_controls_drive_the_view(pipe):
    from ipympl.backend_nbagg import Canvas  # the notebook's %matplotlib widget canvas

    fig = Figure()
    Canvas(fig)
    view = make_view(pipe, fig, pair_index=0, ensemble=1)
    box = controls(view)
    t_slider, block_menu, button = box.children[0].children
    assert (t_slider.value, block_menu.value, button.description) == (261, "up_blocks.1", "new pair")
    assert block_menu.options == tuple(f"up_blocks.{i}" for i in range(len(pipe.unet.up_blocks)))
    t_slider.value = 50
    assert view.t == 50 and view.fa.meta["t"] == 50
    block_menu.value = "up_blocks.2"
    assert view.block == "up_blocks.2" and view.fb.meta["block"] == "up_blocks.2"
    button.click()
    assert view.pair_index == 1 and view.pair.name.startswith("001")
    assert box.children[1] is fig.canvas
