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
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from analyses import daam  # noqa: E402

PROMPT = "a small red hexagon to the left of a large blue trapezoid on a white background"


def load(model: str):
    if model == "sd15-tiny":
        from tiny_models import tiny_pipeline
        return tiny_pipeline("sd15")
    import lab
    return lab.load(model)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def one_repeat(pipe, size: int, steps: int, seed: int) -> dict[str, float]:
    kw = dict(num_inference_steps=steps, guidance_scale=7.5, height=size, width=size, output_type="np")
    out = {}
    out["generate plain"], _ = timed(lambda: pipe(PROMPT, generator=torch.Generator().manual_seed(seed), **kw))
    out["generate + capture (sum)"], run_sum = timed(lambda: daam.generate(
        pipe, PROMPT, seed=seed, steps=steps, height=size, width=size))
    out["generate + capture (explorer)"], run_all = timed(lambda: daam.generate(
        pipe, PROMPT, seed=seed, steps=steps, height=size, width=size, **daam.explorer_options(steps)))
    out["all word maps (sum)"], _ = timed(lambda: daam.word_maps(daam.global_maps(run_sum.cache), pipe))
    out["all word maps (explorer run)"], _ = timed(lambda: daam.word_maps(daam.global_maps(run_all), pipe))
    low = min(tuple(run_all.cache.resolution(n)) for n in daam.layer_names(run_all))
    half = list(range(max(steps // 2, 1)))
    out["re-slice one word"], _ = timed(lambda: daam.word_map(
        daam.global_maps(run_all, steps=half, resolution=low), pipe, "hexagon"))
    out["open-vocabulary word"], _ = timed(lambda: daam.word_map(
        daam.open_vocab(run_all.queries, pipe, "a purple square"), pipe, "square"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load(args.model)
    one_repeat(pipe, args.size, 2, 0)  # warm-up
    runs = [one_repeat(pipe, args.size, args.steps, seed) for seed in range(args.repeats)]
    base = {"all word maps (sum)": "generate + capture (sum)"}
    print(f"model {args.model}, {args.size} px, {args.steps} steps, guidance 7.5, batch 1, {args.repeats} repeats, "
          f"{args.threads} thread(s), torch {torch.__version__}\n")
    print("| what | median s | x generate + capture (same repeat) |")
    print("|---|---|---|")
    for key in runs[0]:
        ref = base.get(key, "generate + capture (explorer)" if not key.startswith("generate") else None)
        ratio = "" if ref is None else f"{statistics.median(r[key] / r[ref] for r in runs):.4f}"
        if key.startswith("generate"):
            ratio = f"{statistics.median(r[key] / r['generate plain'] for r in runs):.2f} x plain"
        print(f"| {key} | {statistics.median(r[key] for r in runs):.4f} | {ratio} |")


if __name__ == "__main__":
    main()
