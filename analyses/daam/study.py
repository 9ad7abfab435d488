"""Study: how well DAAM's word maps find the objects of the built-in model's images, and what they mean.

    python -m analyses.daam [out]        # LAB_SIZE=small (4 images) | default (200) | full (500); writes out/daam_*.png
    run(out, config=config(n=8)) -> str  # the REPORT section (Markdown); also written to out/daam.md

Items are held-out scenes (evaluate.held_out_scenes); each image gives per-object rows (evaluate.score_image), the
random-UNet and faithfulness rows follow; figures.py draws them and report.py writes the section.

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
from lab.hooks import edited, scale_tokens, select
from lab.plotting import save_figure
from lab.load import with_random_unet
from lab.sizes import pick, size
from lab.progress import progress
from lab.world import parse, world_of

from .evaluate import TAUS, held_out_scenes, occurrence_in_caption, runs, score_image
from .faithfulness import CONDITIONS, condition_masks
from .figures import examples_figure, faithfulness_figure, miou_figure, slices_figure, words_figure
from .maps import binarize, global_maps, word_map
from .metrics import iou
from .plot import layer_step_grid
from .report import section


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


def random_unet_rows(pipe, scenes, targets, steps, guidance, batch) -> list[dict]:
    """Noun IoU of DAAM on the re-initialised UNet, against the masks of the real model's images."""
    rp = with_random_unet(pipe)
    by_image = {}
    for t in targets:
        by_image.setdefault(t.image, []).append(t)
    order = sorted(by_image)  # generation indices that have targets
    chosen = [scenes[i] for i in order]
    rows = []
    for first, run in runs(rp, chosen, steps, guidance, batch, mid=False, head_steps=None, desc="DAAM: random UNet"):
        for b, scene in enumerate(chosen[first:first + len(run.images)]):
            image = order[first + b]
            g = global_maps(run, batch=b)
            for t in by_image[image]:
                heat = word_map(g, pipe, scene.objects[t.index].shape,
                                occurrence=occurrence_in_caption(scene, t.index, "shape"))
                for tau in TAUS:
                    rows.append({"image": image, "obj": t.index, "metric": "noun_iou", "key": "random unet",
                                 "tau": tau, "value": iou(binarize(heat, tau), t.mask)})
    return rows


def faithfulness_rows(pipe, targets, steps, guidance, batch, factor: float = 0.0) -> list[dict]:
    """Regenerate each target's image with its noun silenced in each condition's region; did the object survive?"""
    names = select(pipe, kind="attn2")
    rows = []
    bar = progress(total=len(targets) * len(CONDITIONS), desc="DAAM: faithfulness", unit="image")
    for first in range(0, len(targets), batch):
        chunk = targets[first:first + batch]
        regions = [condition_masks(binarize(t.noun_map)) for t in chunk]
        for condition in CONDITIONS:
            masks = torch.stack([r[condition] for r in regions])  # (rows, H, W)
            edit = scale_tokens([t.noun_tokens for t in chunk], factor, mask=masks)
            gens = [torch.Generator(pipe.device).manual_seed(t.scene.seed) for t in chunk]
            with edited(pipe, {n: edit for n in names}):
                out = pipe([t.scene.caption for t in chunk], num_inference_steps=steps, guidance_scale=guidance,
                           generator=gens, output_type="np").images
            images = (np.asarray(out) * 255).round().astype(np.uint8)
            for t, after_image, mask in zip(chunk, images, masks):
                obj = t.scene.objects[t.index]
                before = _count(parse(t.picture, world=t.scene.world), obj)
                after = _count(parse(after_image, world=t.scene.world), obj)
                change = np.abs(after_image.astype(np.float32) - t.picture.astype(np.float32)).mean(-1) / 255.0
                base = {"image": t.image, "obj": t.index, "key": condition}
                rows += [{**base, "metric": "faith_lost", "value": float(after < before)},
                         {**base, "metric": "faith_change", "value": float(change[t.mask].mean())},
                         {**base, "metric": "faith_area", "value": float(mask.mean())}]
            bar.update(len(chunk))
    bar.close()
    return rows


def _count(parsed, obj) -> int:
    return sum(f.colour == obj.colour and f.shape == obj.shape for f in parsed.objects)


def run(out: Path, model: str = "shapes", config: Config | None = None) -> str:
    """Run the study; write its figures and out/daam.md; return the REPORT section."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config if config is not None else globals()["config"]()
    n, steps, n_faith, guidance, batch = cfg.n, cfg.steps, cfg.n_faith, cfg.guidance, cfg.batch
    t_start = time.perf_counter()
    pipe = lab.load(model)
    world = world_of(pipe)
    scenes = held_out_scenes(n, world=world)
    targets, rows, first_run = [], [], None
    t0 = time.perf_counter()
    for first, run_ in runs(pipe, scenes, steps, guidance, batch, queries=True):
        first_run = first_run or run_
        for b, scene in enumerate(scenes[first:first + len(run_.images)]):
            t, r = score_image(run_, b, first + b, scene, pipe, ovam=True)
            targets += t
            rows += r
    seconds = {"generate and score": time.perf_counter() - t0}
    t0 = time.perf_counter()
    rows += random_unet_rows(pipe, scenes, targets, steps, guidance, batch) if targets else []
    seconds["random UNet"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    faith_targets = targets[:n_faith]
    rows += faithfulness_rows(pipe, faith_targets, steps, guidance, batch) if faith_targets else []
    seconds["faithfulness"] = time.perf_counter() - t0

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
