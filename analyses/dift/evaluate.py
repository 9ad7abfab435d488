"""The DIFT study's measurements: PCK of DIFT features over a (timestep, block) grid, of the baselines, per subset
and per factor.

    grid(pipe, pairs, timesteps, blocks, ...) -> {(t, block): evaluation}   baselines(pipe, pairs) -> {name: evaluation}
    grid_inputs(pipe, pairs) -> what every timestep of a grid shares (grid(..., inputs=...))
    subsets(evaluation) -> {subset: PCK}        by_factor(pipe, pairs, t, block) -> {factor: {method: PCK}}
    pck_curve(evaluation, pairs, alphas)        threshold_scale(pairs, feature_cell)
"""
from __future__ import annotations

import numpy as np

from lab.progress import progress

from .features import FeatureMap, block_features, condition, encode, prepare
from .match import evaluate_pairs, pck, summarize, threshold
from .pairs import FACTORS, GEOMETRIC_TWIN, images_of, one_factor_pairs


def grid_inputs(pipe, pairs, prompt: str = "", seed: int = 0, batch_size: int = 64):
    """What every timestep of a grid shares: (image ids, prepare() of the images, their VAE latents (N, 4, h, w),
    their condition()); each image encoded once. prompt may hold {category}."""
    images = images_of(pairs)
    ids = list(images)
    cats = {}
    for p in pairs:
        cats.setdefault(p.src_id, p.category), cats.setdefault(p.trg_id, p.category)
    prep = prepare(pipe, list(images.values()), "native", seed)
    latents = encode(pipe, prep.pixels, batch_size)  # (N, 4, h, w)
    cond = condition(pipe, [prompt.format(category=cats[i]) for i in ids], prep.input_sizes[0])
    return ids, prep, latents, cond


def grid(pipe, pairs, timesteps, blocks, ensemble: int = 8, prompt: str = "", seed: int = 0,
         batch_size: int = 64, alpha: float = 0.1, desc: str = "DIFT grid", inputs=None) -> dict:
    """{(t, block): evaluate_pairs() result}: one UNet pass per timestep serves every block (lab.hooks trace up to
    the last block, run_until stops there). Each image is encoded by the VAE once (inputs: grid_inputs() of the
    same pairs, prompt and seed, to share that between grids of other timesteps). prompt may hold {category}.
    desc: the progress bar's label (one tick per timestep)."""
    ids, prep, latents, cond = inputs if inputs is not None else grid_inputs(pipe, pairs, prompt, seed, batch_size)
    out = {}
    for t in progress(timesteps, desc, unit="timestep"):
        feats = block_features(pipe, latents, t, blocks, cond, prep.seeds, ensemble, batch_size)
        for block, maps in feats.items():  # maps: (N, C, h, w)
            fmaps = {i: FeatureMap(maps[j], prep.image_sizes[j], prep.input_sizes[j], {"t": t, "block": block})
                     for j, i in enumerate(ids)}
            out[(t, block)] = evaluate_pairs(pairs, fmaps, alpha)
    return out


def baselines(pipe, pairs, seed: int = 0, alpha: float = 0.1) -> dict:
    """{"pixels": ..., "VAE latents": ...}: evaluate_pairs() with the image's RGB in [-1, 1] (C=3, full resolution)
    and with its VAE latent mean (C=4, 1/8 resolution) as the feature maps."""
    images = images_of(pairs)
    prep = prepare(pipe, list(images.values()), "native", seed)
    latents = encode(pipe, prep.pixels)  # (N, 4, h, w)
    out = {}
    for name, maps in (("pixels", prep.pixels), ("VAE latents", list(latents))):
        fmaps = {i: FeatureMap(maps[j].float(), prep.image_sizes[j], prep.input_sizes[j], {"baseline": name})
                 for j, i in enumerate(images)}
        out[name] = evaluate_pairs(pairs, fmaps, alpha)
    return out


def subsets(result: dict, alpha: float = 0.1) -> dict:
    """PCK per point (and per image) on: all, same colour, different colour, arrows pointing the same way, mirrored
    arrows; for mirrored arrows also 'tip/tail by meaning' (prediction at the right-named point) and 'tip/tail by
    geometry' (at the point on the same side, the wrong-named one)."""
    recs = result["pairs"]
    pick_ = {
        "all": recs,
        "same colour": [r for r in recs if r["info"]["same_colour"]],
        "different colour": [r for r in recs if not r["info"]["same_colour"]],
        "arrows, same direction": [r for r in recs if r["info"]["shape"] == "arrow" and not r["info"]["mirrored"]],
        "arrows, mirrored": [r for r in recs if r["info"]["mirrored"]],
    }
    out = {k: summarize([r["correct"] for r in v]) for k, v in pick_.items()}
    meaning, geometry = [], []
    for r in pick_["arrows, mirrored"]:
        info = r["info"]
        thr = alpha * max(info["trg_obj"].bbox[2] - info["trg_obj"].bbox[0],
                          info["trg_obj"].bbox[3] - info["trg_obj"].bbox[1])
        for row, name in enumerate(info["names"]):
            if name in GEOMETRIC_TWIN:
                pred = r["pred"][row]
                meaning.append(np.hypot(*(pred - info["trg_named"][name])) <= thr)
                geometry.append(np.hypot(*(pred - info["trg_named"][GEOMETRIC_TWIN[name]])) <= thr)
    n = len(meaning)
    out["mirrored tip/tail: by meaning"] = {"per_point": float(np.mean(meaning)) if n else float("nan"), "points": n}
    out["mirrored tip/tail: by geometry"] = {"per_point": float(np.mean(geometry)) if n else float("nan"), "points": n}
    return out


def by_factor(pipe, pairs, t: int, block: str, ensemble: int = 8, seed: int = 0) -> dict[str, dict[str, dict]]:
    """{factor: {method: summarize()}} for DIFT at (t, block), pixels and VAE latents on one_factor_pairs() of each
    FACTOR. All factors share one featurisation: A images once, every changed B once."""
    changed = [q for f in FACTORS for q in one_factor_pairs(pairs, f)]
    dift = grid(pipe, changed, [t], [block], ensemble, seed=seed, desc="DIFT, one-factor pairs")[(t, block)]
    methods = {"DIFT": dift,
               **baselines(pipe, changed, seed)}
    return {f: {m: summarize([r["correct"] for r in res["pairs"] if r["info"]["factor"] == f])
                for m, res in methods.items()} for f in FACTORS}


def hardest_factor(factors: dict) -> str:
    """The factor of a by_factor() result whose one-factor pairs DIFT matches worst."""
    return min(factors, key=lambda f: factors[f]["DIFT"]["per_point"])


def pck_curve(result: dict, pairs, alphas=(0.1, 0.2, 0.3, 0.5)) -> dict[float, float]:
    """PCK per point at each alpha, from the predictions an evaluate_pairs result already holds."""
    out = {}
    for alpha in alphas:
        hits = [pck(r["pred"], r["target"], p.trg_bbox, alpha) for r, p in zip(result["pairs"], pairs)]
        out[alpha] = float(np.concatenate(hits).mean())
    return out


def threshold_scale(pairs, feature_cell: float, alpha: float = 0.1) -> tuple[float, float]:
    """Mean PCK@alpha threshold over the target keypoints: in pixels, and in feature-map cells of `feature_cell` px."""
    px = float(np.mean([threshold(p.trg_bbox, alpha) for p in pairs for _ in p.trg_kps]))
    return px, px / feature_cell
