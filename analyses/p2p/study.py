"""Study: does prompt-to-prompt change one object of a shapes-world image as asked and leave the rest alone?

    python -m analyses.p2p [out]     # LAB_SIZE=small (2 edits) | default (12) | full (200); writes out/p2p_*.png
    run(out) -> str                  # the REPORT section (Markdown); also written to out/p2p.md

Each task swaps one object's colour or shape word (alternating) in the caption of an unseen two-object scene
(analyses.p2p.score.tasks; in the world the model was trained on, ``lab.world.world_of``). Source, controlled edits
and the baseline (the new caption from the same seed without attention control) are generated in one batch; the parser
judges each edit against its source image. Tasks whose source image does not show the caption's two objects are left
out (counted). The goal is stated for the primary control, the paper's word swap defaults chosen before looking
(cross-attention of the first 80% of steps, self-attention of the first 40%): edited-and-preserved >= 80% of edits,
and >= the baseline + 40 points. "met" only when the interval's lower end clears the goal: a Wilson interval for the
rate, a paired bootstrap (resampling tasks) for the difference. Its items are batches of 4 tasks (one call each),
split over the processes of ``accelerate launch`` by lab.parallel; any number of processes gives the same section.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import lab
from lab import parallel
from lab.plotting import save_figure
from lab.sizes import pick, size
from lab.world import world_of
from lab.world.quality import wilson

from .control import Control, Edited, Request, generate
from .plot import rates_plot, side_by_side
from .score import CHECKS, Task, tasks, verdict

GOAL, GOAL_OVER_BASELINE = 0.80, 0.40
PRIMARY = "swap"
SAMPLERS = {"DDIMScheduler": "DDIM", "FlowMatchEulerDiscreteScheduler": "flow-matching Euler"}  # the report's words
SPLITS_ITEMS = True  # its batches go through lab.parallel.run_items: analyses.run_all runs it on every process


def controls() -> list[Control]:
    """The controls compared: the primary word swap and local blending; at full size also a sweep of injected
    steps."""
    base = [Control(0.8, 0.4, label=PRIMARY), Control(0.8, 0.4, blend=True, label="swap + local blend")]
    sweep = [Control(0.4, 0.2, label="swap 40%/20%"), Control(1.0, 1.0, label="swap 100%/100%"),
             Control(0.0, 1.0, label="self-attention only")]
    return base + pick(small=[], default=[], full=sweep)


def request(task: Task) -> Request:
    """The Request of a task; its blend words are the edited object's noun(s) in the source and the target."""
    noun = task.scene.objects[task.index].shape
    blend = (noun, task.new) if task.attribute == "shape" else (noun,)
    return Request(task.source, task.target, "swap", blend=blend)


def measure_batch(pipe, chunk: list[Task], steps: int, guidance: float = 7.5, keep_images: bool = False,
                  **call_kwargs) -> dict:
    """One batch of tasks, generated in one call: {"verdicts": {kind: [verdict or None per task]}, "coverage": [share
    of the latent each local-blend mask kept editable], "images": Edited.images when keep_images, else None}. Any
    pipeline generate() runs on (UNet, SD3, FLUX.1); call_kwargs go to pipe() (height, width, max_sequence_length)."""
    out = generate(pipe, [request(t) for t in chunk], controls(), steps=steps, seed=[t.scene.seed for t in chunk],
                   guidance=guidance, plain=True, **call_kwargs)
    verdicts = {kind: [verdict(t, out.images["source"][j], out.images[kind][j]) for j, t in enumerate(chunk)]
                for kind in list(out.images)[1:]}
    return {"verdicts": verdicts, "coverage": [float(m.mean()) for mask in out.masks.values() for m in mask],
            "images": out.images if keep_images else None}


def merge(done: list[dict]) -> dict[str, list]:
    """{kind: [verdict or None per task]} and "coverage" from the batches' measure_batch() results, in order."""
    verdicts: dict[str, list] = {"coverage": []}
    for d in done:
        verdicts["coverage"] += d["coverage"]
        for kind, vs in d["verdicts"].items():
            verdicts.setdefault(kind, []).extend(vs)
    return verdicts


def measure(pipe, n: int, steps: int, batch: int = 4, guidance: float = 7.5):
    """(tasks, {kind: [verdict or None per task]}, the first batch's Edited images) for `n` tasks in one process;
    verdicts["coverage"] lists the share of the latent each local-blend mask kept editable."""
    todo = tasks(n, world=world_of(pipe))
    done = [measure_batch(pipe, todo[i:i + batch], steps, guidance, keep_images=i == 0) for i in range(0, n, batch)]
    return todo, merge(done), Edited(done[0]["images"])


def counts(verdicts) -> dict[str, dict[str, tuple[int, int]]]:
    """{kind: {check: (passed, scored)}} over the tasks whose source was as captioned."""
    out = {}
    for kind, vs in verdicts.items():
        if kind == "coverage":
            continue
        scored = [v for v in vs if v is not None]
        out[kind] = {c: (sum(bool(v[c]) for v in scored), len(scored)) for c in CHECKS}
    return out


