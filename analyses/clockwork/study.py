"""Study: which UNet blocks, at which steps, is the image sensitive to; and what does reusing the low-resolution
blocks' outputs from the previous step (Clockwork Diffusion, DeepCache) cost in quality for the time it saves?

    python -m analyses.clockwork [out]   # LAB_SIZE=small | default | full; writes out/clockwork_*.png
    run(out) -> str                      # the REPORT section (Markdown); also written to out/clockwork.md

Sensitivity: for every block point and step, noise with ||noise|| = r ||output|| (per image) is added to that block's
output at that step only (a lab.hooks edit); the final image is compared with the plain run of the same seed (pixel
RMS, and whether the parser reads it differently). Reuse: each low-resolution block (alone, and all three) is swapped
out (a lab.hooks swap) on every k-th-but-first step and returns its previous output; the images are compared with
the plain run of the same seeds. Captions and readings are in the world the model was trained on
(``lab.world.world_of``). Time saved is reported twice, in UNet CPU time (one thread, time.process_time): measured
within the run (1 - its UNet time / (its mean full step x steps): the steps that skip against those that do not, so
the machine's load drifts less into it), and estimated as the skipped calls' share of the UNet time the blocks took in
the plain run. The DeepCache-style claim tested: reusing the low-resolution blocks every other step leaves the
parser's reading unchanged on >= 90% of images ("met" only when the Wilson interval's lower end clears it).
The sensitivity batches (images perturbed at every block and step in one call) are split over the processes of
``accelerate launch`` by lab.parallel; the reuse runs, which time the UNet, stay on the main process.

On a diffusion transformer (SD3 / SD3.5, FLUX.1; run(out, model) with a DiT) the same functions run: the rows of
the sensitivity map are its blocks in forward order (FLUX.1: double-stream, then single-stream), noised on their
image stream; reuse runs the middle blocks as one span, reusing the residual they added (analyses.clockwork.span),
and the time saved is the transformer's, measured the same way. The per-item functions pass **call_kwargs
(height, width, max_sequence_length, ...) to the pipeline.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch

import lab
from lab import parallel
from lab.hooks import select
from lab.hooks.points import denoiser_of
from lab.pipes import family_of
from lab.plotting import save_figure
from lab.sizes import pick, size
from lab.world import world_of
from lab.world.quality import wilson

from .perturb import Perturbation, perturbed
from .plot import sensitivity_map, tradeoff
from .reuse import every, group_name, reusable_blocks, reuse
from .score import moved

GUIDANCE, R, GOAL_UNCHANGED = 7.5, 0.5, 0.90
SEED_BASE = 5_000_000  # one-object test scenes, far from the other studies' seeds
SPLITS_ITEMS = True  # its sensitivity batches go through lab.parallel.run_items: analyses.run_all runs it everywhere


def _scenes(n: int, world: int = 1):
    from analyses.pag.score import scenes
    return scenes(n, SEED_BASE, world)


def _plan(pipe, steps: int, r: float = R):
    """(block points, a Perturbation of each block at each step)."""
    blocks = select(pipe, kind="block")
    return blocks, [Perturbation(b, s, r) for b in blocks for s in range(steps)]


def sensitivity_batches(pipe, n: int, steps: int, batch_rows: int = 128) -> list[range]:
    """The sensitivity's items: which of the n scenes go in each call (about batch_rows UNet rows per call)."""
    per = max(1, batch_rows // (len(_plan(pipe, steps)[1]) + 1))  # images per call
    return [range(i, min(i + per, n)) for i in range(0, n, per)]


def sensitivity_batch(pipe, chunk, steps: int, r: float = R, **call_kwargs) -> list[list[dict]]:
    """moved() of each perturbation (rows, in _plan order) of each scene of one batch (columns), in one call."""
    _, plan = _plan(pipe, steps, r)
    out = perturbed(pipe, [s.caption for s in chunk], [s.seed for s in chunk], steps, plan, guidance=GUIDANCE,
                    **call_kwargs)
    return [[moved(out["plain"][j], out[p][j], world_of(pipe)) for j in range(len(chunk))] for p in plan]


def tally_sensitivity(pipe, n: int, steps: int, done: list[list[list[dict]]], r: float = R):
    """(blocks, rms (blocks, steps) mean over images, changed (blocks, steps) counts of n) from the batches'
    sensitivity_batch() results, in order."""
    blocks, plan = _plan(pipe, steps, r)
    rms, changed = np.zeros((len(blocks), steps)), np.zeros((len(blocks), steps), int)
    for moves in done:
        for p, row in zip(plan, moves):
            for m in row:
                rms[blocks.index(p.block), p.step] += m["pixel rms"] / n
                changed[blocks.index(p.block), p.step] += m["reading changed"]
    return blocks, rms, changed


def sensitivity(pipe, n: int, steps: int, r: float = R, batch_rows: int = 128, **call_kwargs):
    """(blocks, rms (blocks, steps) mean over images, changed (blocks, steps) counts of n), in one process."""
    todo = _scenes(n, world_of(pipe))
    done = [sensitivity_batch(pipe, [todo[i] for i in b], steps, r, **call_kwargs)
            for b in sensitivity_batches(pipe, n, steps, batch_rows)]
    return tally_sensitivity(pipe, n, steps, done, r)


@contextlib.contextmanager
def denoiser_seconds(pipe):
    """Yields a list that collects the CPU seconds of each denoiser call (UNet or transformer) in the with-block
    (plain torch hooks)."""
    calls, start, denoiser = [], [], denoiser_of(pipe)
    pre = denoiser.register_forward_pre_hook(lambda m, a: start.append(time.process_time()))
    post = denoiser.register_forward_hook(lambda m, a, o: calls.append(time.process_time() - start.pop()))
    try:
        yield calls
    finally:
        pre.remove(), post.remove()


def _generate(pipe, todo, steps, **call_kwargs):
    gens = [torch.Generator(pipe.device).manual_seed(s.seed) for s in todo]
    out = pipe([s.caption for s in todo], num_inference_steps=steps, guidance_scale=GUIDANCE, generator=gens,
               output_type="np", **call_kwargs).images  # (n, H, W, 3) float in [0, 1]
    return (out * 255).round().astype(np.uint8)


def _groups(pipe, low: list[str]) -> list[list[str]]:
    """The block sets reuse_runs tries: on a UNet each low-resolution block alone and all of them; on a DiT the
    span of its middle blocks (its blocks alone would be as many runs as blocks)."""
    return [[b] for b in low] + [low] if family_of(pipe) == "unet" else [low]


def reuse_runs(pipe, n: int, steps: int, ks=(2,), **call_kwargs):
    """{label: {'changed': k, 'n': n, 'clean': k, 'rms': mean, 'saved measured': share, 'saved estimated': share}}
    and the images of the plain run and of each label, and each reused block's share of the denoiser's time."""
    from analyses.pag.score import verdict

    world = world_of(pipe)
    todo, low = _scenes(n, world), reusable_blocks(pipe)
    with reuse(pipe, low, []) as plain_stats, denoiser_seconds(pipe) as plain_calls:  # wrapped, nothing reused
        plain = _generate(pipe, todo, steps, **call_kwargs)
    unet_total = sum(plain_calls)
    share = {b: w.seconds / unet_total for b, w in plain_stats.items()}  # each block's share of the UNet's time
    images = {"plain": plain}
    rows = {"plain": {"changed": 0, "n": n, "clean": sum(verdict(s, im)["clean"] for s, im in zip(todo, plain)),
                      "rms": 0.0, "saved measured": 0.0, "saved estimated": 0.0}}
    for k in ks:
        for blocks in _groups(pipe, low):
            label = f"{group_name(pipe) if blocks is low else blocks[0]}, run every {k}"
            skipped = every(k, steps)
            with reuse(pipe, blocks, skipped) as stats, denoiser_seconds(pipe) as calls:
                out = _generate(pipe, todo, steps, **call_kwargs)
            assert all(w.reused == len(skipped) for w in stats.values())
            full = [c for i, c in enumerate(calls) if i not in skipped]  # seconds of the UNet calls that ran all
            ms = [moved(a, b, world) for a, b in zip(plain, out)]
            rows[label] = {"changed": sum(m["reading changed"] for m in ms), "n": n,
                           "clean": sum(verdict(s, im)["clean"] for s, im in zip(todo, out)),
                           "rms": float(np.mean([m["pixel rms"] for m in ms])),
                           "saved measured": 1 - sum(calls) / (np.mean(full) * steps),
                           "saved estimated": sum(share[b] for b in blocks) * len(skipped) / steps}
            images[label] = out
    return rows, images, share


WORDS = {  # what section() calls things, by the denoiser's family
    "unet": {"net": "UNet", "sampler": "DDIM", "point": "a down block's hidden states, not its skips",
             "group": "low-res blocks", "Group": "Low-resolution blocks", "how": ""},
    "dit": {"net": "transformer", "sampler": "flow-matching", "point": "a block's image stream; the text stream "
            "is left as computed", "group": "middle blocks", "Group": "Middle blocks",
            "how": " The middle blocks run as one span: on a skipped step the span adds the residual (output - "
                   "input, both streams) it added at its last run."},
}


def section(sens, reuse_rows, share, info) -> str:
    blocks, rms, changed = sens
    worst = np.unravel_index(np.argmax(rms), rms.shape)
    by_block = rms.mean(1)
    w = WORDS["unet" if info.get("family", "unet") == "unet" else "dit"]
    lines = [
        "## Layer sensitivity and feature reuse (Clockwork Diffusion, DeepCache)", "",
        f"Sensitivity: {info['n_sens']} unseen one-object captions, {info['steps_sens']} {w['sampler']} steps, "
        f"guidance {GUIDANCE}; noise of relative size r = {R} (||noise|| = r ||output||, per image) added to one "
        f"block's output (lab.hooks block point: {w['point']}) at one step; the image is "
        "compared with the plain run of the same seed.", "",
        "![sensitivity](clockwork_sensitivity.png)", "",
        "| block | output resolution | mean pixel RMS over steps | readings changed (all steps) |", "|---|---|---|---|",
    ]
    for i, b in enumerate(blocks):
        k, n = int(changed[i].sum()), info["n_sens"] * rms.shape[1]
        lines.append(f"| {b} | {info['resolutions'][b]} | {by_block[i]:.1f} | {k}/{n} |")
    lines += ["", f"Most sensitive: `{blocks[worst[0]]}` at step {worst[1]} (pixel RMS {rms[worst]:.1f}).", "",
              f"Reuse: {info['n_reuse']} captions, {info['steps_reuse']} {w['sampler']} steps; a block 'run every k' "
              "runs on steps 0, k, 2k, ... and returns its previous output on the others (a lab.hooks swap in place "
              f"of the block for the run: its compute is really skipped).{w['how']} {w['Group']}' share of the "
              f"{w['net']}'s CPU time in the plain run: " + ", ".join(f"`{b}` {s:.0%}" for b, s in share.items())
              + ".", "", "![reuse](clockwork_reuse.png)", "",
              f"| run | reading changed vs plain (95% CI) | clean object | pixel RMS | {w['net']} time saved: measured "
              "| estimated from share |", "|---|---|---|---|---|---|"]
    for label, row in reuse_rows.items():
        k, n = row["changed"], row["n"]
        lo, hi = wilson(k, n)
        c = row["clean"]
        clo, chi = wilson(c, n)
        lines.append(f"| {label} | {k}/{n} = {k / n:.0%} ({lo:.0%}-{hi:.0%}) | {c}/{n} = {c / n:.0%} "
                     f"({clo:.0%}-{chi:.0%}) | {row['rms']:.1f} | {row['saved measured']:.0%} | "
                     f"{row['saved estimated']:.0%} |")
    key = f"{w['group']}, run every 2"
    if key in reuse_rows:
        row = reuse_rows[key]
        u, n = row["n"] - row["changed"], row["n"]
        lo, hi = wilson(u, n)
        lines.append(f"\n- Goal: `{key}` leaves the reading unchanged on >= {GOAL_UNCHANGED:.0%} of images: "
                     f"{u}/{n} = {u / n:.0%}, 95% CI {lo:.0%}-{hi:.0%}: "
                     f"**{'met' if lo >= GOAL_UNCHANGED else 'not met'}**, for "
                     f"{row['saved estimated']:.0%} of the {w['net']}'s time (estimated; {row['saved measured']:.0%} "
                     "measured).")
    lines.append(f"- Time: {info['total']:.0f} s CPU in all (one thread), size `{info['size']}`. Measured savings "
                 f"are CPU time of the {w['net']} calls on a shared machine (small differences are within its noise); "
                 "the estimate uses the plain run's own timing of each block.")
    return "\n".join(lines) + "\n"


def run(out: Path, model: str = "shapes") -> str:
    """Run the study; write its figures and out/clockwork.md; return the REPORT section ("" on a process other
    than the main one under ``accelerate launch``: its sensitivity batches are split, see lab.parallel)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_sens, steps_sens = pick(1, 2, 20), pick(3, 6, 25)
    n_reuse, steps_reuse, ks = pick(2, 8, 100), pick(4, 10, 25), pick((2,), (2,), (2, 3))
    t0 = time.process_time()
    pipe = lab.load(model, device=parallel.device())
    pipe.set_progress_bar_config(disable=True)
    todo, world = _scenes(n_sens, world_of(pipe)), world_of(pipe)
    done = parallel.run_items("clockwork", sensitivity_batches(pipe, n_sens, steps_sens), lambda b: sensitivity_batch(
        pipe, [todo[i] for i in b], steps_sens), out, key=lambda b: f"sensitivity-{b[0]}",
        tag=parallel.tag_of((model, n_sens, steps_sens, R, world)), desc="clockwork: sensitivity batches")
    if done is None:
        return ""
    sens = tally_sensitivity(pipe, n_sens, steps_sens, done)
    rows, images, share = reuse_runs(pipe, n_reuse, steps_reuse, ks)
    from matplotlib.figure import Figure
    from lab.hooks import points
    denoiser = denoiser_of(pipe)
    side = (getattr(pipe, "default_sample_size", None) or denoiser.config.sample_size) * pipe.vae_scale_factor
    res = {p.name: "x".join(map(str, p.resolution)) for p in points(pipe, image_size=side) if p.kind == "block"}
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    labels = [f"{b} (out {res[b]})" for b in sens[0]]
    sensitivity_map(sens[1], labels, ax=a1, title=f"pixel RMS vs plain, noise r = {R}")
    sensitivity_map(sens[2] / n_sens, labels, ax=a2, label="share of images", title="parser reading changed",
                    limits=(0, 1))
    save_figure(fig, out / "clockwork_sensitivity.png")
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    b1, b2 = fig.subplots(1, 2, width_ratios=[1, 1.3])
    tradeoff({k: (v["saved estimated"], v["changed"], v["n"]) for k, v in rows.items()}, ax=b1,
             net="UNet" if family_of(pipe) == "unet" else "transformer")
    shown = list(images)
    strip = np.concatenate([np.concatenate(list(images[k][:3]), 0) for k in shown], 1)  # (3H, kinds*W, 3)
    b2.imshow(strip)
    b2.set_xticks([(i + 0.5) * images["plain"].shape[2] for i in range(len(shown))],
                  [k.replace(", ", "\n") for k in shown], fontsize=6)
    b2.set_yticks([])
    save_figure(fig, out / "clockwork_reuse.png")
    info = {"n_sens": n_sens, "steps_sens": steps_sens, "n_reuse": n_reuse, "steps_reuse": steps_reuse,
            "resolutions": res, "size": size(), "total": time.process_time() - t0, "family": family_of(pipe)}
    text = section(sens, rows, share, info)
    (out / "clockwork.md").write_text(text)
    return text


if __name__ == "__main__":
    from analyses.run_all import run_one
    run_one(run)
