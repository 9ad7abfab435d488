"""The noise-schedule study at smoke size: every figure written, the numbers it reports hold what it claims."""
import re

import numpy as np
import pytest

from analyses.schedules import experiments, study
from lab.world import render


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("schedules")
    return out, study.run(out)


def test_writes_every_figure_and_section(report):
    out, section = report
    for name in ("schedules_snr", "schedules_trajectory", "schedules_brightness", "schedules_brightness_examples"):
        assert (out / f"{name}.png").stat().st_size > 10_000, name
        assert f"({name}.png)" in section
    assert (out / "schedules.md").read_text() == section
    for heading in ("Schedules and where sampling starts", "Signal leak", "Along the trajectory",
                    "Uniform vs Beta timesteps", "Black and white backgrounds"):
        assert heading in section


def test_known_schedule_values_and_leak(report):
    _, section = report
    assert "| sd-1.5 | 0.068265 | 0.00468 | 901 / 999 / 999 |" in section
    rows = {m[0]: (float(m[1]), float(m[2]), float(m[3])) for m in re.findall(
        r"\| (shapes[^|]*\| world images \(pixels\)) \| (-?[\d.]+) \+- ([\d.]+) \| ([\d.]+) \|", section)}
    assert len(rows) == 2
    for measured, se, predicted in rows.values():  # the measured leak is the predicted sqrt(alpha-bar_T)
        assert abs(measured - predicted) < 4 * se + 0.005


def test_brightness_scenes_ask_for_the_background():
    scenes = experiments.brightness_scenes("white", 3)
    assert all(s.background == "white" and s.caption.endswith("on a white background") for s in scenes)
    assert experiments.brightness(np.stack([render(s) for s in scenes])).min() > 0.9
    assert experiments.brightness(np.stack([render(experiments.on_background(s, "black")) for s in scenes])).max() < 0.1
