"""Study: how well DAAM's word maps find the objects of the built-in model's images, and what they mean.

    python -m analyses.daam [out]        # LAB_SIZE=small (4 images) | default (200) | full (500); writes out/daam_*.png
    run(out, config=config(n=8)) -> str  # the REPORT section (Markdown); also written to out/daam.md

Items are held-out scenes (evaluate.held_out_scenes); each image gives per-object rows (evaluate.score_image), the
random-UNet and faithfulness rows follow; figures.py draws them and report.py writes the section. Each of the three
stages is a list of batches (8 images, or 8 objects silenced), one pipeline call each, split over the processes of
``accelerate launch`` by lab.parallel; any number of processes gives the same section.

Held-out captions of the shapes world ("test" split, seeds 2,000,000 + i, in the world the model was trained on:
``lab.world.world_of``) are generated with DAAM captured (the published maps, and every head at every step of both
branches, mid block included, so every slice is the method's); the world's parser segments each image, and only
objects drawn as captioned (parsed colour and shape match) are scored. Noun mIoU at tau 0.3 / 0.4 / 0.5 with 95%
bootstrap CIs (resampling images) against three baselines: the whole image, a centred Gaussian, and DAAM on a UNet
re-initialised from its config (seed 0) generating from the same seeds, scored against the masks of the real model's
image. Then: slices (layer, resolution, step range, head), adjectives vs their own and other objects, where relation
and background words look, open-vocabulary maps, and faithfulness (silencing a noun inside vs outside its map).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import lab
from lab import parallel
from lab.hooks import edited, scale_tokens, select
from lab.plotting import save_figure
from lab.load import with_random_unet
from lab.sizes import pick, size
from lab.world import parse, world_of

from .evaluate import TAUS, held_out_scenes, occurrence_in_caption, run_batch, score_batch
from .faithfulness import CONDITIONS, condition_masks
from .figures import examples_figure, faithfulness_figure, miou_figure, slices_figure, words_figure
from .maps import binarize, global_maps, word_map
from .metrics import iou
from .plot import layer_step_grid
from .report import section

SPLITS_ITEMS = True  # its batches go through lab.parallel.run_items: analyses.run_all runs it on every process

@dataclass(frozen=True)
class Config:
    """How big the study runs: held-out images, DDIM steps, objects silenced for faithfulness, images per batch."""
    n: int
    steps: int
    n_faith: int
    guidance: float = 7.5
    batch: int = 8


def config(**overrides) -> Config:
    """The study's size for LAB_SIZE (small | default | full), with any field overridden: config(n=8)."""
    return dataclasses.replace(Config(n=pick(4, 200, 500), steps=pick(6, 25, 25), n_faith=pick(4, 80, 400)),
                               **overrides)


def random_unet_batches(targets, batch: int) -> list[tuple[int, ...]]:
    """The generations that have targets, in batches: the random-UNet stage's items."""
    order = sorted({t.image for t in targets})
    return [tuple(order[i:i + batch]) for i in range(0, len(order), batch)]


def random_unet_rows(rp, pipe, scenes, targets, images, steps, guidance) -> list[dict]:
    """Noun IoU of DAAM on the re-initialised UNet (rp = with_random_unet(pipe)) for one batch of generations
    (`images`, indices into scenes), against the masks of the real model's images."""
    run = run_batch(rp, [scenes[i] for i in images], steps, guidance, mid=False, head_steps=None)
    rows = []
    for b, image in enumerate(images):
        g = global_maps(run, batch=b)
        for t in (t for t in targets if t.image == image):
            heat = word_map(g, pipe, scenes[image].objects[t.index].shape,
                            occurrence=occurrence_in_caption(scenes[image], t.index, "shape"))
            for tau in TAUS:
                rows.append({"image": image, "obj": t.index, "metric": "noun_iou", "key": "random unet",
                             "tau": tau, "value": iou(binarize(heat, tau), t.mask)})
    return rows


