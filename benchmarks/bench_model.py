"""The built-in model's quality table and generation speed (issue 2's targets).

    python benchmarks/bench_model.py [--n 200] [--steps 25] [--guidance 7.5] [--model shapes] [--world 1|2]
                                     [--out benchmarks/model.md]

Quality: lab.world.quality.evaluate (captions of unseen scenes, images parsed by the world's parser), in the world the
model was trained on (its training.json, ``lab.world.world_of``) unless --world says otherwise. On world 2 the page
opens with issue 19's goals (one object: colour >= 95%, shape >= 90%, background >= 95%; two objects both right
>= 75%), each met only when its 95% interval's lower end clears it.
Speed: one image (batch 1, 25 steps, guidance on) timed after a warm-up, median of 5, on this machine's threads.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

import lab
from lab.world import world_of
from lab.world.quality import evaluate, goals, table


def seconds_per_image(pipe, steps: int, guidance: float, repeats: int = 5) -> float:
    prompt = "a small red circle to the left of a large blue square on a white background"
    pipe(prompt, num_inference_steps=steps, guidance_scale=guidance)  # warm-up
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(i))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="shapes")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--world", type=int, choices=(1, 2), default=None,
                   help="the world whose scenes score it (default: the model's, from its training.json)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    pipe = lab.load(a.model)
    world = world_of(pipe) if a.world is None else a.world
    speed = seconds_per_image(pipe, a.steps, a.guidance)
    result = evaluate(pipe, n=a.n, steps=a.steps, guidance=a.guidance, world=world)
    where = (f"model `{a.model}`, {a.n} images per group, "
             f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    if world == 2:
        where += (f", world 2 scenes\n\n## Goals (issue 19; met only when the 95% interval's lower end clears "
                  f"the goal)\n\n{goals(result)}\n\n## Every group and attribute")
    text = (f"# Built-in model: quality and speed\n\n{where}\n\n"
            f"{table(result)}\n\nOne image, batch 1, {a.steps} steps with guidance: {speed:.2f} s (median of 5).\n")
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
