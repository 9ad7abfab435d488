"""The latent-SVD study's experiments on a pipeline: attribute-transfer pairs and early vs late perturbations,
judged by the shapes world's parser (captions and readings in the world the model was trained on,
``lab.world.world_of``), and the trajectory statistics of every recorded generation.

    traj, runs, ks, ts = transfer_study(pipe, cfg)       # items: (source, target) caption pairs, per attribute
    ptraj, prun = perturb_study(pipe, cfg)                # items: one-object captions, perturbed at steps s
    stats = trajectory_stats(latents, k)                  # spectra, PCA, z_T-z_0 plane, step cosines
    baselines(traj, runs, attribute); pair_angles(traj, runs, ts, attribute, k)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lab.progress import progress
from lab.trajectory import Trajectory, record
from lab.world import make_scene, score, world_of

from . import geometry, spectra
from .judge import KEPT, changed, changed_scene, kept, read
from .perturb import perturb
from .transfer import transfer

SEED_BASE = 2_000_000  # scene seeds for this study, far from training seeds, in the "test" stream


@dataclass
class PairRun:
    attribute: str
    source_scene: object
    target_scene: object
    source_index: int
    target_index: int
    verdicts: dict = field(default_factory=dict)  # mode -> (len(ts), len(ks), 3) bool: changed, kept, both
    grids: dict = field(default_factory=dict)     # mode -> TransferGrid
    drawn: bool = False  # the source image shows the source attribute and the target image the target's


def pair_scenes(attribute: str, n: int, world: int = 1) -> list[tuple]:
    """n (source, target) single-object scenes of `world` whose captions differ in ``attribute`` only."""
    out = []
    for i in range(n):
        scene = make_scene(SEED_BASE + i + (0 if attribute == "colour" else 10_000), "test", n_objects=1, world=world)
        out.append((scene, changed_scene(scene, attribute)))
    return out


def judge(grid, source_image, target_scene, attribute: str) -> np.ndarray:
    """(len(ts), len(ks), 3) bool: changed as intended (the edit shows the target's attribute and the source image
    did not), everything else kept (against the source image's parse), both. Images are read in the target scene's
    world."""
    world = target_scene.world
    reference = read(source_image, world)
    already = changed(target_scene, reference, attribute)
    out = np.zeros((len(grid.ts), len(grid.ks), 3), bool)
    for i in range(len(grid.ts)):
        for j in range(len(grid.ks)):
            parsed = read(grid.images[i, j], world)
            c = changed(target_scene, parsed, attribute) and not already
            k = kept(reference, parsed, ignore=attribute)["all"]
            out[i, j] = c, k, c and k
    return out


def transfer_study(pipe, cfg) -> tuple[Trajectory, list[PairRun], list[int], list[int]]:
    """Record every source and target caption once (one batch), then the (t, k) grid of transfers per pair and mode."""
    runs, prompts, seeds, world = [], [], [], world_of(pipe)
    for attribute in ("colour", "size"):
        for i, (source, target) in enumerate(pair_scenes(attribute, cfg.pairs, world)):
            runs.append(PairRun(attribute, source, target, len(prompts), len(prompts) + 1))
            prompts += [source.caption, target.caption]
            seeds += [cfg.seed + i] * 2  # a pair shares its seed; pairs differ
    traj = record(pipe, prompts, seeds=seeds, product=False, num_inference_steps=cfg.steps,
                  guidance_scale=cfg.guidance)
    r = min(traj.latents.shape[-2:])
    ks = sorted({k for k in cfg.ks if k <= r} | {r})
    ts = sorted({min(cfg.steps, max(0, round(f * cfg.steps))) for f in cfg.t_fractions})
    for run in progress(runs, "SVD: transfer grids", unit="pair"):
        run.drawn = (score(run.source_scene, read(traj.images[run.source_index], world))[run.attribute]
                     and score(run.target_scene, read(traj.images[run.target_index], world))[run.attribute])
        for mode in cfg.modes:
            grid = transfer(pipe, traj, traj, ks, ts, mode, source_index=run.source_index,
                            target_index=run.target_index)
            run.grids[mode] = grid
            run.verdicts[mode] = judge(grid, traj.images[run.source_index], run.target_scene, run.attribute)
    return traj, runs, ks, ts


def baselines(traj: Trajectory, runs: list[PairRun], attribute: str) -> dict[str, float]:
    """Rates over the pairs: the model draws the source / target attribute; the source image already shows the
    target's; changing the prompt alone (the target image) keeps the source image's other content."""
    chosen = [r for r in runs if r.attribute == attribute]
    rows = {"source image shows the source attribute": [], "target image shows the target attribute": [],
            "source image already shows the target attribute": [],
            "target image keeps the source image's other content (prompt change alone)": []}
    for r in chosen:
        world = r.source_scene.world
        ps, pt = read(traj.images[r.source_index], world), read(traj.images[r.target_index], world)
        rows["source image shows the source attribute"].append(score(r.source_scene, ps)[attribute])
        rows["target image shows the target attribute"].append(score(r.target_scene, pt)[attribute])
        rows["source image already shows the target attribute"].append(changed(r.target_scene, ps, attribute))
        rows["target image keeps the source image's other content (prompt change alone)"].append(
            kept(ps, pt, ignore=attribute)["all"])
    return {k: float(np.mean(v)) if v else float("nan") for k, v in rows.items()}


@dataclass
class PerturbRun:
    steps_at: list[int]
    change: np.ndarray   # (prompts, sizes, directions, len(steps_at)) mean |pixel difference|, 0..255
    flips: np.ndarray    # (prompts, sizes, directions, len(steps_at), len(KEPT)+1) bool: no longer kept; last = any
    norms: np.ndarray    # (prompts, len(steps_at)) |z_s| of the unperturbed runs
    sizes: list[float]   # absolute norms of the perturbations
    directions: list[str]


def perturb_study(pipe, cfg) -> tuple[Trajectory, PerturbRun]:
    world = world_of(pipe)
    scenes = [make_scene(SEED_BASE + 20_000 + i, "test", n_objects=1, world=world) for i in range(cfg.perturb_prompts)]
    traj = record(pipe, [s.caption for s in scenes], seeds=[cfg.seed + 1 + i for i in range(len(scenes))],
                  product=False, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance)  # one seed per prompt
    steps_at = list(range(0, cfg.steps + 1, cfg.perturb_every))
    if steps_at[-1] != cfg.steps:
        steps_at.append(cfg.steps)
    unit = float(np.sqrt(traj.latents[0, 0].numel()))
    sizes = [f * unit for f in cfg.perturb_sizes]
    changes, flips, norms = [], [], []
    for b in progress(range(len(scenes)), "SVD: perturbations", unit="generation"):
        change, flip = [], []
        for size_ in sizes:
            result = perturb(pipe, traj, steps_at, size_, index=b, seed=cfg.seed)
            reference = read(result.reference, world)
            f = np.zeros(result.change.shape + (len(KEPT) + 1,), bool)  # (directions, steps, KEPT + 1)
            for i in range(len(result.directions)):
                for j in range(len(steps_at)):
                    verdict = kept(reference, read(result.images[i, j], world))
                    f[i, j] = [not verdict[k] for k in KEPT] + [not verdict["all"]]
            change.append(result.change), flip.append(f)
        changes.append(np.stack(change)), flips.append(np.stack(flip)), norms.append(result.norms.numpy())
    return traj, PerturbRun(steps_at, np.stack(changes), np.stack(flips), np.stack(norms), sizes, result.directions)


def trajectory_stats(latents: torch.Tensor, k: int = 4) -> dict:
    """Per-generation measurements of a (steps+1, batch, C, h, w) trajectory batch."""
    U_S_V = spectra.channel_svd(latents)
    S = U_S_V[1]                                                   # (steps+1, batch, C, r)
    pca = geometry.trajectory_pca(latents)
    plane = geometry.endpoint_plane(latents)
    return {
        "S": S, "erank": spectra.effective_rank(S), "top1_energy": spectra.energy_in_top_k(S, 1),
        "rotation": {kk: spectra.subspace_rotation(latents, kk)["left"][..., -1] for kk in (1, k)},  # (steps, b, C)
        "pca": pca, "plane": plane, "cos": geometry.step_cosines(latents),
        "norms": latents.flatten(2).norm(dim=-1),                  # (steps+1, batch)
    }


def pair_angles(traj: Trajectory, runs: list[PairRun], ts: list[int], attribute: str, k: int) -> np.ndarray:
    """(len(ts),) largest principal angle between the source's and the target's top-k left singular subspaces at
    step t, mean over the attribute's pairs and the channels: how different the swapped parts are."""
    chosen = [r for r in runs if r.attribute == attribute]
    src = traj.latents[ts][:, [r.source_index for r in chosen]]  # (len(ts), pairs, C, h, w)
    tgt = traj.latents[ts][:, [r.target_index for r in chosen]]
    (U_s, _), (U_t, _) = spectra.top_k_bases(src, k), spectra.top_k_bases(tgt, k)
    return spectra.principal_angles(U_s, U_t)[..., -1].mean(dim=(1, 2)).numpy()
