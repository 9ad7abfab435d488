"""What capturing costs on a real generation: time and peak memory against the plain pipeline call.

    python benchmarks/bench_hooks.py --model sd15-tiny            # SD1.5 layout at 1/10 width, 512 px (64x64 latents)
    python benchmarks/bench_hooks.py --model sd15-full --device cuda --dtype fp16   # real SD1.5 size, random weights
    python benchmarks/bench_hooks.py --model sdxl-full --device cuda --dtype fp16 --section benchmarks/hooks.md
    python benchmarks/bench_hooks.py --model flux-full --device cuda --dtype bf16 --arms daam,eager --repeats 2
    python benchmarks/bench_hooks.py --model sd3-tiny --steps 4 --repeats 1 --threads 1   # a CPU smoke run
    python benchmarks/bench_hooks.py --model shapes               # the built-in model (through lab.load)
    python benchmarks/bench_hooks.py --model path/to/pipeline     # any diffusers SD/SDXL/SD3/Flux folder

Runs, interleaved --repeats times (the order rotates each repeat), a UNet's 25 steps at guidance 7.5 of:
  plain              the pipeline as it is                                                                  (plain)
  attn2 sum          every cross-attention layer, summed over steps, all heads, both branches                (attn2)
  attn2 sum (DAAM)   every cross-attention layer, summed over steps, heads averaged, cond branch only        (daam)
  eager (DAAM)       the same keep, captured the way daam 0.2.0 does: an eager processor materialises every row's
                     probabilities and computes the output from them (here: an edit that returns None)     (eager)
  attn1 @3 steps     every self-attention layer at steps 0, n/2, n-1, heads averaged, cond branch only      (attn1)
or a diffusion transformer's 28 steps (SD3: guidance 7.0, batch [uncond, cond]; FLUX.1: guidance embedding 3.5, one
cond branch) of:
  plain
  image->text sum (DAAM)   what analyses.daam's capture keeps on a DiT: the image->text view of every
                     joint-attention layer (daam_layers), summed over steps, heads averaged, cond branch     (daam)
  eager (DAAM)       the same keep, every one of those layers running the eager joint math (an edit that
                     returns None)                                                                          (eager)
  joint @3 steps     the whole joint map of every joint-attention layer at steps 0, n/2, n-1, heads averaged,
                     cond branch (SD3-medium at 1024 px keeps 5.6 GB, FLUX.1 14.5 GB: over the 2 GiB default
                     max_bytes, which this benchmark raises to 16 GiB)                                      (joint)
--arms picks some by the names in brackets (plain always runs). It prints a markdown table: median seconds, ratio to
plain (per repeat, then median, with the min-max over repeats; on the CPU also the ratio of the calling thread's CPU
time, which other processes disturb less), peak memory above the loaded model, bytes kept, the largest pixel
difference from the plain image, and whether every repeat's image was bit-identical to plain's. Models
(benchmarks/models.py): {sd15,sd21,sdxl,sd3,flux}-full (the real UNet / transformer configs, random weights, at their
native 512 / 768 / 1024 / 1024 / 1024 px), {sd15,sd3,flux}-tiny, shapes, or a diffusers folder. --section FILE
writes the table into FILE under a heading naming the device, torch, CUDA and the date (replacing an older one of
the same model and device), after every repeat, so a run stopped by a time limit leaves the repeats it finished; a
*-tiny model's section is labelled a smoke run.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import load, native_size, write_section  # noqa: E402  (benchmarks/models.py)

from analyses.daam.capture import daam_layers  # noqa: E402
from analyses.daam.dit import is_dit  # noqa: E402
from analyses.daam.views import published_keep  # noqa: E402
from lab.hooks import Keep, select, trace  # noqa: E402
from lab.hooks.dit import family  # noqa: E402
from lab.hooks.points import denoiser_of  # noqa: E402

SMOKE = " (SMOKE RUN at reduced width: shows the script works; not the measurement)"
SMOKE_NOTE = ("**Smoke run**: a model at reduced width; it shows that every arm runs and is compared with the plain "
              "call, bit for bit; its ratios say nothing about the cost at real size.\n\n")
MAX_BYTES = 2**34  # the arms' budget: this measures what a capture costs; the 2 GiB guard is tested elsewhere


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


@dataclass(frozen=True)
class Arm:
    """One row of the table: the points traced and what is kept of them (names None: the plain call); eager: every
    traced point gets an edit that returns None, so it runs the eager math instead of its own processor."""

    label: str
    names: tuple[str, ...] | None = None
    keep: Keep | None = None
    eager: bool = False


def arms(pipe, steps: int) -> dict[str, Arm]:
    """{key: Arm} of every arm for this pipeline (a UNet's or a diffusion transformer's), plain first."""
    chosen = sorted({0, steps // 2, steps - 1})
    cond_mean = dict(heads="mean", branches=("cond",))
    if is_dit(pipe):
        daam, joint = tuple(daam_layers(pipe)), tuple(select(pipe, kind="joint"))
        keep = published_keep(dit=True)  # what analyses.daam.capture keeps on a DiT
        return {"plain": Arm("plain"),
                "daam": Arm("image->text sum (DAAM)", daam, keep),
                "eager": Arm("eager (DAAM)", daam, keep, eager=True),
                "joint": Arm(f"joint @{len(chosen)} steps", joint, Keep(steps=chosen, **cond_mean))}
    attn2, attn1 = tuple(select(pipe, kind="attn2")), tuple(select(pipe, kind="attn1"))
    return {"plain": Arm("plain"),
            "attn2": Arm("attn2 sum", attn2, Keep(steps="sum")),
            "daam": Arm("attn2 sum (DAAM)", attn2, Keep(steps="sum", **cond_mean)),
            "eager": Arm("eager (DAAM)", attn2, Keep(steps="sum", **cond_mean), eager=True),
            "attn1": Arm(f"attn1 @{len(chosen)} steps", attn1, Keep(steps=chosen, **cond_mean))}


def guidance(pipe) -> tuple[float, str]:
    """The guidance scale the model is used at and how it is applied: SD3 7.0 and a UNet 7.5 by classifier-free
    guidance (a batch of [uncond, cond]); FLUX.1-dev 3.5 as an embedding (one branch)."""
    kind = family(denoiser_of(pipe))
    if kind == "flux":
        return 3.5, "guidance embedding 3.5"
    scale = 7.0 if kind == "sd3" else 7.5
    return scale, f"guidance {scale}"


def _observe(probs, ctx):
    return None


def run_once(pipe, arm: Arm, args, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    call = dict(height=args.size, width=args.size, num_inference_steps=args.steps, guidance_scale=args.guidance,
                generator=g, output_type="pt")
    with PeakMemory(device) as mem:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.thread_time()
        if arm.names is None:
            image, kept = pipe(args.prompt, **call).images, 0
        else:
            edits = {n: _observe for n in arm.names} if arm.eager else None
            with trace(pipe, list(arm.names), keep=arm.keep, edits=edits, max_bytes=MAX_BYTES) as tr:
                image = pipe(args.prompt, **call).images
            kept = sum(t.numel() * t.element_size() for t in tr.cache.values())
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu_start
    return seconds, mem.bytes, kept, image.float().cpu(), cpu


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def table(chosen: dict[str, Arm], results: dict[str, list], on_cpu: bool) -> list[str]:
    """The markdown table of the repeats done so far (every arm has the same number of them)."""
    plain = results["plain"]
    rows = ["| capture | median s | x plain (min-max) |" + (" x plain, CPU time (min-max) |" if on_cpu else "")
            + " peak memory | kept | max pixel diff | bit-identical |",
            "|---|---|---|" + ("---|" if on_cpu else "") + "---|---|---|---|"]
    for key, arm in chosen.items():
        runs = results[key]
        ratios = [run[0] / base[0] for run, base in zip(runs, plain)]
        diff = max((run[3] - plain[0][3]).abs().max().item() for run in runs)
        same = all(torch.equal(run[3], plain[0][3]) for run in runs)
        cpu = [run[4] / base[4] for run, base in zip(runs, plain)]  # this thread's CPU time: steadier on a busy CPU
        cpu_cell = f" {statistics.median(cpu):.3f} ({min(cpu):.3f}-{max(cpu):.3f}) |" if on_cpu else ""
        rows.append(f"| {arm.label} | {statistics.median(run[0] for run in runs):.2f} | "
                    f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |{cpu_cell} "
                    f"{mib(max(run[1] for run in runs))} | {mib(runs[0][2])} | {diff:.1e} | "
                    f"{'yes' if same else 'no'} |")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="sd15-tiny",
                    help="{sd15,sd21,sdxl,sd3,flux}-full | {sd15,sd3,flux}-tiny | shapes | a diffusers folder")
    ap.add_argument("--steps", type=int, default=None, help="default 25 for a UNet, 28 for SD3 / FLUX.1")
    ap.add_argument("--size", type=int, default=None,
                    help="image size in pixels; default the model's own (benchmarks/models.py: native_size)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--arms", default=None,
                    help="comma-separated arm keys (plain always runs); UNet: attn2,daam,eager,attn1; DiT: "
                         "daam,eager,joint; default all")
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

    built = time.perf_counter()
    pipe = load(args.model, args.device, dtype, args.width_divisor)
    built = time.perf_counter() - built
    dit = is_dit(pipe)
    if args.size is None:
        args.size = native_size(args.model, pipe)
    if args.steps is None:
        args.steps = 28 if dit else 25
    args.guidance, how = guidance(pipe)
    every = arms(pipe, args.steps)
    wanted = ["plain", *(k for k in (args.arms or "").split(",") if k and k != "plain")] if args.arms else list(every)
    bad = [k for k in wanted if k not in every]
    if bad:
        raise SystemExit(f"--arms {args.arms!r}: no arm {', '.join(map(repr, bad))} on a "
                         f"{'DiT' if dit else 'UNet'}; valid: {', '.join(k for k in every if k != 'plain')}")
    chosen = {k: every[k] for k in wanted}
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    title = (f"{args.model} on {device_name}: {args.size}px, {args.steps} steps, {how}, {args.dtype}, "
             f"torch {torch.__version__}, CUDA {torch.version.cuda}, threads {torch.get_num_threads()}")
    print(f"# {title}; built in {built:.0f} s", flush=True)
    warm = argparse.Namespace(**{**vars(args), "steps": 2})
    for arm in chosen.values():  # warm-up: kernels, allocator, lazy imports
        short = Arm(arm.label, arm.names, None if arm.names is None else Keep(steps=[0], heads="mean",
                                                                               branches=("cond",)))
        run_once(pipe, short, warm, args.device)

    results = {key: [] for key in chosen}
    keys = list(chosen)
    on_cpu = not args.device.startswith("cuda")
    smoke = args.model.endswith("-tiny")  # reduced width: the numbers say nothing about the cost at real size
    for r in range(args.repeats):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for key in order:
            results[key].append(run_once(pipe, chosen[key], args, args.device))
            print(f"  repeat {r} {chosen[key].label}: {results[key][-1][0]:.2f} s", flush=True)
        rows = table(chosen, results, on_cpu)
        if args.section:  # after every repeat: a run stopped by a time limit keeps the repeats it finished
            done = f"{r + 1} interleaved repeats" + (f" (of {args.repeats} asked)" if r + 1 < args.repeats else "")
            write_section(Path(args.section), f"{args.model}, {device_name}, {args.dtype}" + (SMOKE if smoke else ""),
                          f"`{' '.join(['python benchmarks/bench_hooks.py', *(argv or sys.argv[1:])])}`\n\n{title}, "
                          f"{done}, {datetime.date.today()}.\n\n" + (SMOKE_NOTE if smoke else "") + "\n".join(rows))
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
