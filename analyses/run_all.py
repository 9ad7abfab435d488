"""The main job: run every study on the built-in model, write figures/ and figures/REPORT.md.

    python -m analyses.run_all [OUT_DIR]          # LAB_SIZE=full for full size, LAB_SIZE=small for a smoke run

Each study is a module with ``run(out_dir) -> str`` that writes its figures and returns its REPORT section; its
command line (``python -m analyses.daam [OUT_DIR]`` and so on) is ``run_one(run)``.
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


def run_one(run, argv: list[str] | None = None) -> str:
    """One study's command line: run it into OUT_DIR (argv[1], default figures/) and print its REPORT section."""
    argv = sys.argv if argv is None else argv
    out = Path(argv[1]) if len(argv) > 1 else Path("figures")
    out.mkdir(parents=True, exist_ok=True)
    section = run(out)
    print(section)
    return section


def main(out: Path = Path("figures")) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    sections = [f"# Diffusion Lab report\n\nSize: `{size()}`. Every number below was measured by this run.\n"]
    for name in STUDIES:
        t0 = time.perf_counter()
        print(f"[run_all] {name} ...", flush=True)
        section = importlib.import_module(name).run(out)
        sections.append(section + f"\n_{name}: {time.perf_counter() - t0:.0f} s_\n")
    report = out / "REPORT.md"
    tmp = report.with_suffix(".tmp")
    tmp.write_text("\n".join(sections))
    tmp.replace(report)
    print(f"[run_all] wrote {report}")
    return report


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("figures"))
