"""lab.progress: tqdm bars on the loops a person waits for, off with LAB_PROGRESS=0; run_all's line per study."""
import io

from lab.progress import progress


def test_progress_counts_and_lab_progress_0_hides_it(monkeypatch):
    monkeypatch.setenv("LAB_PROGRESS", "1")
    out = io.StringIO()
    assert list(progress(range(3), "counting", file=out, leave=True)) == [0, 1, 2]
    assert "counting" in out.getvalue() and "3/3" in out.getvalue()
    monkeypatch.setenv("LAB_PROGRESS", "0")
    hidden = io.StringIO()
    assert list(progress(range(3), "counting", file=hidden)) == [0, 1, 2]
    assert hidden.getvalue() == ""


def test_run_all_estimates_the_time_left_from_the_studies_shares():
    from analyses.run_all import SHARES, STUDIES, time_left
    assert set(SHARES) == set(STUDIES)
    done, todo = STUDIES[:2], STUDIES[2:]
    left = time_left(100.0, done, todo)  # 100 s for the first two: the rest in proportion to their shares
    assert abs(left - 100.0 * sum(SHARES[n] for n in todo) / sum(SHARES[n] for n in done)) < 1e-9
    assert time_left(50.0, STUDIES, []) == 0
