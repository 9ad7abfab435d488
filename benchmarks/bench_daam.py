"""What DAAM's maps cost next to the generation they come from: one script, ratios measured in the same run.

    python benchmarks/bench_daam.py                                  # built-in model, 128 px, 25 steps, 3 repeats
    python benchmarks/bench_daam.py --model sd15-tiny --size 256     # SD1.5 layout (16 cross-attention layers, 8 heads)

Per repeat (the configurations interleaved), 25 guided steps of one prompt:
  generate plain               the pipeline call alone
  generate + capture (sum)     under daam.capture(): steps summed in place, every head, cond branch
  generate + capture (explorer)  under daam.explorer_options(steps): the published maps, every step and branch with
                               heads averaged (prompt keys), every head and the queries at the middle step
  all word maps (sum)          global_maps + word_maps (every word, image size) from the summed cache
  all word maps (explorer run) the same from the explorer's run (its published cache)
  re-slice one word            global_maps(steps=first half, resolution=one) + word_map: what a widget change costs
                               (from the head-averaged slices)
  open-vocabulary word         open_vocab(queries at the middle step, new text) + word_map
Prints a Markdown table: median seconds, and the median per-repeat ratio to the generation of the same repeat.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import load, native_size, sync, write_section  # noqa: E402  (benchmarks/models.py)

from analyses import daam  # noqa: E402

PROMPT = "a small red hexagon to the left of a large blue trapezoid on a white background"


def timed(fn, device="cpu"):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def one_repeat(pipe, size: int, steps: int, seed: int, device: str = "cpu") -> dict[str, float]:
    kw = dict(num_inference_steps=steps, guidance_scale=7.5, height=size, width=size, output_type="np")
    out = {}
    clock = functools.partial(timed, device=device)
    out["generate plain"], _ = clock(lambda: pipe(PROMPT, generator=torch.Generator().manual_seed(seed), **kw))
    out["generate + capture (sum)"], run_sum = clock(lambda: daam.generate(
        pipe, PROMPT, seed=seed, steps=steps, height=size, width=size))
    out["generate + capture (explorer)"], run_all = clock(lambda: daam.generate(
        pipe, PROMPT, seed=seed, steps=steps, height=size, width=size, **daam.explorer_options(steps)))
    out["all word maps (sum)"], _ = clock(lambda: daam.word_maps(daam.global_maps(run_sum.cache), pipe))
    out["all word maps (explorer run)"], _ = clock(lambda: daam.word_maps(daam.global_maps(run_all), pipe))
    low = min(tuple(run_all.cache.resolution(n)) for n in daam.layer_names(run_all))
    half = list(range(max(steps // 2, 1)))
    out["re-slice one word"], _ = clock(lambda: daam.word_map(
        daam.global_maps(run_all, steps=half, resolution=low), pipe, "hexagon"))
    out["open-vocabulary word"], _ = clock(lambda: daam.word_map(
        daam.open_vocab(run_all.queries, pipe, "a purple square"), pipe, "square"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--size", type=int, default=None, help="pixels (default: the model's native size)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--section", default=None, help="write the table into this markdown file under its own heading")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    pipe = load(args.model, args.device, dtype)
    args.size = args.size or native_size(args.model, pipe)
    one_repeat(pipe, args.size, 2, 0, args.device)  # warm-up
    runs = [one_repeat(pipe, args.size, args.steps, seed, args.device) for seed in range(args.repeats)]
    base = {"all word maps (sum)": "generate + capture (sum)"}
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} thread(s)"
    title = (f"model {args.model}, {args.size} px, {args.steps} steps, guidance 7.5, batch 1, {args.repeats} repeats, "
             f"{args.dtype}, {where}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    lines = ["| what | median s | x generate + capture (same repeat) |", "|---|---|---|"]
    for key in runs[0]:
        ref = base.get(key, "generate + capture (explorer)" if not key.startswith("generate") else None)
        ratio = "" if ref is None else f"{statistics.median(r[key] / r[ref] for r in runs):.4f}"
        if key.startswith("generate"):
            ratio = f"{statistics.median(r[key] / r['generate plain'] for r in runs):.2f} x plain"
        lines.append(f"| {key} | {statistics.median(r[key] for r in runs):.4f} | {ratio} |")
    print(title + "\n\n" + "\n".join(lines))
    if args.section:
        write_section(Path(args.section), f"{args.model}, {where}, {args.dtype}",
                      f"`python benchmarks/bench_daam.py {' '.join(sys.argv[1:])}`, {datetime.date.today()}\n\n"
                      f"{title}\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
