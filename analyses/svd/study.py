"""Study: the latent-SVD measurements on the built-in model, scored by the shapes world's parser.

    python -m analyses.svd [OUT_DIR]            # LAB_SIZE=small | default | full; writes OUT_DIR/svd_*.png, svd.md

1. Trajectory geometry and spectra of every recorded generation (PCA, z_T-z_0 plane, step cosines, effective rank,
   rotation of the top-k singular subspaces).
2. Attribute transfer: pairs of captions that differ in one attribute of one object (colour, size), same seed; the
   source run gets the target's top-k singular values/vectors at step t (swap_top_k) and continues with the source
   prompt. "changed": lab.world.score of the edited image against the target scene, for that attribute, passes and
   that of the unedited source image did not. "kept": the
   edited image holds the source image's parsed content (count, background, every object's centre within 4 px, its
   shape and the other attribute) - judged against what the model drew, not the caption. "both": both at once.
   Images are read by judge.read: the world's parser, ignoring blobs smaller than half the smallest world object.
3. Early vs late perturbation: z_s + size * direction (top singular direction or random, same norm) at step s;
   mean |pixel change| of the final image and parser-judged changes of its content, against s.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import lab
from lab.plotting import save_figure
from lab.sizes import pick, size
from lab.world import make_scene, score
from lab.trajectory import Trajectory, record

from . import geometry, plots, spectra
from .judge import KEPT, MIN_AREA, TOL, changed, changed_scene, kept, read
from .perturb import perturb
from .transfer import MODES, transfer

SEED_BASE = 2_000_000  # scene seeds for this study, far from training seeds, in the "test" stream


@dataclass
class Config:
    steps: int
    guidance: float
    pairs: int            # per attribute
    ks: list[int]
    t_fractions: list[float]
    modes: list[str]
    perturb_prompts: int
    perturb_every: int    # perturb at steps 0, every, 2*every, ..., steps
    perturb_sizes: list[float]  # norms, in units of sqrt(C*h*w) (the expected norm of the initial noise)
    seed: int = 0


def config() -> Config:
    return pick(
        small=Config(steps=6, guidance=7.5, pairs=1, ks=[1, 16], t_fractions=[0.34, 0.67], modes=["both"],
                     perturb_prompts=1, perturb_every=3, perturb_sizes=[0.25]),
        default=Config(steps=20, guidance=7.5, pairs=5, ks=[0, 1, 4, 16],
                       t_fractions=[0.1, 0.25, 0.5, 1.0], modes=list(MODES), perturb_prompts=4, perturb_every=4,
                       perturb_sizes=[0.05, 0.25]),
        full=Config(steps=25, guidance=7.5, pairs=20, ks=[0, 1, 2, 3, 4, 6, 8, 12, 16],
                    t_fractions=[0.04, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0], modes=list(MODES),
                    perturb_prompts=12, perturb_every=1, perturb_sizes=[0.02, 0.05, 0.1, 0.25]),
    )


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


def pair_scenes(attribute: str, n: int) -> list[tuple]:
    """n (source, target) single-object scenes whose captions differ in ``attribute`` only."""
    out = []
    for i in range(n):
        scene = make_scene(SEED_BASE + i + (0 if attribute == "colour" else 10_000), "test", n_objects=1)
        out.append((scene, changed_scene(scene, attribute)))
    return out


def judge(grid, source_image, target_scene, attribute: str) -> np.ndarray:
    """(len(ts), len(ks), 3) bool: changed as intended (the edit shows the target's attribute and the source image
    did not), everything else kept (against the source image's parse), both."""
    reference = read(source_image)
    already = changed(target_scene, reference, attribute)
    out = np.zeros((len(grid.ts), len(grid.ks), 3), bool)
    for i in range(len(grid.ts)):
        for j in range(len(grid.ks)):
            parsed = read(grid.images[i, j])
            c = changed(target_scene, parsed, attribute) and not already
            k = kept(reference, parsed, ignore=attribute)["all"]
            out[i, j] = c, k, c and k
    return out


def transfer_study(pipe, cfg: Config) -> tuple[Trajectory, list[PairRun], list[int], list[int]]:
    """Record every source and target caption once (one batch), then the (t, k) grid of transfers per pair and mode."""
    runs, prompts, seeds = [], [], []
    for attribute in ("colour", "size"):
        for i, (source, target) in enumerate(pair_scenes(attribute, cfg.pairs)):
            runs.append(PairRun(attribute, source, target, len(prompts), len(prompts) + 1))
            prompts += [source.caption, target.caption]
            seeds += [cfg.seed + i] * 2  # a pair shares its seed; pairs differ
    traj = record(pipe, prompts, seeds=seeds, product=False, num_inference_steps=cfg.steps,
                  guidance_scale=cfg.guidance)
    r = min(traj.latents.shape[-2:])
    ks = sorted({k for k in cfg.ks if k <= r} | {r})
    ts = sorted({min(cfg.steps, max(0, round(f * cfg.steps))) for f in cfg.t_fractions})
    for run in runs:
        run.drawn = (score(run.source_scene, read(traj.images[run.source_index]))[run.attribute]
                     and score(run.target_scene, read(traj.images[run.target_index]))[run.attribute])
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
        ps, pt = read(traj.images[r.source_index]), read(traj.images[r.target_index])
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


def perturb_study(pipe, cfg: Config) -> tuple[Trajectory, PerturbRun]:
    scenes = [make_scene(SEED_BASE + 20_000 + i, "test", n_objects=1) for i in range(cfg.perturb_prompts)]
    traj = record(pipe, [s.caption for s in scenes], seeds=[cfg.seed + 1 + i for i in range(len(scenes))],
                  product=False, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance)  # one seed per prompt
    steps_at = list(range(0, cfg.steps + 1, cfg.perturb_every))
    if steps_at[-1] != cfg.steps:
        steps_at.append(cfg.steps)
    unit = float(np.sqrt(traj.latents[0, 0].numel()))
    sizes = [f * unit for f in cfg.perturb_sizes]
    changes, flips, norms = [], [], []
    for b in range(len(scenes)):
        change, flip = [], []
        for size_ in sizes:
            result = perturb(pipe, traj, steps_at, size_, index=b, seed=cfg.seed)
            reference = read(result.reference)
            f = np.zeros(result.change.shape + (len(KEPT) + 1,), bool)  # (directions, steps, KEPT + 1)
            for i in range(len(result.directions)):
                for j in range(len(steps_at)):
                    verdict = kept(reference, read(result.images[i, j]))
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


# --- figures ---------------------------------------------------------------------------------------------------------

def _figure(rows: int, cols: int, w: float = 3.3, h: float = 2.8):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w * cols, h * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def spectra_figure(stats: dict, k: int = 4):
    fig, ax = _figure(1, 4)
    plots.spectrum_over_time(ax[0, 0], stats["S"][:, 0, 0], every=max(1, stats["S"].shape[0] // 6))
    ax[0, 0].set_title("channel 0 of one generation", fontsize=8)
    plots.per_channel(ax[0, 1], stats["erank"].mean(1), "effective rank (mean over generations)")
    plots.per_channel(ax[0, 2], stats["rotation"][1].mean(1), "largest angle, top-1 subspace\nstep i vs i+1 (rad)")
    plots.per_channel(ax[0, 3], stats["rotation"][k].mean(1), f"largest angle, top-{k} subspace\nstep i vs i+1 (rad)")
    return fig


def geometry_figure(stats: dict, labels=None):
    fig, ax = _figure(1, 4)
    n = min(6, stats["pca"].coords.shape[1])
    plots.pca_plane(ax[0, 0], stats["pca"].coords[:, :n, :2], labels=None if labels is None else labels[:n])
    ax[0, 0].set_title("trajectories on their own PC1-PC2", fontsize=8)
    explained = stats["pca"].explained.numpy()
    cum = np.cumsum(explained, axis=1)[:, :6]
    ax[0, 1].boxplot(cum, positions=range(1, cum.shape[1] + 1))
    ax[0, 1].set_xlabel("number of PCs")
    ax[0, 1].set_ylabel("variance explained (cumulative)")
    outside = stats["plane"].outside.numpy()
    ax[0, 2].plot(outside, color="0.6", lw=0.8)
    ax[0, 2].plot(outside.mean(1), color="k", lw=2)
    ax[0, 2].set_xlabel("step")
    ax[0, 2].set_ylabel("|z_t outside span(z_T, z_0)| / |z_t|")
    cos = stats["cos"].numpy()
    ax[0, 3].plot(np.arange(1, cos.shape[0] + 1), cos, color="0.6", lw=0.8)
    ax[0, 3].plot(np.arange(1, cos.shape[0] + 1), cos.mean(1), color="k", lw=2)
    ax[0, 3].set_xlabel("step i")
    ax[0, 3].set_ylabel("cos(d_{i-1}, d_i)")
    return fig


def transfer_figure(runs: list[PairRun], ks, ts, mode: str):
    fig, ax = _figure(2, 3, w=3.0, h=2.6)
    for row, attribute in enumerate(("colour", "size")):
        v = np.stack([r.verdicts[mode] for r in runs if r.attribute == attribute]).mean(0)  # (ts, ks, 3)
        for col, name in enumerate(("changed as intended", "everything else kept", "both")):
            plots.rate_grid(ax[row, col], v[..., col], ks, ts, f"{attribute}: {name} (mode {mode})")
    return fig


def examples_figure(runs: list[PairRun], mode: str):
    chosen = [next(r for r in runs if r.attribute == a) for a in ("colour", "size")]
    grid = chosen[0].grids[mode]
    cols = 2 + len(grid.ks)
    fig, ax = _figure(2 * len(grid.ts), cols, w=1.6, h=1.7)
    for block, run in enumerate(chosen):
        g = run.grids[mode]
        for i, t in enumerate(g.ts):
            row = block * len(g.ts) + i
            titles = ["source", "target"] + [f"t={t} k={k}" for k in g.ks]
            plots.images_row(ax[row], [g.source_image, g.target_image] + list(g.images[i]), titles, fontsize=6)
        ax[block * len(g.ts), 0].set_ylabel(run.attribute)
    return fig


def perturb_figure(p: PerturbRun):
    fig, ax = _figure(1, 2)
    for m, size_ in enumerate(p.sizes):
        for i, name in enumerate(p.directions):
            style = dict(marker="o", ls="-" if name == "top" else "--", label=f"{name}, norm {size_:.1f}")
            line, = ax[0, 0].plot(p.steps_at, p.change[:, m, i].mean(0), **style)
            style["color"] = line.get_color()
            ax[0, 1].plot(p.steps_at, p.flips[:, m, i, :, -1].mean(0), **style)
    ax[0, 0].set_ylabel("mean |pixel change| (0-255)")
    ax[0, 1].set_ylabel("parsed content changed (fraction)")
    ax[0, 1].set_ylim(-0.05, 1.05)
    for a in ax[0]:
        a.set_xlabel("step s of the perturbation")
        a.legend(fontsize=7)
    return fig


# --- report ----------------------------------------------------------------------------------------------------------

def _range(x) -> str:
    x = np.asarray(x, dtype=float).ravel()
    return f"{x.mean():.3f} ({x.min():.3f} - {x.max():.3f})"


def geometry_section(stats: dict, k: int) -> str:
    steps = stats["S"].shape[0] - 1
    cum2 = stats["pca"].explained[:, :2].sum(1)
    erank, rot1, rotk = stats["erank"], stats["rotation"][1], stats["rotation"][k]
    half = steps // 2
    lines = [
        "| measurement (per generation) | mean (min - max) |", "|---|---|",
        f"| variance on PC1 | {_range(stats['pca'].explained[:, 0])} |",
        f"| variance on PC1 + PC2 | {_range(cum2)} |",
        f"| max over t of the fraction of z_t outside span(z_T, z_0) | {_range(stats['plane'].outside.amax(0))} |",
        f"| angle between z_T and z_0 (degrees) | {_range(np.degrees(stats['plane'].angle.numpy()))} |",
        f"| cosine of successive step directions, mean over steps | {_range(stats['cos'].mean(0))} |",
        f"| cosine of successive step directions, min over steps | {_range(stats['cos'].amin(0))} |",
        f"| effective rank of a channel at z_T (of {stats['S'].shape[-1]}) | {_range(erank[0])} |",
        f"| effective rank of a channel at step {half} | {_range(erank[half])} |",
        f"| effective rank of a channel at z_0 | {_range(erank[-1])} |",
        f"| energy in the top singular value, z_T / z_0 | {_range(stats['top1_energy'][0])} / "
        f"{_range(stats['top1_energy'][-1])} |",
        f"| largest angle of the top-1 subspace, step i vs i+1, first half / second half (rad) | "
        f"{_range(rot1[:half].mean(0))} / {_range(rot1[half:].mean(0))} |",
        f"| largest angle of the top-{k} subspace, step i vs i+1, first half / second half (rad) | "
        f"{_range(rotk[:half].mean(0))} / {_range(rotk[half:].mean(0))} |",
        f"| norm of z_T / z_0 | {_range(stats['norms'][0])} / {_range(stats['norms'][-1])} |",
    ]
    return "\n".join(lines)


def pair_angles(traj: Trajectory, runs: list[PairRun], ts: list[int], attribute: str, k: int) -> np.ndarray:
    """(len(ts),) largest principal angle between the source's and the target's top-k left singular subspaces at
    step t, mean over the attribute's pairs and the channels: how different the swapped parts are."""
    chosen = [r for r in runs if r.attribute == attribute]
    src = traj.latents[ts][:, [r.source_index for r in chosen]]  # (len(ts), pairs, C, h, w)
    tgt = traj.latents[ts][:, [r.target_index for r in chosen]]
    (U_s, _), (U_t, _) = spectra.top_k_bases(src, k), spectra.top_k_bases(tgt, k)
    return spectra.principal_angles(U_s, U_t)[..., -1].mean(dim=(1, 2)).numpy()


def _best(v: np.ndarray, ks, ts) -> str:
    """The (t, k) cell with the most pairs both changed and kept, from verdicts v (pairs, ts, ks, 3)."""
    both = v[..., 2].sum(0)  # (ts, ks)
    if both.max() == 0:
        return "No cell has a pair both changed and kept."
    i, j = np.unravel_index(np.argmax(both), both.shape)
    return f"Best cell for both: t={ts[i]}, k={ks[j]} with {both[i, j]}/{v.shape[0]}."


def transfer_section(runs: list[PairRun], ks, ts, mode: str, attribute: str) -> str:
    v = np.stack([r.verdicts[mode] for r in runs if r.attribute == attribute])  # (pairs, ts, ks, 3)
    n = v.shape[0]
    head = "| t \\ k | " + " | ".join(str(k) for k in ks) + " |"
    lines = [head, "|---" * (len(ks) + 1) + "|"]
    for i, t in enumerate(ts):
        cells = [f"{v[:, i, j, 0].sum()}/{v[:, i, j, 1].sum()}/{v[:, i, j, 2].sum()}" for j in range(len(ks))]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines.append(f"\nCells: changed / kept / both, out of {n} pairs. {_best(v, ks, ts)}")
    drawn = np.array([r.drawn for r in runs if r.attribute == attribute])
    if drawn.any():
        d = v[drawn]
        lines.append(f"Over the {drawn.sum()} pairs whose source and target images both show their caption's "
                     f"{attribute}: {_best(d, ks, ts)} Changed anywhere in the grid in "
                     f"{d[..., 0].any(axis=(1, 2)).sum()}/{drawn.sum()} pairs.")
    else:
        lines.append(f"No pair has both images showing their caption's {attribute}: the model cannot yet draw these "
                     f"pairs, so no transfer can be judged fairly.")
    return "\n".join(lines)


def perturb_section(p: PerturbRun) -> str:
    n = p.change.shape[0]
    columns = [(m, i) for m in range(len(p.sizes)) for i in range(len(p.directions))]
    names = [f"{p.directions[i]} {p.sizes[m]:.1f}" for m, i in columns]
    lines = ["| step s | norm of z_s | " + " | ".join(f"change, {x}" for x in names) + " | "
             + " | ".join(f"content changed, {x}" for x in names) + " |", "|---" * (2 + 2 * len(columns)) + "|"]
    for j, s in enumerate(p.steps_at):
        c = [f"{p.change[:, m, i, j].mean():.1f}" for m, i in columns]
        f = [f"{p.flips[:, m, i, j, -1].sum()}/{n}" for m, i in columns]
        lines.append(f"| {s} | {p.norms[:, j].mean():.1f} | " + " | ".join(c + f) + " |")
    half = len(p.steps_at) // 2
    floor = ", ".join(f"{p.flips[:, m, :, -1, -1].mean():.0%} at norm {x:.1f}" for m, x in enumerate(p.sizes))
    lines.append(f"\nFloor: perturbing only the latent the VAE decodes (s = {p.steps_at[-1]}) already changes the "
                 f"parsed content in {floor} of images (blurry blobs flip the parser's verdicts), so content-change "
                 f"rates near that floor say little about when content is decided.")
    for m, size_ in enumerate(p.sizes):
        early, late = p.change[:, m, :, :half].mean(), p.change[:, m, :, half:].mean()
        f_early, f_late = p.flips[:, m, :, :half, -1].mean(), p.flips[:, m, :, half:, -1].mean()
        verdict = "change the image more" if early > late else "do NOT change the image more"
        per_attr = ", ".join(f"{k} {p.flips[:, m, ..., i].mean():.0%}" for i, k in enumerate(KEPT))
        lines.append(f"\nNorm {size_:.1f}: mean |pixel change| {early:.1f} for perturbations in the first half of the "
                     f"perturbed steps (s < {p.steps_at[half]}), {late:.1f} in the second half (early perturbations "
                     f"{verdict} on this model); parsed content changed in {f_early:.0%} / {f_late:.0%} of images. "
                     f"What changed, over all steps: {per_attr}.")
    return "\n".join(lines)


def run(out: Path, model: str = "shapes") -> str:
    """Run the study; writes figures into ``out`` and returns its REPORT section (Markdown)."""
    out = Path(out)
    cfg = config()
    t0 = time.perf_counter()
    pipe = lab.load(model)
    traj, runs, ks, ts = transfer_study(pipe, cfg)
    t_transfer = time.perf_counter() - t0
    ptraj, prun = perturb_study(pipe, cfg)
    latents = torch.cat([traj.latents, ptraj.latents], dim=1)  # every recorded generation, unedited
    k = min(4, min(latents.shape[-2:]))
    stats = trajectory_stats(latents, k)
    save_figure(spectra_figure(stats, k), out / "svd_spectra.png")
    save_figure(geometry_figure(stats), out / "svd_geometry.png")
    for mode in cfg.modes:
        save_figure(transfer_figure(runs, ks, ts, mode), out / f"svd_transfer_{mode}.png")
    example_mode = "both" if "both" in cfg.modes else cfg.modes[0]
    save_figure(examples_figure(runs, example_mode), out / "svd_transfer_examples.png")
    save_figure(perturb_figure(prun), out / "svd_perturb.png")

    n_gen = latents.shape[1]
    parts = [
        "## SVD of the latent trajectory (our versions of Wang et al. 2025 and Wang & Vastola)\n",
        f"Model `{model}`, {cfg.steps} {traj.meta['scheduler']} steps, guidance {cfg.guidance}, seeds from {cfg.seed}, "
        f"size `{size()}`. Latents {tuple(latents.shape[2:])} (C, h, w); each channel is an h x w matrix. "
        "Every number describes the weights on disk at this run.\n",
        f"### Trajectory geometry and spectra ({n_gen} unedited generations)\n",
        "![spectra](svd_spectra.png)\n\n![geometry](svd_geometry.png)\n",
        geometry_section(stats, k) + "\n",
        "Effective rank = exp(entropy of the singular values normalised to sum 1) (Roy & Vetterli 2007); a 16 x 16 "
        "Gaussian matrix has about 12.5. Angles are principal angles between top-k left singular subspaces.\n",
        "### Attribute transfer by swapping top-k singular values/vectors\n",
        f"{cfg.pairs} pairs per attribute (one object; captions differ in that object's colour or size); the two runs "
        f"of a pair share a seed (so the same noise), pair i uses seed {cfg.seed} + i. "
        f"The source run's latent at step t gets the target run's top-k per channel (mode values / vectors / both), "
        f"then denoising continues with the *source* prompt. changed = lab.world.score of the edit against the target "
        f"scene passes for that attribute and that of the source image did not; kept = the edit has the source "
        f"image's parsed object count and background, objects within {TOL:.0f} px of the source image's parsed "
        f"centres, with the same shape and other attribute. Images are read by lab.world.parse ignoring blobs under "
        f"{MIN_AREA} px (half the smallest object the world draws). t = {cfg.steps} edits only the latent the VAE "
        f"decodes.\n",
        "![examples](svd_transfer_examples.png)\n",
    ]
    for attribute in ("colour", "size"):
        base = baselines(traj, runs, attribute)
        parts.append(f"**{attribute}** - baselines over the pairs: " +
                     "; ".join(f"{k}: {v:.0%}" for k, v in base.items()) + "\n")
        angles = {kk: pair_angles(traj, runs, ts, attribute, kk) for kk in sorted({1, k})}
        parts.append("Largest principal angle between the source's and the target's top-k left singular subspaces "
                     "at step t (mean over pairs and channels; pi/2 = 1.571 = unrelated): " + "; ".join(
                         f"k={kk}: " + ", ".join(f"t={t} {a:.2f}" for t, a in zip(ts, v)) for kk, v in angles.items())
                     + "\n")
        for mode in cfg.modes:
            parts.append(f"{attribute}, mode `{mode}` (![grid](svd_transfer_{mode}.png)):\n\n"
                         + transfer_section(runs, ks, ts, mode, attribute) + "\n")
    parts += ["### Early vs late perturbation\n",
              f"{cfg.perturb_prompts} generations; at step s the latent gets + norm x direction, norms "
              f"{', '.join(f'{x:.1f}' for x in prun.sizes)} (|z_T| is about {np.sqrt(latents[0, 0].numel()):.0f}; "
              f"top = u1 v1^T of each channel, stacked, unit norm; random = one fixed Gaussian direction of unit "
              f"norm). "
              f"Change is measured against the unperturbed re-run; 'content changed' = the parser no longer finds "
              f"the same objects (count, background, centres within {TOL:.0f} px, colour, shape, size).\n",
              "![perturbation](svd_perturb.png)\n", perturb_section(prun) + "\n",
              f"_transfer part {t_transfer:.0f} s, whole study {time.perf_counter() - t0:.0f} s on this machine._\n"]
    section = "\n".join(parts)
    (out / "svd.md").write_text(section)
    return section


if __name__ == "__main__":
    from analyses.run_all import run_one
    run_one(run)