def faithfulness_rows(pipe, targets, steps, guidance, factor: float = 0.0) -> list[dict]:
    """Regenerate each target's image (one batch of them) with its noun silenced in each condition's region; did
    the object survive?"""
    names = select(pipe, kind="attn2")
    rows = []
    regions = [condition_masks(binarize(t.noun_map)) for t in targets]
    for condition in CONDITIONS:
        masks = torch.stack([r[condition] for r in regions])  # (rows, H, W)
        edit = scale_tokens([t.noun_tokens for t in targets], factor, mask=masks)
        gens = [torch.Generator(pipe.device).manual_seed(t.scene.seed) for t in targets]
        with edited(pipe, {n: edit for n in names}):
            out = pipe([t.scene.caption for t in targets], num_inference_steps=steps, guidance_scale=guidance,
                       generator=gens, output_type="np").images
        images = (np.asarray(out) * 255).round().astype(np.uint8)
        for t, after_image, mask in zip(targets, images, masks):
            obj = t.scene.objects[t.index]
            before = _count(parse(t.picture, world=t.scene.world), obj)
            after = _count(parse(after_image, world=t.scene.world), obj)
            change = np.abs(after_image.astype(np.float32) - t.picture.astype(np.float32)).mean(-1) / 255.0
            base = {"image": t.image, "obj": t.index, "key": condition}
            rows += [{**base, "metric": "faith_lost", "value": float(after < before)},
                     {**base, "metric": "faith_change", "value": float(change[t.mask].mean())},
                     {**base, "metric": "faith_area", "value": float(mask.mean())}]
    return rows


def _count(parsed, obj) -> int:
    return sum(f.colour == obj.colour and f.shape == obj.shape for f in parsed.objects)


def run(out: Path, model: str = "shapes", config: Config | None = None) -> str:
    """Run the study; write its figures and out/daam.md; return the REPORT section ("" on a process other than the
    main one under ``accelerate launch``: its batches are split over the processes, see lab.parallel)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config if config is not None else globals()["config"]()
    n, steps, n_faith, guidance, batch = cfg.n, cfg.steps, cfg.n_faith, cfg.guidance, cfg.batch
    t_start = time.perf_counter()
    pipe = lab.load(model, device=parallel.device())
    world = world_of(pipe)
    scenes = held_out_scenes(n, world=world)
    tag, kept = parallel.tag_of((model, cfg, world)), {}

    def generate_and_score(first):  # one batch of images: (targets, rows); the first batch's Run kept for figures
        run_ = run_batch(pipe, scenes[first:first + batch], steps, guidance, queries=True)
        if first == 0:
            kept["first"] = run_
        return score_batch(run_, first, scenes[first:first + batch], pipe, ovam=True)

    def split(stage, items, work, **options):  # a stage's batches over the processes, kept in out/.parts/daam/
        return parallel.run_items("daam", items, work, out, key=lambda i: f"{stage}-{i}", tag=tag,
                                  desc=f"DAAM: {stage}", **options)

    t0 = time.perf_counter()
    scored = split("generate", range(0, n, batch), generate_and_score, everywhere=True)  # every process: targets
    targets, rows = [t for ts, _ in scored for t in ts], [r for _, rs in scored for r in rs]
    seconds = {"generate and score": time.perf_counter() - t0}
    t0 = time.perf_counter()
    rp = with_random_unet(pipe)
    chosen = random_unet_batches(targets, batch)
    random = split("random-unet", range(len(chosen)),
                   lambda k: random_unet_rows(rp, pipe, scenes, targets, chosen[k], steps, guidance))
    seconds["random UNet"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    faith_targets = targets[:n_faith]
    faith = split("faithfulness", range(0, len(faith_targets), batch),
                  lambda first: faithfulness_rows(pipe, faith_targets[first:first + batch], steps, guidance))
    seconds["faithfulness"] = time.perf_counter() - t0
    if faith is None:
        return ""  # a process other than the main one under accelerate launch
    rows += [r for rs in random + faith for r in rs]
    first_run = kept.get("first") or run_batch(pipe, scenes[:batch], steps, guidance, queries=True)  # resumed

    save_figure(examples_figure(first_run, scenes, pipe), out / "daam_examples.png")
    save_figure(miou_figure(rows), out / "daam_miou.png")
    save_figure(slices_figure(rows, first_run.cache), out / "daam_slices.png")
    save_figure(words_figure(rows), out / "daam_words.png")
    save_figure(faithfulness_figure(rows), out / "daam_faithfulness.png")
    grid_word = scenes[0].objects[0].shape
    save_figure(layer_step_grid(first_run, pipe, grid_word, first_run.images[0], batch=0),
                out / "daam_layer_steps.png")
    info = {"size": size(), "n": n, "steps": steps, "guidance": guidance, "targets": len(targets),
            "faith_targets": len(faith_targets), "seconds": seconds, "total": time.perf_counter() - t_start,
            "timesteps": first_run.cache.meta.get("timesteps"), "model": model, "world": world}
    text = section(rows, info)
    (out / "daam.md").write_text(text)
    return text


if __name__ == "__main__":
    from analyses.run_all import run_one
    run_one(run)
