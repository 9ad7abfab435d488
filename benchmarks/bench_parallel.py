"""A split study in one process against the same study over N processes (accelerate launch): wall time, same numbers.

    python benchmarks/bench_parallel.py                              # DAAM at LAB_SIZE=full, 1 process vs 2
    python benchmarks/bench_parallel.py --size small --repeats 1     # a smoke run: shows the script works
    python benchmarks/bench_parallel.py --study quality_study --processes 4 --repeats 2
    python benchmarks/bench_parallel.py --processes 1                # the study in one process (the GPU lane: one GPU)

Each run is the study's own command line into a fresh folder (no parts to reuse): ``python -m analyses.<study> OUT``
for one process, ``python -m accelerate.commands.launch --multi_gpu --num_processes N -m analyses.<study> OUT`` for
N (gloo on a machine without a GPU, as tests/test_parallel.py launches it); repeats interleave (1, N, 1, N, ...).
--processes 1 times the one-process run alone (scripts/gpu_check.sh: the study on one GPU, where the study's device
is the GPU lab.parallel picks).
Wall time is the whole command, model loading and process start included. Every process gets OMP_NUM_THREADS
threads (--threads, default 1), so the one-process run and each of the N processes compute alike. The study's
section (OUT/*.md) of every run must give the same numbers: its timing lines (a number of s or ms) and any table
column of seconds are left out of the comparison. Writes a '## Measured: ...' section of benchmarks/parallel.md;
a size other than full is labelled a smoke run, not the measurement. Exit status 1 when the numbers differ.
(Clockwork's reuse table is itself a timing, its savings in percent: that study's numbers differ from run to run.)
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import write_section  # noqa: E402  (benchmarks/models.py)

ROOT = Path(__file__).resolve().parents[1]
TIMING = re.compile(r"\d(\.\d+)? ?(s|ms)\b")  # '12 s', '0.22 s per image', '140 ms'
SECONDS_COLUMN = re.compile(r"\bCPU s\b|\bseconds\b|\bms\b")
HEAD = """# A study over several processes: wall time and the same numbers (issue 22, item 4)

Each section below is one run of `benchmarks/bench_parallel.py`: the study in one process against the same study
split over N processes by `accelerate launch` (lab.parallel), each into a fresh folder, with the numbers of their
REPORT sections compared (timing lines left out).
"""


def numbers(section: str) -> list[str]:
    """The section's lines without its timing: lines holding a number of s or ms, and the cells of a table column
    whose header names seconds (PAG's 'CPU s')."""
    kept, drop, in_table = [], set(), False
    for line in section.splitlines():
        if line.startswith("|"):
            cells = line.strip().strip("|").split("|")
            if not in_table:  # the header row
                drop = {i for i, c in enumerate(cells) if SECONDS_COLUMN.search(c)}
            in_table = True
            kept.append("|".join(c for i, c in enumerate(cells) if i not in drop))
        else:
            in_table = False
            if not TIMING.search(line):
                kept.append(line)
    return kept


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(study: str, processes: int, out: Path) -> list[str]:
    module = ["-m", f"analyses.{study}", str(out)]
    if processes == 1:
        return [sys.executable] + module
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port())] + module


def run_once(study: str, processes: int, size: str, threads: int, scratch: Path) -> tuple[float, str]:
    """(wall seconds, the study's section) of one run into a fresh folder."""
    out = Path(tempfile.mkdtemp(prefix=f"{study}-{processes}p-", dir=scratch))
    env = dict(os.environ, LAB_SIZE=size, OMP_NUM_THREADS=str(threads), LAB_PROGRESS="0", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    log = out.with_suffix(".log")
    t0 = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(command(study, processes, out), env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{study} with {processes} process(es) failed ({done.returncode}); the end of {log}:\n"
                 + log.read_text()[-3000:])
    sections = sorted(out.glob("*.md"))
    if len(sections) != 1:
        sys.exit(f"{out} holds {len(sections)} Markdown files ({', '.join(p.name for p in sections)}); expected the "
                 "study's one section")
    text = sections[0].read_text()
    shutil.rmtree(out)  # the parts of a full-size study are large; the next run must not reuse them anyway
    log.unlink()
    return wall, text


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    load = ", load average {:.1f} at the start".format(os.getloadavg()[0]) if hasattr(os, "getloadavg") else ""
    return (f"{os.cpu_count()} CPUs ({cpu}){', GPUs: ' + ', '.join(gpus) if gpus else ', no GPU'}{load}; "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--study", default="daam", help="analyses.<study>: daam, quality_study, p2p, pag, classify")
    p.add_argument("--size", default="full", help="LAB_SIZE: small | default | full")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="runs of each, interleaved")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "parallel.md")
    a = p.parse_args()
    if a.processes < 1:
        sys.exit(f"--processes {a.processes}: give 1 (the study alone) or more (1 process against that many)")
    where = machine()
    walls: dict[int, list[float]] = {1: [], a.processes: []}
    sections: list[tuple[int, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench_parallel-") as scratch:
        for r in range(a.repeats):
            for n in walls:
                wall, text = run_once(a.study, n, a.size, a.threads, Path(scratch))
                walls[n].append(wall)
                sections.append((n, text))
                print(f"repeat {r + 1}/{a.repeats}, {n} process(es): {wall:.1f} s", flush=True)
    reference = numbers(sections[0][1])
    differ = [(n, text) for n, text in sections if numbers(text) != reference]
    one, many = statistics.median(walls[1]), statistics.median(walls[a.processes])
    smoke = a.size != "full"
    arms = "1 process" + (f" vs {a.processes}" if a.processes > 1 else "") + (", GPU" if "GPUs:" in where else "")
    key = f"{a.study}, LAB_SIZE={a.size}, {arms}" + (
        " (SMOKE RUN: shows the script works; not the measurement)" if smoke else "")
    lines = [f"`python benchmarks/bench_parallel.py --study {a.study} --size {a.size} --processes {a.processes} "
             f"--repeats {a.repeats} --threads {a.threads}`, {datetime.date.today()}; {where}. "
             f"{a.threads} thread(s) per process.", ""]
    if smoke:
        lines += [f"**Smoke run at LAB_SIZE={a.size}**: it shows that the script runs both and compares their "
                  "numbers; its times are dominated by process start and model loading, so they say nothing about "
                  "the speed-up at full size.", ""]
    lines += ["| processes | wall s per run | median s |", "|---|---|---|"]
    lines += [f"| {n} | {', '.join(f'{w:.1f}' for w in ws)} | {statistics.median(ws):.1f} |" for n, ws in walls.items()]
    if a.processes > 1:
        lines += ["", f"Speed-up (median 1 process / median {a.processes}): **{one / many:.2f}x**."]
    lines += ["",
              f"Numbers of the section ({len(reference)} lines, timing lines left out) "
              + ("**identical** in every run." if not differ else
                 f"**DIFFER** in {len(differ)} of {len(sections)} runs.")]
    for n, text in differ[:1]:
        changed = [f"    {x!r} -> {y!r}" for x, y in zip(reference, numbers(text)) if x != y][:10]
        lines += ["", f"First differing run ({n} processes), first changed lines:", ""] + changed
    if not a.out.exists():
        a.out.write_text(HEAD)
    write_section(a.out, key, "\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {a.out}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
