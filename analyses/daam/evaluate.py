"""Score DAAM maps of generated shapes-world images against the objects the world's parser finds in them.

    scenes = held_out_scenes(16)
    targets, rows = [], []
    for first, run in runs(pipe, scenes, steps=10):                # generate in batches of 8, under capture
        for b, scene in enumerate(scenes[first:first + len(run.images)]):
            t, r = score_image(run, b, first + b, scene, pipe)
            targets += t; rows += r
    t, r = score_batch(run_batch(pipe, scenes[8:], steps=10), 8, scenes[8:], pipe)   # the second batch alone

A *target* is a captioned object the model drew as captioned: the parser found it and its colour and shape match
the caption (``lab.world.match`` pairs captioned and parsed objects). Only targets are scored; the mask is the
parser's (of the scene's world), of the generated image. Rows are plain dicts: {"image", "metric", "key", "value"}.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lab.progress import progress
from lab.world import SHAPES, Scene, make_scene, match, parse

from .capture import Run, generate
from .maps import binarize, global_maps, layer_names, word_map
from .metrics import gaussian_prior, iou, mass_inside, whole_image
from .openvocab import open_vocab
from .sources import kept_steps
from .words import occurrences, tokenizer_of

SEED_BASE = 2_000_000  # far from the training seeds; the "test" split
TAUS = (0.3, 0.4, 0.5)


def held_out_scenes(n: int, first_seed: int = SEED_BASE, world: int = 1) -> list[Scene]:
    """`n` test-split scenes of `world` with seeds first_seed + i (their generation seed too)."""
    return [make_scene(first_seed + i, "test", world=world) for i in range(n)]


def runs(pipe, scenes: list[Scene], steps: int, guidance: float = 7.5, batch: int = 8, slices: bool = False,
         mid: bool = True, queries: bool = False, head_steps="all", desc: str = "DAAM: generating"):
    """Yield (index of the first scene, Run) per batch; scene i is generated with the seed scene.seed.

    By default every head is kept at every step (head_steps="all"), so every slice the study scores is the method's
    exactly (the built-in model's maps are small); slices=True adds the head-averaged view the notebook uses.
    desc: the progress bar's label (one tick per image).
    """
    bar = progress(total=len(scenes), desc=desc, unit="image")
    for first in range(0, len(scenes), batch):
        chunk = scenes[first:first + batch]
        yield first, run_batch(pipe, chunk, steps, guidance, slices=slices, mid=mid, queries=queries,
                               head_steps=head_steps)
        bar.update(len(chunk))
    bar.close()


def run_batch(pipe, scenes: list[Scene], steps: int, guidance: float = 7.5, slices: bool = False, mid: bool = True,
              queries: bool = False, head_steps="all") -> Run:
    """The Run of one batch of scenes, generated in one call (scene i with the seed scene.seed); runs() options."""
    return generate(pipe, [s.caption for s in scenes], seed=[s.seed for s in scenes], steps=steps, guidance=guidance,
                    slices=slices, mid=mid, queries=queries, head_steps=head_steps, height=scenes[0].size,
                    width=scenes[0].size)


@dataclass
class Target:
    """One object drawn as captioned: where it is (the parser's mask) and what DAAM says of its noun."""

    image: int  # index of the generation
    index: int  # object index in the caption
    scene: Scene
    mask: np.ndarray  # (H, W) bool, the parser's
    noun_tokens: list[int]  # key positions of this object's shape word
    noun_map: torch.Tensor  # (H, W) DAAM map of the noun in [0, 1]
    picture: np.ndarray  # (H, W, 3) uint8, the generated image


def occurrence_in_caption(scene: Scene, index: int, attribute: str) -> int:
    """Which occurrence of object `index`'s `attribute` word (shape, colour, size) the caption's word is."""
    value = getattr(scene.objects[index], attribute)
    return sum(getattr(o, attribute) == value for o in scene.objects[:index])


def score_image(run: Run, batch: int, image: int, scene: Scene, pipe, taus=TAUS, n_step_groups: int = 5,
                ovam: bool = False) -> tuple[list[Target], list[dict]]:
    """Targets and score rows of one generated image (see the module docstring)."""
    tok = tokenizer_of(pipe)
    picture = run.images[batch]
    parsed = parse(picture, world=scene.world)
    found = match(scene, parsed)
    g = global_maps(run, batch=batch)
    size = tuple(picture.shape[:2])
    rows: list[dict] = []

    def add(metric, key, value, **extra):
        rows.append({"image": image, "metric": metric, "key": key, "value": float(value), **extra})

    ok = [f is not None and f.colour == o.colour and f.shape == o.shape for o, f in zip(scene.objects, found)]
    add("drawn", "objects", np.mean(ok))
    targets = []
    for i, (obj, f) in enumerate(zip(scene.objects, found)):
        if not ok[i]:
            continue
        occ = occurrence_in_caption(scene, i, "shape")
        tokens = [t for w in occurrences(tok, scene.caption, obj.shape, occ) for t in w.tokens]
        heat = word_map(g, tok, obj.shape, occurrence=occ)
        relative = word_map(g, tok, obj.shape, occurrence=occ, relative=True)
        targets.append(Target(image, i, scene, f.mask, tokens, heat, picture))
        prior, everything = gaussian_prior(size), whole_image(size)
        for tau in taus:
            add("noun_iou", "daam", iou(binarize(heat, tau), f.mask), tau=tau, obj=i)
            add("noun_iou", "daam, relative", iou(binarize(relative, tau), f.mask), tau=tau, obj=i)
            add("noun_iou", "gaussian prior", iou(binarize(prior, tau), f.mask), tau=tau, obj=i)
            add("noun_iou", "whole image", iou(binarize(everything, tau), f.mask), tau=tau, obj=i)
        rows.extend(_slices(run, batch, image, i, obj.shape, occ, f.mask, tok, n_step_groups))
        if ovam and run.queries is not None:
            rows.extend(_open_vocab(run, pipe, batch, image, i, scene, f.mask, tok))
    rows.extend(_adjectives(g, tok, image, scene, found, ok))
    if parsed.objects:
        rows.extend(_where_words_look(g, tok, image, scene, parsed))
    return targets, rows


def score_batch(run: Run, first: int, scenes: list[Scene], pipe, **options) -> tuple[list[Target], list[dict]]:
    """score_image() of every image of a batch's Run (generations first, first + 1, ... of `scenes`, the batch's
    own): its targets and rows, image by image. options: score_image()'s."""
    targets, rows = [], []
    for b, scene in enumerate(scenes):
        t, r = score_image(run, b, first + b, scene, pipe, **options)
        targets += t
        rows += r
    return targets, rows


def _slices(run, batch, image, i, noun, occ, mask, tok, n_step_groups) -> list[dict]:
    """Noun IoU at tau 0.4 for each layer, resolution, step range and head alone (each from the cache of `run`
    that holds it: a layer, resolution or head from the published maps, a step range from run.heads when every head
    was kept there, else from run.slices with heads averaged)."""
    out = []

    def one(metric, key, **sel):
        heat = word_map(global_maps(run, batch=batch, **sel), tok, noun, occurrence=occ)
        out.append({"image": image, "metric": metric, "key": key, "value": iou(binarize(heat), mask), "obj": i})

    every = layer_names(run, blocks=None)
    for name in every:
        one("layer_iou", name, layers=[name])
    for r in sorted({tuple(run.cache.resolution(n)) for n in every}, reverse=True):
        one("resolution_iou", f"{r[0]}x{r[1]}", blocks=None, resolution=r)
    steps = kept_steps(run) or []
    for group in np.array_split(np.array(steps), min(n_step_groups, len(steps))) if steps else []:
        one("steps_iou", f"{group[0]}-{group[-1]}", steps=[int(s) for s in group])
    heads = min(run.cache.meta["heads"][n] for n in every)
    for h in range(heads):
        one("head_iou", f"head {h}", heads=[h])
    return out


def _open_vocab(run, pipe, batch, image, i, scene, mask, tok) -> list[dict]:
    """The noun's map from its own text ('a hexagon'), and a shape word the caption does not name, as a control."""
    noun = scene.objects[i].shape
    absent = next(s for s in SHAPES if s not in {o.shape for o in scene.objects})
    out = []
    for key, word in (("noun alone", noun), ("absent shape", absent)):
        heat = word_map(open_vocab(run.queries, pipe, f"a {word}", batch=batch), tok, word)
        out.append({"image": image, "metric": "open_vocab_iou", "key": key, "value": iou(binarize(heat), mask),
                    "obj": i})
    return out


def _adjectives(g, tok, image, scene, found, ok) -> list[dict]:
    """Colour, size and noun maps of an object drawn as captioned against its own mask vs the other objects' masks.

    The other objects are the parsed objects matched to the caption's other objects, whatever they were drawn as.
    """
    out = []
    for i, good in enumerate(ok):
        others = [f.mask for j, f in enumerate(found) if j != i and f is not None]
        if not good or not others:
            continue
        own = found[i].mask
        for attribute in ("colour", "size", "shape"):
            word = getattr(scene.objects[i], attribute)
            heat = word_map(g, tok, word, occurrence=occurrence_in_caption(scene, i, attribute))
            raw = word_map(g, tok, word, occurrence=occurrence_in_caption(scene, i, attribute),
                           normalize=False).clamp(min=0)
            density_own = float(raw[torch.as_tensor(own)].mean())
            density_other = float(np.mean([float(raw[torch.as_tensor(m)].mean()) for m in others]))
            name = {"shape": "noun"}.get(attribute, attribute)
            base = {"image": image, "obj": i, "key": name}
            out += [{**base, "metric": "bind_iou_own", "value": iou(binarize(heat), own)},
                    {**base, "metric": "bind_iou_other", "value": max(iou(binarize(heat), m) for m in others)},
                    {**base, "metric": "bind_correct", "value": float(density_own > density_other)}]
    return out


def _where_words_look(g, tok, image, scene, parsed) -> list[dict]:
    """Share of each word's heat inside the objects (union of the parser's masks) vs the objects' share of the area."""
    objects = np.logical_or.reduce([f.mask for f in parsed.objects])
    out = [{"image": image, "metric": "area_objects", "key": "area", "value": float(objects.mean())}]
    groups = {"noun": [o.shape for o in scene.objects], "colour": [o.colour for o in scene.objects],
              "size": [o.size for o in scene.objects], "background colour": [scene.background],
              "'background'": ["background"], "'on'": ["on"], "'a'": ["a"]}
    if scene.relation:
        groups["relation"] = [scene.relation]
    if any(o.direction for o in scene.objects):
        groups["'pointing'"] = ["pointing"]
    for key, ws in groups.items():
        shares = []
        for w in dict.fromkeys(ws):
            raw = word_map(g, tok, w, normalize=False).clamp(min=0)
            shares.append(mass_inside(raw, objects))
        out.append({"image": image, "metric": "mass_in_objects", "key": key, "value": float(np.nanmean(shares))})
    return out

