"""SVD of the latents z_t themselves: spectra over time, trajectory geometry, attribute transfer, perturbations.

    import lab
    from analyses import svd
    pipe = lab.load("shapes")
    traj = svd.record(pipe, ["a small red circle on a black background",
                             "a small blue circle on a black background"], seeds=0, num_inference_steps=20)
    U, S, Vh = svd.channel_svd(traj.latents)          # per channel; S (steps+1, batch, C, r)
    svd.effective_rank(S), svd.subspace_rotation(traj.latents, k=4)["left"]
    svd.trajectory_pca(traj.latents).explained, svd.endpoint_plane(traj.latents).outside, svd.step_cosines(traj.latents)
    grid = svd.transfer(pipe, traj, traj, ks=[1, 4, 16], ts=[5, 10], mode="both", source_index=0, target_index=1)
    result = svd.perturb(pipe, traj, steps_at=[0, 10, 20], size=8.0)

record / run_edited / Trajectory         lab.trajectory: z_t at every step of a pipeline call; re-run with edits
channel_svd / reconstruct / effective_rank / principal_angles / subspace_rotation / energy_in_top_k   spectra.py
trajectory_pca / endpoint_plane / step_cosines   geometry.py: is the trajectory a 2-D rotation?
swap_top_k / transfer / TransferGrid / MODES      transfer.py: our version of latent-SVD attribute transfer
top_direction / random_direction / perturb / Perturbation   perturb.py: early vs late perturbations
changed_scene / kept / changed           judge.py: parser verdicts for edited images
plots, views                             figures on given Axes; the notebook's callbacks
python -m analyses.svd [out]             study.py: the study on the built-in model (LAB_SIZE small | default | full);
                                         its items and results in experiments.py, figures.py, report.py

Our own measurements, named as ours: the exact recipes of Wang et al. 2025 ("Exploring the latent space of diffusion
models directly through singular value decomposition") are not public, and Wang & Vastola ("Diffusion models generate
images like painters") is followed in spirit (2-D rotation, early vs late perturbation), not reproduced.
"""
from lab.trajectory import Trajectory, record, run_edited

from .geometry import PCA, Plane, endpoint_plane, step_cosines, trajectory_pca
from .judge import changed, changed_scene, kept
from .perturb import DIRECTIONS, Perturbation, perturb, random_direction, top_direction
from .spectra import (channel_svd, effective_rank, energy_in_top_k, principal_angles, reconstruct, subspace_rotation,
                      top_k_bases)
from .transfer import MODES, TransferGrid, swap_top_k, transfer

__all__ = [
    "DIRECTIONS", "MODES", "PCA", "Perturbation", "Plane", "Trajectory", "TransferGrid", "changed", "changed_scene",
    "channel_svd", "effective_rank", "endpoint_plane", "energy_in_top_k", "kept", "perturb", "principal_angles",
    "random_direction", "reconstruct", "record", "run_edited", "step_cosines", "subspace_rotation", "swap_top_k",
    "top_direction", "top_k_bases", "trajectory_pca", "transfer",
]
