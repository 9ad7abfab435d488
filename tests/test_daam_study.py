"""The DAAM study's pieces on real objects, and its run() at LAB_SIZE=small."""
import numpy as np
import pytest
import torch

from analyses.daam.faithfulness import condition_masks
from analyses.daam.metrics import bootstrap, gaussian_prior, iou, mass_inside, mean_ci
from resume import rerun_without
from tiny_models import one_thread  # noqa: F401


@pytest.fixture(scope="module")
def pipe(shapes_pipe):
    return shapes_pipe  # the built-in model, loaded once per session (tests/conftest.py)


def test_condition_masks_keep_area_where_they_should():
    m = torch.zeros(8, 8, dtype=torch.bool)
    m[1:3, 1:4] = True
    c = condition_masks(m)
    assert c["inside"].sum() == c["shifted"].sum() == 6 and c["outside"].sum() == 58 and c["everywhere"].sum() == 64
    assert (c["inside"] * c["shifted"]).sum() == 0


def test_metrics():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert iou(a, b) == pytest.approx(4 / 12) and iou(a, a) == 1.0 and iou(~a & a, ~a & a) == 0.0
    assert mass_inside(torch.ones(4, 4), a) == pytest.approx(0.5)
    g = gaussian_prior((16, 16))
    assert g.max() == 1 and g.min() == 0 and g[8, 8] > g[0, 0]
    m, lo, hi = mean_ci([1.0, 2.0, 3.0, 4.0], [0, 0, 1, 1])
    assert m == 2.5 and lo <= m <= hi and lo >= 1.5 and hi <= 3.5  # two images: means 1.5 and 3.5
    assert np.isnan(bootstrap([], [])).all()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """(out, section) of the study run once at LAB_SIZE=small."""
    from analyses.daam.study import config, run
    out = tmp_path_factory.mktemp("daam")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_SIZE", "small")
        return out, run(out, config=config())


def _numbers(section: str) -> list[str]:
    return [line for line in section.splitlines() if not line.startswith("Time:")]


def test_study_run_small_writes_its_files(small_run):
    import re

    from PIL import Image

    tmp_path, text = small_run
    assert (tmp_path / "daam.md").read_text() == text
    for name in ("daam_examples.png", "daam_miou.png", "daam_slices.png", "daam_words.png", "daam_faithfulness.png",
                 "daam_layer_steps.png"):
        pixels = np.asarray(Image.open(tmp_path / name).convert("L"))
        assert len(np.unique(pixels)) > 16, f"{name} is (nearly) blank"
    # the noun mIoU table: DAAM and every baseline, at each tau, a mean inside its bootstrap interval
    for key in ("daam", "random unet", "gaussian prior", "whole image"):
        row = re.search(rf"^\| {key} \|(.+)\|$", text, flags=re.M)
        assert row, key
        cells = re.findall(r"([\d.]+) \[([\d.]+), ([\d.]+)\]", row.group(1))
        assert len(cells) == 3 and all(float(lo) <= float(m) <= float(hi) <= 1 for m, lo, hi in cells), row.group(0)


def test_a_resumed_run_recomputes_only_the_lost_batches_with_the_same_section(small_run, monkeypatch):
    from analyses.daam.study import config, run
    out, text = small_run
    monkeypatch.setenv("LAB_SIZE", "small")
    # killed in the last stage; the rerun regenerates the first batch for the figures, not for its part
    again, kept = rerun_without(out, "daam", ["faithfulness-0.pkl"], lambda: run(out, config=config()))
    assert kept == ["generate-0.pkl", "random-unet-0.pkl"]
    assert _numbers(again) == _numbers(text)
