"""The main job: run every study on the built-in model, write figures/ and figures/REPORT.md.

    python -m analyses.run_all [OUT_DIR]          # LAB_SIZE=full for full size, LAB_SIZE=small for a smoke run

Each study is a module with ``config()`` (its size, a frozen Config read from LAB_SIZE) and
``run(out_dir, config=None) -> str`` that writes its figures and returns its REPORT section; its command line
(``python -m analyses.daam [OUT_DIR]`` and so on) is ``run_one(run)``. Each study prints one line when it ends: its
time, the time so far and an estimate of the time left; its loops show tqdm progress bars (LAB_PROGRESS=0: none).

Under ``accelerate launch --num_processes N -m analyses.run_all`` the studies whose module sets ``SPLITS_ITEMS = True``
(their items go through ``lab.parallel.run_items``) run first, on every process; then the main process alone runs
the others and writes REPORT (sections in STUDIES order either way).
"""
from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

from lab.sizes import size

STUDIES = ["analyses.quality_study", "analyses.daam.study", "analyses.dift.study", "analyses.svd.study",
           "analyses.schedules.study", "analyses.p2p.study", "analyses.classify.study",
           "analyses.pag.study", "analyses.clockwork.study"]
# Seconds each study took at LAB_SIZE=small on the project's 2-core machine: only the estimate of the time left reads
# them, as shares (the time so far, scaled by the share of the work still to do).
SHARES = {"analyses.quality_study": 104, "analyses.daam.study": 44, "analyses.dift.study": 144,
          "analyses.svd.study": 64, "analyses.schedules.study": 156, "analyses.p2p.study": 60,
          "analyses.classify.study": 45, "analyses.pag.study": 45, "analyses.clockwork.study": 40}
# (the last four are estimates from their CPU time at default size, not timings at LAB_SIZE=small)


def time_left(elapsed: float, done: list[str], todo: list[str]) -> float:
    """Seconds left, estimated from the seconds so far and the studies' SHARES."""
    share = sum(SHARES.get(n, 1) for n in done)
    return elapsed * sum(SHARES.get(n, 1) for n in todo) / share if share else float("nan")


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds == seconds else "?"


def run_one(run, argv: list[str] | None = None) -> str:
    """One study's command line: run it into OUT_DIR (argv[1], default figures/) and print its REPORT section."""
    argv = sys.argv if argv is None else argv
    out = Path(argv[1]) if len(argv) > 1 else Path("figures")
    out.mkdir(parents=True, exist_ok=True)
    section = run(out)
    if section:  # "" on the processes other than the main one under accelerate launch
        print(section)
    return section


def main(out: Path = Path("figures")) -> Path | None:
    """Run every study into out; write out/REPORT.md and return its path (None on a process other than the main)."""
    from lab.parallel import state
    out.mkdir(parents=True, exist_ok=True)
    main_process, order = state().is_main_process, list(STUDIES)
    if state().num_processes > 1:
        split = [n for n in STUDIES if getattr(importlib.import_module(n), "SPLITS_ITEMS", False)]
        order = split + ([n for n in STUDIES if n not in split] if main_process else [])
    sections, start = {}, time.perf_counter()
    for i, name in enumerate(order):
        t0 = time.perf_counter()
        print(f"[run_all] {i + 1}/{len(order)} {name} ...", flush=True)
        section = importlib.import_module(name).run(out)
        took, elapsed = time.perf_counter() - t0, time.perf_counter() - start
        sections[name] = section + f"\n_{name}: {took:.0f} s_\n"
        left = time_left(elapsed, order[:i + 1], order[i + 1:])
        print(f"[run_all] {i + 1}/{len(order)} {name} done in {_clock(took)}; {_clock(elapsed)} so far, about "
              f"{_clock(left)} left", flush=True)
    if not main_process:
        return None
    head = f"# Diffusion Lab report\n\nSize: `{size()}`. Every number below was measured by this run.\n"
    report = out / "REPORT.md"
    tmp = report.with_suffix(".tmp")
    tmp.write_text("\n".join([head] + [sections[n] for n in STUDIES]))
    tmp.replace(report)
    print(f"[run_all] wrote {report}")
    return report


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("figures"))
