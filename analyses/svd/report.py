"""The latent-SVD study's REPORT section, from its results (no model runs here).

    section(model, cfg, traj, runs, ks, ts, prun, latents, stats, k, seconds) -> str (Markdown)
    geometry_section(stats, k); transfer_section(runs, ks, ts, mode, attribute); perturb_section(perturb_run)
"""
from __future__ import annotations

import numpy as np

from lab.sizes import size

from .experiments import baselines, pair_angles
from .judge import KEPT, MIN_AREA, TOL


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


def _best(v: np.ndarray, ks, ts) -> str:
    """The (t, k) cell with the most pairs both changed and kept, from verdicts v (pairs, ts, ks, 3)."""
    both = v[..., 2].sum(0)  # (ts, ks)
    if both.max() == 0:
        return "No cell has a pair both changed and kept."
    i, j = np.unravel_index(np.argmax(both), both.shape)
    return f"Best cell for both: t={ts[i]}, k={ks[j]} with {both[i, j]}/{v.shape[0]}."


def transfer_section(runs, ks, ts, mode: str, attribute: str) -> str:
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


def perturb_section(p) -> str:
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


def section(model: str, cfg, traj, runs, ks, ts, prun, latents, stats: dict, k: int, seconds: dict) -> str:
    """The Markdown section: geometry and spectra of every unedited generation (latents (steps+1, n, C, h, w)),
    the transfer tables per attribute and mode, and the perturbation table. seconds: {"transfer", "total"}."""
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
              f"_transfer part {seconds['transfer']:.0f} s, whole study {seconds['total']:.0f} s on this machine._\n"]
    return "\n".join(parts)
