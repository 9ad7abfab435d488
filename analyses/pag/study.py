"""Study: does perturbed-attention guidance draw a clean object of the captioned kind more often, with and without
classifier-free guidance, and which self-attention layers should it perturb?

    python -m analyses.pag [out]     # LAB_SIZE=small (4 captions) | default (12) | full (200); writes out/pag_*.png
    run(out) -> str                  # the REPORT section (Markdown); also written to out/pag.md

Every condition generates the same unseen one-object captions (in the world the model was trained on,
``lab.world.world_of``) from the same seeds (seed = the scene's seed), so conditions differ only in their guidance.
The parser judges each image (analyses.pag.score: colour, shape and size right, exactly one object). Rates with 95%
Wilson intervals; PAG against the same guidance without PAG as a paired difference (bootstrap over captions). The
paper's claim, tested: PAG raises the rate without CFG ("shown" only when the paired interval's lower end is above 0).
Its items are (condition, batch of 16 captions), one call each, split over the processes of ``accelerate launch`` by
lab.parallel; any number of processes gives the same section. On an SD3 / Flux model the layer choices are the DiT's
('mid', 'all' joint-attention layers; analyses.pag.dit) and the perturbation is diffusers' SD3 PAG.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import lab
from lab import parallel
from lab.pipes import family_of
from lab.plotting import save_figure
from lab.sizes import pick, size
from lab.world import world_of
from lab.world.quality import wilson

from .guidance import generate
from .plot import examples, rate_curves
from .score import CHECKS, scenes, verdict

CFG = 7.5
PRIMARY = ("mid", 3.0)  # the paper's SD setting (mid-block self-attention, scale 3), chosen before looking
SPLITS_ITEMS = True  # its batches go through lab.parallel.run_items: analyses.run_all runs it on every process


@dataclass(frozen=True)
class Condition:
    guidance: float  # 0: no classifier-free guidance
    scale: float     # PAG scale; 0: no PAG
    layers: str = "mid"

    @property
    def label(self) -> str:
        cfg = f"CFG {self.guidance:g}" if self.guidance > 1 else "no CFG"
        return f"{cfg}" if self.scale == 0 else f"{cfg} + PAG {self.layers} {self.scale:g}"


def conditions(family: str = "unet") -> list[Condition]:
    """Without CFG and with it: no PAG, then PAG on each layer choice and at each scale. family: lab.pipes.family_of
    the model ('unet', 'sd3', 'flux'), whose layer groups are chosen from."""
    scales = pick(small=[3.0], default=[3.0, 6.0], full=[1.0, 2.0, 3.0, 5.0, 8.0])
    choices = pick(small=["mid", "up"], default=["down", "mid", "up"], full=["down", "mid", "up", "all"])
    if family != "unet":
        choices = ["mid", "all"]  # analyses.pag.dit.DIT_GROUPS
    out = []
    for g in (0.0, CFG):
        out.append(Condition(g, 0.0))
        out += [Condition(g, 3.0, lay) for lay in choices]
        out += [Condition(g, s, "mid") for s in scales if s != 3.0]
    return out


def batches(n: int, batch: int = 16, family: str = "unet") -> list[tuple[Condition, int]]:
    """The study's items: (condition, index of the batch's first caption), condition by condition."""
    return [(cond, i) for cond in conditions(family) for i in range(0, n, batch)]


def measure_batch(pipe, cond: Condition, chunk: list, steps: int, keep_images: bool = False) -> dict:
    """One condition on one batch of scenes, in one call: {"verdicts": [one per scene], "images": (b, H, W, 3)
    uint8 when keep_images, else None, "seconds": CPU seconds}."""
    t0 = time.process_time()
    out = generate(pipe, [s.caption for s in chunk], [s.seed for s in chunk], steps=steps, guidance=cond.guidance,
                   pag_scale=cond.scale, layers=cond.layers)  # (b, H, W, 3)
    out = (out * 255).round().astype(np.uint8)
    verdicts = [verdict(s, im) for s, im in zip(chunk, out)]
    return {"verdicts": verdicts, "images": out if keep_images else None, "seconds": time.process_time() - t0}


def merge(items: list[tuple[Condition, int]], done: list[dict]):
    """({label: [verdict per caption]}, {label: images of the first batch}, {label: CPU seconds}) from the items'
    measure_batch() results, in order."""
    verdicts, images, seconds = {}, {}, {}
    for (cond, _), d in zip(items, done):
        verdicts.setdefault(cond.label, []).extend(d["verdicts"])
        if d["images"] is not None:
            images.setdefault(cond.label, d["images"])
        seconds[cond.label] = seconds.get(cond.label, 0.0) + d["seconds"]
    return verdicts, images, seconds


def measure(pipe, n: int, steps: int, batch: int = 16):
    """(scenes, {label: [verdict per caption]}, {label: (n, H, W, 3) uint8 of the first batch}, seconds per
    condition), in one process."""
    todo, items = scenes(n, world=world_of(pipe)), batches(n, batch, family_of(pipe))
    done = [measure_batch(pipe, cond, todo[i:i + batch], steps, keep_images=i == 0) for cond, i in items]
    return (todo, *merge(items, done))


def paired(a: list[dict], b: list[dict], seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of clean(a) - clean(b) over the same captions, 95% bootstrap resampling captions."""
    d = np.array([float(x["clean"]) - float(y["clean"]) for x, y in zip(a, b)])
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(len(d), size=(2000, len(d)))].mean(1)
    return float(d.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


_WHAT = {  # per denoiser family: (sampler, the perturbation, the denoiser)
    "unet": ("DDIM", "chosen self-attention maps replaced by the identity", "UNet"),
    "dit": ("flow-matching Euler", "chosen joint-attention layers' image queries attending only to themselves among "
            "the image keys and to every text key (diffusers' SD3 PAG)", "transformer"),
}


def section(verdicts, info) -> str:
    sampler, perturbed, denoiser = _WHAT["unet" if info.get("family", "unet") == "unet" else "dit"]
    lines = [
        "## Perturbed-attention guidance (Ahn et al.)", "",
        f"{info['n']} unseen one-object captions, each generated from its scene's seed under every condition, "
        f"{info['steps']} {sampler} steps. PAG: eps + scale x (cond - perturbed), where the perturbed prediction has "
        f"the {perturbed} (lab.hooks edit; the conditional rows again, a third branch of the {denoiser} call). "
        "A picture passes when the parser finds exactly one object with the caption's "
        "colour, shape and size. Differences are paired (same seeds) against the same CFG setting without PAG.", "",
        "![rates](pag_rates.png)", "", "![examples](pag_examples.png)", "",
        "| condition | " + " | ".join(CHECKS) + " | clean vs no PAG (95% CI) | CPU s |",
        "|---" * (len(CHECKS) + 3) + "|",
    ]
    for label, vs in verdicts.items():
        cells = []
        for check in CHECKS:
            k, n = sum(v[check] for v in vs), len(vs)
            lo, hi = wilson(k, n)
            cells.append(f"{k}/{n} = {k / n:.0%} ({lo:.0%}-{hi:.0%})")
        base = "no CFG" if label.startswith("no CFG") else f"CFG {CFG:g}"
        diff = "" if label == base else "{:+.0f} points ({:+.0f} to {:+.0f})".format(
            *(100 * x for x in paired(vs, verdicts[base])))
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {diff} | {info['seconds'][label]:.1f} |")
    for base in ("no CFG", f"CFG {CFG:g}"):
        label = f"{base} + PAG {PRIMARY[0]} {PRIMARY[1]:g}"
        d, lo, hi = paired(verdicts[label], verdicts[base])
        shown = "shown" if lo > 0 else "not shown"
        lines.append(f"- `{label}` against `{base}` (the paper's setting, chosen before looking): clean "
                     f"{d * 100:+.0f} points, 95% CI {lo * 100:+.0f} to {hi * 100:+.0f}: improvement **{shown}**.")
    k, n = sum(v["clean"] for v in verdicts["no CFG"]), info["n"]
    lines += [f"- Without any guidance the model already draws {k}/{n} clean objects: the room PAG has to help is "
              "the rest.",
              f"- Time: {info['total']:.0f} s CPU in all (one thread), size `{info['size']}`; a PAG step costs one "
              f"more {denoiser} pass on the conditional rows (with CFG: 3 rows per image instead of 2)."]
    return "\n".join(lines) + "\n"


def run(out: Path, model: str = "shapes") -> str:
    """Run the study; write its figures and out/pag.md; return the REPORT section ("" on a process other than the
    main one under ``accelerate launch``: its batches are split over the processes, see lab.parallel)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n, steps, batch = pick(4, 12, 200), pick(4, 10, 25), 16
    t0 = time.process_time()
    pipe = lab.load(model, device=parallel.device())
    pipe.set_progress_bar_config(disable=True)
    world, fam = world_of(pipe), family_of(pipe)
    todo, items = scenes(n, world=world), batches(n, batch, fam)

    def one(item):  # a condition on one batch of captions
        cond, i = item
        return measure_batch(pipe, cond, todo[i:i + batch], steps, keep_images=i == 0)

    done = parallel.run_items("pag", items, one, out, key=lambda item: f"{item[0].label}-{item[1]}",
                              tag=parallel.tag_of((model, n, steps, batch, world)), desc="pag: batches")
    if done is None:
        return ""
    verdicts, images, seconds = merge(items, done)
    from matplotlib.figure import Figure
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    for ax, base in zip(fig.subplots(1, 2, sharey=True), ("no CFG", f"CFG {CFG:g}")):
        counts = {}
        for cond in conditions(fam):
            if cond.label.startswith(base):
                vs = verdicts[cond.label]
                counts[cond.layers, cond.scale] = (sum(v["clean"] for v in vs), len(vs))
        rate_curves(counts, ax=ax, title=base)
    save_figure(fig, out / "pag_rates.png")
    shown = {c.label.replace(" + ", "\n+ "): images[c.label] for c in conditions(fam)
             if c.scale in (0.0, 3.0) and c.layers in ("mid", "up", "down")}
    save_figure(examples(shown, [s.caption for s in todo]), out / "pag_examples.png")
    info = {"n": n, "steps": steps, "seconds": seconds, "size": size(), "total": time.process_time() - t0,
            "family": fam}
    text = section(verdicts, info)
    (out / "pag.md").write_text(text)
    return text


if __name__ == "__main__":
    from analyses.run_all import run_one
    run_one(run)
