"""The noise-schedule study's experiments on pipelines; each returns plain results for plots.py and report.py.

    leaks = signal_leaks(pipe, schedules, cfg)         # {(schedule, data): SignalLeak} on rendered world images
    runs = trajectories(pipe, cfg)                      # analyses.schedules.follow on unseen captions
    choices, verdicts = timestep_comparison(pipe, cfg)  # uniform vs Beta(a, a) timesteps, parser verdicts
    results = brightness_experiment(arms, cfg)          # {(arm, background): (brightness, verdicts, examples)}
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from lab.load import with_components
from lab.progress import progress
from lab.world import render
from lab.world.parser import parse, score
from lab.world.quality import SEED_BASE, generate
from lab.world.scenes import Scene, caption_of, make_scene

from .maths import beta_timesteps, signal_leak, uniform_timesteps
from .trajectory import follow


def on_background(scene: Scene, background: str) -> Scene:
    """The scene with its background replaced, and its caption saying so."""
    return dataclasses.replace(scene, background=background,
                               caption=caption_of(scene.objects, background, scene.relation))


def brightness_scenes(background: str, n: int) -> list[Scene]:
    """n single-object test scenes (unseen seeds) asking for `background`."""
    return [on_background(make_scene(SEED_BASE + 50_000 + i, "test", n_objects=1), background) for i in range(n)]


def leak_scenes(cfg) -> list[Scene]:
    """The unseen test scenes of the signal-leak measurement (their first captions also seed the trajectories)."""
    return [make_scene(SEED_BASE + 70_000 + i, "test") for i in range(cfg.leak_images)]


@torch.no_grad()
def signal_leaks(pipe, schedules: dict, cfg) -> dict:
    """{(schedule name, data): SignalLeak} at the last training step, on rendered world images and their latents,
    for the built-in models' two schedules."""
    scenes = leak_scenes(cfg)
    pixels = torch.from_numpy(np.stack([render(s) for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    latents = torch.cat([pipe.vae.encode(x).latent_dist.mean for x in pixels.split(32)])
    latents = latents * pipe.vae.config.scaling_factor
    gen = torch.Generator().manual_seed(0)
    return {(name, data): signal_leak(x, schedules[name], generator=gen, draws=cfg.leak_draws)
            for name in ("shapes (SD schedule)", "shapes-zsnr") for data, x in
            (("world images (pixels)", pixels), ("their VAE latents", latents))}


def trajectories(pipe, cfg) -> list:
    """follow() on the first cfg.trajectories leak scenes' captions, generation i from seed i."""
    prompts = [s.caption for s in leak_scenes(cfg)[:cfg.trajectories]]
    return [follow(pipe, p, seed=i, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance)
            for i, p in progress(list(enumerate(prompts)), "schedules: trajectories", unit="generation")]


def timestep_comparison(pipe, cfg) -> tuple[dict, dict]:
    """Uniform vs Beta(a, a) timesteps with the same number of Euler steps, on unseen one-object captions.
    Returns ({name: timesteps}, {name: [verdict per caption]})."""
    from diffusers import EulerDiscreteScheduler
    euler = with_components(pipe, scheduler=EulerDiscreteScheduler.from_config(pipe.scheduler.config))
    scenes = [make_scene(SEED_BASE + 60_000 + i, "test", n_objects=1) for i in range(cfg.timestep_images)]
    T = pipe.scheduler.config.num_train_timesteps
    choices = {"uniform": uniform_timesteps(cfg.timestep_steps, T),
               f"Beta({cfg.beta_a:g}, {cfg.beta_a:g})": beta_timesteps(cfg.timestep_steps, cfg.beta_a, T)}
    verdicts = {}
    for name, ts in progress(choices.items(), "schedules: uniform vs Beta timesteps", unit="arm"):
        images = generate(euler, scenes, steps=cfg.timestep_steps, guidance=cfg.guidance, seed=SEED_BASE,
                          timesteps=ts.tolist())
        verdicts[name] = [score(s, parse(im)) for s, im in zip(scenes, images)]
    return choices, verdicts


def brightness(images: np.ndarray) -> np.ndarray:
    """(N,) mean brightness in [0, 1] of (N, H, W, 3) uint8 images."""
    return images.reshape(len(images), -1).mean(axis=1) / 255.0


def brightness_experiment(arms: dict, cfg) -> dict:
    """arms: name -> (pipeline, extra call kwargs). Returns {(arm, background): (brightness (N,), verdicts)}."""
    out = {}
    for background in ("black", "white"):
        scenes = brightness_scenes(background, cfg.per_background)
        out["world (truth)", background] = (brightness(np.stack([render(s) for s in scenes])), None)
        for arm, (pipe, call) in progress(arms.items(), f"schedules: {background} backgrounds", unit="arm"):
            images = generate(pipe, scenes, steps=cfg.steps, guidance=cfg.guidance, seed=SEED_BASE + 50_000, **call)
            out[arm, background] = (brightness(images), [score(s, parse(im)) for s, im in zip(scenes, images)],
                                    images[:6])
    return out
