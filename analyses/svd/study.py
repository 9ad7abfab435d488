"""Study: the latent-SVD measurements on the built-in model, scored by the shapes world's parser.

    python -m analyses.svd [OUT_DIR]            # LAB_SIZE=small | default | full; writes OUT_DIR/svd_*.png, svd.md
    run(out, config=config())                   # the REPORT section; config() sizes it from LAB_SIZE

1. Trajectory geometry and spectra of every recorded generation (PCA, z_T-z_0 plane, step cosines, effective rank,
   rotation of the top-k singular subspaces).
2. Attribute transfer: pairs of captions that differ in one attribute of one object (colour, size), same seed; the
   source run gets the target's top-k singular values/vectors at step t (swap_top_k) and continues with the source
   prompt. "changed": lab.world.score of the edited image against the target scene, for that attribute, passes and
   that of the unedited source image did not. "kept": the edited image holds the source image's parsed content
   (count, background, every object's centre within 4 px, its shape and the other attribute) - judged against what
   the model drew, not the caption. "both": both at once. Images are read by judge.read: the world's parser, ignoring
   blobs smaller than half the smallest world object.
3. Early vs late perturbation: z_s + size * direction (top singular direction or random, same norm) at step s;
   mean |pixel change| of the final image and parser-judged changes of its content, against s.

Items and their results: experiments.py; figures: figures.py; the section: report.py.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import lab
from lab.plotting import save_figure
from lab.sizes import pick

from .experiments import perturb_study, trajectory_stats, transfer_study
from .figures import examples_figure, geometry_figure, perturb_figure, spectra_figure, transfer_figure
from .report import section
from .transfer import MODES


@dataclass(frozen=True)
class Config:
    """How big the study runs: steps, pairs per attribute and the (k, t) grid of transfers, and the perturbations."""
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


def config(**overrides) -> Config:
    """The study's size for LAB_SIZE (small | default | full), with any field overridden: config(pairs=2)."""
    return dataclasses.replace(pick(
        small=Config(steps=6, guidance=7.5, pairs=1, ks=[1, 16], t_fractions=[0.34, 0.67], modes=["both"],
                     perturb_prompts=1, perturb_every=3, perturb_sizes=[0.25]),
        default=Config(steps=20, guidance=7.5, pairs=5, ks=[0, 1, 4, 16],
                       t_fractions=[0.1, 0.25, 0.5, 1.0], modes=list(MODES), perturb_prompts=4, perturb_every=4,
                       perturb_sizes=[0.05, 0.25]),
        full=Config(steps=25, guidance=7.5, pairs=20, ks=[0, 1, 2, 3, 4, 6, 8, 12, 16],
                    t_fractions=[0.04, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0], modes=list(MODES),
                    perturb_prompts=12, perturb_every=1, perturb_sizes=[0.02, 0.05, 0.1, 0.25]),
    ), **overrides)


def run(out: Path, model: str = "shapes", config: Config | None = None) -> str:
    """Run the study; writes figures and svd.md into ``out`` and returns its REPORT section (Markdown)."""
    out = Path(out)
    cfg = config if config is not None else globals()["config"]()
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
    text = section(model, cfg, traj, runs, ks, ts, prun, latents, stats, k,
                   {"transfer": t_transfer, "total": time.perf_counter() - t0})
    (out / "svd.md").write_text(text)
    return text


if __name__ == "__main__":
    from analyses.run_all import run_one
    run_one(run)
