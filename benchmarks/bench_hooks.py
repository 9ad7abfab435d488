"""What capturing costs on a real generation: time and peak memory against the plain pipeline call.

    python benchmarks/bench_hooks.py --model sd15-tiny            # SD1.5 layout at 1/10 width, 512 px (64x64 latents)
    python benchmarks/bench_hooks.py --model sd15-full --device cuda --dtype fp16   # real SD1.5 size, random weights
    python benchmarks/bench_hooks.py --model sdxl-full --device cuda --dtype fp16 --section benchmarks/hooks.md
    python benchmarks/bench_hooks.py --model shapes               # the built-in model (through lab.load)
    python benchmarks/bench_hooks.py --model path/to/pipeline     # any diffusers SD/SDXL folder

Runs, interleaved --repeats times (the order rotates each repeat), 25 guided steps of:
  plain              the pipeline as it is
  attn2 sum          every cross-attention layer, summed over steps, all heads, both branches
  attn2 sum (DAAM)   every cross-attention layer, summed over steps, heads averaged, cond branch only
  eager (DAAM)       the same keep, captured the way daam 0.2.0 does: an eager processor materialises every row's
                     probabilities and computes the output from them (here: an edit that returns None)
  attn1 @3 steps     every self-attention layer at steps 0, n/2, n-1, heads averaged, cond branch only
and prints a markdown table: median seconds, ratio to plain (per repeat, then median, with the min-max over
repeats; on the CPU also the ratio of the calling thread's CPU time, which other processes disturb less), peak
memory above the loaded model, bytes kept, the largest pixel difference from the plain image, and
whether every repeat's image was bit-identical to plain's. Models: sd15-tiny, {sd15,sd21,sdxl}-full (the real UNet
configs, random weights, at their native 512 / 768 / 1024 px), shapes, or a diffusers folder. --section FILE writes
the table into FILE under a heading naming the device, torch, CUDA and the date (replacing an older one of the same
model and device).
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import load, native_size, write_section  # noqa: E402  (benchmarks/models.py)

from lab.hooks import Keep, select, trace  # noqa: E402


class PeakMemory:
    """Peak memory above the start of the block: CUDA allocator stats, or resident set size sampled every 2 ms.

    On the CPU the resident size is a lower bound of what was allocated (freed heap may be reused without growing it).
    """

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            _malloc_trim()  # hand freed heap back to the OS so the resident size starts from what is live
            self.base = self.peak = _rss()
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.bytes = max(self.peak, _rss()) - self.base
        return False


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def configs(pipe, steps: int) -> dict:
    attn2, attn1 = select(pipe, kind="attn2"), select(pipe, kind="attn1")
    chosen = sorted({0, steps // 2, steps - 1})
    return {
        "plain": None,
        "attn2 sum": (attn2, Keep(steps="sum")),
        "attn2 sum (DAAM)": (attn2, Keep(steps="sum", heads="mean", branches=("cond",))),
        "eager (DAAM)": (attn2, Keep(steps="sum", heads="mean", branches=("cond",)), EAGER),
        f"attn1 @{len(chosen)} steps": (attn1, Keep(steps=chosen, heads="mean", branches=("cond",))),
    }


def _observe(probs, ctx):
    return None


EAGER = "eager"  # the arm's third element: run every captured layer through the eager math, as an edit does


def run_once(pipe, cfg, args, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    call = dict(height=args.size, width=args.size, num_inference_steps=args.steps, guidance_scale=7.5, generator=g,
                output_type="pt")
    with PeakMemory(device) as mem:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.thread_time()
        if cfg is None:
            image, kept = pipe(args.prompt, **call).images, 0
        else:
            edits = {n: _observe for n in cfg[0]} if len(cfg) > 2 else None
            with trace(pipe, cfg[0], keep=cfg[1], edits=edits) as tr:
                image = pipe(args.prompt, **call).images
            kept = sum(t.numel() * t.element_size() for t in tr.cache.values())
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu_start
    return seconds, mem.bytes, kept, image.float().cpu(), cpu


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="sd15-tiny", help="sd15-tiny | sd15-full | shapes | a diffusers folder")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--size", type=int, default=None,
                    help="image size in pixels; default 512 for sd15-* (64x64 latents), else the model's own")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--width-divisor", type=int, default=10, help="for sd15-tiny: channels = SD1.5's / this")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--prompt", default="a red square above a blue circle")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (1 is steadier on a busy 2-core machine)")
    ap.add_argument("--section", default=None, help="write the table into this markdown file under its own heading")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]

    pipe = load(args.model, args.device, dtype, args.width_divisor)
    if args.size is None:
        args.size = native_size(args.model, pipe)
    cfgs = configs(pipe, args.steps)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    title = (f"{args.model} on {device_name}: {args.size}px, {args.steps} steps, guidance 7.5, {args.dtype}, "
             f"torch {torch.__version__}, CUDA {torch.version.cuda}, threads {torch.get_num_threads()}")
    print(f"# {title}", flush=True)
    warm = argparse.Namespace(**{**vars(args), "steps": 2})
    for name, cfg in cfgs.items():  # warm-up: kernels, allocator, lazy imports
        run_once(pipe, None if cfg is None else (cfg[0], Keep(steps=[0], heads="mean", branches=("cond",))), warm,
                 args.device)

    results = {name: [] for name in cfgs}
    names = list(cfgs)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            results[name].append(run_once(pipe, cfgs[name], args, args.device))
            print(f"  repeat {r} {name}: {results[name][-1][0]:.2f} s", flush=True)

    plain = results["plain"]
    on_cpu = not args.device.startswith("cuda")
    rows = ["| capture | median s | x plain (min-max) |" + (" x plain, CPU time (min-max) |" if on_cpu else "")
            + " peak memory | kept | max pixel diff | bit-identical |",
            "|---|---|---|" + ("---|" if on_cpu else "") + "---|---|---|---|"]
    for name in names:
        runs = results[name]
        ratios = [run[0] / base[0] for run, base in zip(runs, plain)]
        diff = max((run[3] - plain[0][3]).abs().max().item() for run in runs)
        same = all(torch.equal(run[3], plain[0][3]) for run in runs)
        cpu = [run[4] / base[4] for run, base in zip(runs, plain)]  # this thread's CPU time: steadier on a busy CPU
        cpu_cell = f" {statistics.median(cpu):.3f} ({min(cpu):.3f}-{max(cpu):.3f}) |" if on_cpu else ""
        rows.append(f"| {name} | {statistics.median(run[0] for run in runs):.2f} | {statistics.median(ratios):.3f} "
                    f"({min(ratios):.3f}-{max(ratios):.3f}) |{cpu_cell} {mib(max(run[1] for run in runs))} | "
                    f"{mib(runs[0][2])} | {diff:.1e} | {'yes' if same else 'no'} |")
    print("\n" + "\n".join(rows))
    if args.section:
        write_section(Path(args.section), f"{args.model}, {device_name}, {args.dtype}",
                      f"`{' '.join(['python benchmarks/bench_hooks.py', *(argv or sys.argv[1:])])}`\n\n{title}, "
                      f"{args.repeats} interleaved repeats, {datetime.date.today()}.\n\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
