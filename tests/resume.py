"""What the studies' resume tests share: lose some of a finished run's parts, run again, and check that only the
lost ones were computed again (lab.parallel.run_items writes one part per finished item)."""
from pathlib import Path


def rerun_without(out: Path, study: str, lost: list[str], rerun):
    """Delete the `lost` part files of `study`'s run under `out` (as if it had been killed before them), call
    ``rerun()``, and return (its result, the names of the parts that were kept). Asserts that no kept part was
    written again and that every lost one was."""
    (folder,) = (Path(out) / ".parts" / study).iterdir()
    for name in lost:
        (folder / name).unlink()
    kept = {p: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}
    result = rerun()
    assert {p: p.stat().st_mtime_ns for p in kept} == kept, "a finished part was computed again"
    assert all((folder / name).exists() for name in lost), "a lost part was not computed again"
    return result, [p.name for p in kept]
