"""analyses.svd.study at LAB_SIZE=small: the whole study runs on the built-in model and writes what it says."""
from tiny_models import one_thread  # noqa: F401  (autouse: one thread for this module)

from analyses.svd import study


def test_small_study_writes_its_figures_and_report(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_SIZE", "small")
    section = study.run(tmp_path)
    for name in ("svd_spectra.png", "svd_geometry.png", "svd_transfer_both.png", "svd_transfer_examples.png",
                 "svd_perturb.png", "svd.md"):
        assert (tmp_path / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert f"]({name})" in section
    assert section.startswith("## SVD of the latent trajectory") and "| t \\ k |" in section