def paired_difference(a: list, b: list, check: str = "edited and preserved", seed: int = 0):
    """(mean, low, high) of a - b over tasks scored in both, 95% bootstrap resampling tasks."""
    pairs = [(float(x[check]), float(y[check])) for x, y in zip(a, b) if x is not None and y is not None]
    if not pairs:
        return float("nan"), float("nan"), float("nan")
    d = np.array([x - y for x, y in pairs])
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(len(d), size=(2000, len(d)))].mean(1)
    return float(d.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def section(verdicts, info) -> str:
    c = counts(verdicts)
    k, n = c[PRIMARY]["edited and preserved"]
    lo, hi = wilson(k, n)
    d, dlo, dhi = paired_difference(verdicts[PRIMARY], verdicts["plain"])
    lines = [
        "## Prompt-to-prompt editing (Hertz et al.)", "",
        f"{info['n']} tasks (colour and shape swaps alternating, one object of an unseen two-object scene), "
        f"{info['steps']} {info.get('sampler', 'DDIM')} steps, guidance {info['guidance']}; {info['left_out']} left "
        "out because the source image did not show the caption's two objects. An edit passes when the parser finds "
        "the edited object with the new attribute where it was, the other object unchanged (same colour and shape, "
        "mask IoU >= 0.9 with its source mask), the same background and two objects in place. `plain` is the "
        "baseline: the new caption from the same seed without attention control.", "",
        "![examples](p2p_examples.png)", "", "![rates](p2p_rates.png)", "",
        "| control | " + " | ".join(CHECKS) + " | median other IoU |", "|---" * (len(CHECKS) + 2) + "|",
    ]
    for kind, row in c.items():
        cells = []
        for check in CHECKS:
            kk, nn = row[check]
            a, b = wilson(kk, nn)
            cells.append(f"{kk}/{nn} = {kk / max(nn, 1):.0%} ({a:.0%}-{b:.0%})")
        ious = [v["other iou"] for v in verdicts[kind] if v is not None]
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {np.median(ious) if ious else float('nan'):.2f} |")
    met1 = n > 0 and lo >= GOAL
    met2 = dlo >= GOAL_OVER_BASELINE
    lines += [
        "",
        f"- Goal: edited-and-preserved >= {GOAL:.0%} with `{PRIMARY}` (cross-attention injected for the first 80% of "
        f"steps, self-attention for 40%): {k}/{n} = {k / max(n, 1):.0%}, 95% CI {lo:.0%}-{hi:.0%}: "
        f"**{'met' if met1 else 'not met'}**.",
        f"- Goal: >= baseline + {GOAL_OVER_BASELINE * 100:.0f} points: difference {d * 100:+.0f} points, 95% CI "
        f"{dlo * 100:+.0f} to {dhi * 100:+.0f}: **{'met' if met2 else 'not met'}**.",
        f"- Local blending's masks (the edited object's noun, min-max normalised, > 0.3) left "
        f"{np.mean(verdicts['coverage'] or [float('nan')]):.0%} of the latent editable on average: this model's noun "
        "maps spread over both objects, so blending preserves little that the swap alone did not.",
        f"- Time: {info['seconds']:.0f} s for {info['n']} tasks, {info['rows']} images each (source, "
        f"{info['rows'] - 2} controlled, plain) in batches of 4 tasks; size `{info['size']}`.",
    ]
    return "\n".join(lines) + "\n"


def run(out: Path, model: str = "shapes") -> str:
    """Run the study; write its figures and out/p2p.md; return the REPORT section ("" on a process other than the
    main one under ``accelerate launch``: its batches are split over the processes, see lab.parallel)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n, steps, guidance, batch = pick(2, 12, 200), pick(6, 25, 25), 7.5, 4
    t0 = time.perf_counter()
    pipe = lab.load(model, device=parallel.device())
    pipe.set_progress_bar_config(disable=True)
    world = world_of(pipe)
    todo = tasks(n, world=world)
    done = parallel.run_items("p2p", range(0, n, batch), lambda i: measure_batch(
        pipe, todo[i:i + batch], steps, guidance, keep_images=i == 0), out, key=str,
        tag=parallel.tag_of((model, n, steps, guidance, batch, controls(), world)), desc="p2p: batches")
    if done is None:
        return ""
    verdicts, first = merge(done), Edited(done[0]["images"])
    seconds = time.perf_counter() - t0
    marks = {}
    for r in range(min(4, len(first.images["source"]))):
        for kind in list(first.images)[1:]:
            v = verdicts[kind][r]
            marks[r, kind] = "source not as captioned" if v is None else (
                "pass" if v["edited and preserved"] else "fail: " + ", ".join(
                    c for c in CHECKS[:-1] if not v[c]).replace(" kept", ""))
    captions = [f"{t.old} -> {t.new}" for t in todo[:4]]
    save_figure(side_by_side(first, captions, marks=marks, rows=4), out / "p2p_examples.png")
    from matplotlib.figure import Figure
    ax = Figure(figsize=(9, 3.4), layout="constrained").subplots()
    save_figure(rates_plot(counts(verdicts), ax=ax, goal=GOAL).figure, out / "p2p_rates.png")
    sampler = type(pipe.scheduler).__name__
    info = {"n": n, "steps": steps, "guidance": guidance, "seconds": seconds, "size": size(),
            "sampler": SAMPLERS.get(sampler, sampler),
            "left_out": sum(v is None for v in verdicts[PRIMARY]), "rows": len(first.images)}
    text = section(verdicts, info)
    (out / "p2p.md").write_text(text)
    return text


if __name__ == "__main__":
    from analyses.run_all import run_one
    run_one(run)
