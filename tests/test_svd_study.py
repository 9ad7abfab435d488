"""analyses.svd.study at LAB_SIZE=small: the whole study runs on the built-in model and writes what it says."""
import re

import numpy as np
from PIL import Image
from tiny_models import one_thread  # noqa: F401  (autouse: one thread for this module)

from analyses.svd import study


def test_small_study_writes_its_figures_and_report(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_SIZE", "small")
    cfg = study.config()
    section = study.run(tmp_path, config=cfg)
    assert (tmp_path / "svd.md").read_text() == section
    for name in ("svd_spectra.png", "svd_geometry.png", "svd_transfer_both.png", "svd_transfer_examples.png",
                 "svd_perturb.png"):
        pixels = np.asarray(Image.open(tmp_path / name).convert("L"))
        assert len(np.unique(pixels)) > 16, f"{name} is (nearly) blank"  # axes, lines and text were drawn
        assert f"]({name})" in section
    # the transfer table: one row per step t of the grid, one "changed/kept/both" cell per k, counts <= pairs
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", section, flags=re.M)
    cells = [c.strip() for _, cs in rows for c in cs.split("|") if re.fullmatch(r"\s*\d+/\d+/\d+\s*", c)]
    assert cells and all(max(map(int, c.split("/"))) <= cfg.pairs for c in cells)
    for c in cells:  # "both" never exceeds "changed" or "kept"
        changed, kept, both = map(int, c.split("/"))
        assert both <= min(changed, kept)
