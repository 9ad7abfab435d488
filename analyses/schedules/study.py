"""Study: noise schedules on the built-in models, and Lin et al.'s brightness experiment, scored by the world's parser.

    python -m analyses.schedules [OUT_DIR]       # LAB_SIZE=small | default | full

1. The schedules of SD 1.5, SD 2.1, SDXL and both built-in models: terminal SNR and the first timestep each spacing
   samples. 2. Signal leak at the last training step, measured on rendered world images and their latents.
3. Along the trajectory: when x0-hat settles in low / mid / high frequencies. 4. Uniform vs Beta(a, a) timesteps at
   equal step counts. 5. Prompts asking for black and for white backgrounds, generated (a) with SD's schedule and
   leading spacing, (b) with trailing spacing, (c) by the zero-terminal-SNR v-prediction model with trailing spacing
   and CFG rescale 0.7: the distribution of mean brightness and the parser's accuracy for each.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

import lab
from lab.load import with_components
from lab.plotting import save_figure
from lab.sizes import pick, size
from lab.world import render
from lab.world.parser import parse, score
from lab.world.quality import SEED_BASE, generate, wilson
from lab.world.scenes import Scene, caption_of, make_scene

from .maths import (SPACINGS, beta_timesteps, first_step_snr, published_schedules, sampled_timesteps,
                    schedule_of, signal_leak, uniform_timesteps)
from .trajectory import follow

BAND_NAMES = ("low", "mid", "high")


@dataclasses.dataclass(frozen=True)
class Config:
    steps: int           # DDIM steps of the brightness experiment and the trajectories
    per_background: int  # generations per background per arm
    trajectories: int    # generations followed step by step
    timestep_steps: int  # steps of the uniform-vs-Beta comparison
    timestep_images: int
    leak_images: int
    guidance: float = 7.5
    beta_a: float = 0.5


def config() -> Config:
    return Config(steps=pick(10, 25, 25), per_background=pick(3, 24, 100), trajectories=pick(2, 6, 16),
                  timestep_steps=pick(5, 10, 10), timestep_images=pick(4, 48, 200), leak_images=pick(16, 200, 500))


def on_background(scene: Scene, background: str) -> Scene:
    """The scene with its background replaced, and its caption saying so."""
    return dataclasses.replace(scene, background=background,
                               caption=caption_of(scene.objects, background, scene.relation))


def brightness_scenes(background: str, n: int) -> list[Scene]:
    """n single-object test scenes (unseen seeds) asking for `background`."""
    return [on_background(make_scene(SEED_BASE + 50_000 + i, "test", n_objects=1), background) for i in range(n)]


# ---------------------------------------------------------------------------------------------------- 1-2 maths
def schedules_table(schedules: dict, steps=(10, 25, 50)) -> str:
    rows = ["| schedule | sqrt(abar_T) | terminal SNR | " + " | ".join(
        f"first t, {n} steps ({'/'.join(SPACINGS)})" for n in steps) + " |",
        "|---|---|---|" + "---|" * len(steps)]
    for name, s in schedules.items():
        cells = [" / ".join(str(int(sampled_timesteps(s, n, sp)[0])) for sp in SPACINGS) for n in steps]
        rows.append(f"| {name} | {float(s.sqrt_alphas_cumprod[-1]):.6f} | {s.terminal_snr:.3g} | "
                    + " | ".join(cells) + " |")
    return "\n".join(rows)


def schedules_figure(schedules: dict):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    for name, s in schedules.items():
        left.plot(torch.arange(s.num_train_timesteps), s.log_snr.clamp(min=-25), label=name)
    left.set(xlabel="timestep t", ylabel="log SNR(t) (clamped at -25)", title="log-SNR of each schedule")
    left.legend(fontsize=7)
    sd = schedules["shapes (SD schedule)"]
    ns = np.arange(2, 101)
    for sp in SPACINGS:
        right.plot(ns, [first_step_snr(sd, int(n), sp) for n in ns], label=sp)
    right.axhline(sd.terminal_snr, color="0.5", ls=":", label=f"terminal SNR {sd.terminal_snr:.2g}")
    right.set(xlabel="sampling steps", ylabel="SNR at the first sampled step", yscale="log",
              title="SD schedule: where sampling starts")
    right.legend(fontsize=7)
    return fig


def leak_table(leaks: dict) -> str:
    rows = ["| schedule | data | surviving fraction of channel means at t = T-1 (measured +- se) | predicted "
            "sqrt(abar_T) | correlation clean vs noisy mean |", "|---|---|---|---|---|"]
    for (sched, data), leak in leaks.items():
        rows.append(f"| {sched} | {data} | {leak.measured:.4f} +- {leak.stderr:.4f} | {leak.predicted:.4f} | "
                    f"{leak.correlation:.3f} |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------------- 3 trajectory
def trajectory_figure(runs):
    """Left: per band, mean over runs of the relative error of x0-hat against the final image; right: the x0-hat
    images of the first run at a few steps, above its decoded x_t."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.6])
    ax = left.subplots()
    err = torch.stack([r.band_error for r in runs]).mean(0)  # (steps, bands)
    steps = np.arange(1, err.shape[0] + 1)
    for b in range(err.shape[1]):
        ax.plot(steps, err[:, b], marker="o", ms=3, label=BAND_NAMES[b] if err.shape[1] == 3 else f"band {b}")
    ax.set(xlabel="step", ylabel="energy(x0-hat - final) / energy(final)", yscale="log",
           title=f"x0-hat against the final image, per frequency band\n(mean of {len(runs)} generations)")
    ax.legend()
    run = runs[0]
    picks = sorted(set(np.linspace(0, run.steps - 1, 6).round().astype(int).tolist()))
    axes = right.subplots(2, len(picks), squeeze=False)
    for j, i in enumerate(picks):
        axes[0, j].imshow(run.xt_images[i])
        axes[0, j].set_title(f"step {i + 1}, t={int(run.timesteps[i])}", fontsize=8)
        axes[1, j].imshow(run.x0_images[i])
    for a in axes.flat:
        a.set_xticks([]), a.set_yticks([])
    axes[0, 0].set_ylabel("x_t decoded", fontsize=8)
    axes[1, 0].set_ylabel("x0-hat decoded", fontsize=8)
    right.suptitle(run.prompt, fontsize=9)
    return fig


def trajectory_section(runs, tolerance: float = 0.1) -> str:
    settled = np.array([r.settled(tolerance) for r in runs])  # (runs, bands)
    err = torch.stack([r.band_error for r in runs]).mean(0)  # (steps, bands)
    half = runs[0].steps // 2
    names = BAND_NAMES if settled.shape[1] == 3 else [f"band {b}" for b in range(settled.shape[1])]
    lines = [f"| band | step from which x0-hat stays within {tolerance:.0%} of the final image (mean, range) | "
             f"relative error at step {half} of {runs[0].steps} |", "|---|---|---|"]
    for b, name in enumerate(names):
        lines.append(f"| {name} | {settled[:, b].mean():.1f} ({settled[:, b].min()}-{settled[:, b].max()}) | "
                     f"{float(err[half - 1, b]):.3f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- 4 timesteps
def rate_cell(verdicts: list[dict], key: str) -> str:
    k, n = sum(v[key] for v in verdicts), len(verdicts)
    lo, hi = wilson(k, n)
    return f"{k}/{n} = {k / n:.0%} ({lo:.0%}-{hi:.0%})"


def timestep_comparison(pipe, cfg: Config) -> tuple[str, dict]:
    """Uniform vs Beta(a, a) timesteps with the same number of Euler steps, on unseen one-object captions."""
    from diffusers import EulerDiscreteScheduler
    euler = with_components(pipe, scheduler=EulerDiscreteScheduler.from_config(pipe.scheduler.config))
    scenes = [make_scene(SEED_BASE + 60_000 + i, "test", n_objects=1) for i in range(cfg.timestep_images)]
    T = pipe.scheduler.config.num_train_timesteps
    choices = {"uniform": uniform_timesteps(cfg.timestep_steps, T),
               f"Beta({cfg.beta_a:g}, {cfg.beta_a:g})": beta_timesteps(cfg.timestep_steps, cfg.beta_a, T)}
    verdicts = {}
    for name, ts in choices.items():
        images = generate(euler, scenes, steps=cfg.timestep_steps, guidance=cfg.guidance, seed=SEED_BASE,
                          timesteps=ts.tolist())
        verdicts[name] = [score(s, parse(im)) for s, im in zip(scenes, images)]
    rows = ["| timesteps | which | colour | shape | background | all |", "|---|---|---|---|---|---|"]
    for name, ts in choices.items():
        rows.append(f"| {name} | {', '.join(str(int(t)) for t in ts)} | " + " | ".join(
            rate_cell(verdicts[name], k) for k in ("colour", "shape", "background", "all")) + " |")
    return "\n".join(rows), verdicts


# ---------------------------------------------------------------------------------------------------- 5 brightness
def brightness(images: np.ndarray) -> np.ndarray:
    """(N,) mean brightness in [0, 1] of (N, H, W, 3) uint8 images."""
    return images.reshape(len(images), -1).mean(axis=1) / 255.0


def brightness_experiment(arms: dict, cfg: Config) -> dict:
    """arms: name -> (pipeline, extra call kwargs). Returns {(arm, background): (brightness (N,), verdicts)}."""
    out = {}
    for background in ("black", "white"):
        scenes = brightness_scenes(background, cfg.per_background)
        out["world (truth)", background] = (brightness(np.stack([render(s) for s in scenes])), None)
        for arm, (pipe, call) in arms.items():
            images = generate(pipe, scenes, steps=cfg.steps, guidance=cfg.guidance, seed=SEED_BASE + 50_000, **call)
            out[arm, background] = (brightness(images), [score(s, parse(im)) for s, im in zip(scenes, images)],
                                    images[:6])
    return out


def brightness_figure(results: dict):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    arms = list(dict.fromkeys(arm for arm, _ in results))
    bins = np.linspace(0, 1, 41)
    for ax, background in zip(axes, ("black", "white")):
        for i, arm in enumerate(arms):
            values = results[arm, background][0]
            style = dict(color="k", lw=2, ls="--") if arm == "world (truth)" else dict(color=f"C{i}", lw=1.5)
            ax.hist(values, bins=bins, histtype="step", label=f"{arm}: mean {values.mean():.2f}", **style)
        ax.set(xlabel="mean brightness of the image (0 black, 1 white)", title=f"prompts asking for a {background} "
               f"background ({len(values)} each)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("images")
    return fig


def examples_figure(results: dict):
    from matplotlib.figure import Figure
    arms = [arm for arm in dict.fromkeys(arm for arm, _ in results) if arm != "world (truth)"]
    n = min(len(results[arms[0], "black"][2]), 6)
    fig = Figure(figsize=(1.6 * 2 * n, 1.7 * len(arms) + 0.4), layout="constrained")
    axes = fig.subplots(len(arms), 2 * n, squeeze=False)
    for r, arm in enumerate(arms):
        for c, (background, j) in enumerate([(b, j) for b in ("black", "white") for j in range(n)]):
            axes[r, c].imshow(results[arm, background][2][j])
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(arm.split(" ")[0], fontsize=10)
    fig.suptitle("left: prompts asking for black backgrounds; right: for white.   " + ";   ".join(arms), fontsize=9)
    return fig


def brightness_table(results: dict) -> str:
    rows = ["| arm | background asked | mean brightness (sd) | 5th-95th percentile | parser: background right | "
            "colour right | shape right |", "|---|---|---|---|---|---|---|"]
    for (arm, background), value in results.items():
        b, verdicts = value[0], value[1]
        p5, p95 = np.percentile(b, [5, 95])
        keys = ("background", "colour", "shape")
        cells = ["", "", ""] if verdicts is None else [rate_cell(verdicts, k) for k in keys]
        rows.append(f"| {arm} | {background} | {b.mean():.3f} ({b.std():.3f}) | {p5:.2f}-{p95:.2f} | "
                    + " | ".join(cells) + " |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------------- the study
def run(out: Path, model: str = "shapes", zsnr_model: str = "shapes-zsnr") -> str:
    """Run the study; writes figures into ``out`` and returns its REPORT section (Markdown)."""
    from diffusers import DDIMScheduler
    out, cfg, t0 = Path(out), config(), time.perf_counter()
    pipe, zpipe = lab.load(model), lab.load(zsnr_model)
    schedules = dict(published_schedules())
    schedules["shapes (SD schedule)"] = schedule_of(pipe.scheduler)
    schedules["shapes-zsnr"] = schedule_of(zpipe.scheduler)
    save_figure(schedules_figure(schedules), out / "schedules_snr.png")

    # signal leak on rendered world images and on their latents
    scenes = [make_scene(SEED_BASE + 70_000 + i, "test") for i in range(cfg.leak_images)]
    pixels = torch.from_numpy(np.stack([render(s) for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        latents = torch.cat([pipe.vae.encode(x).latent_dist.mean for x in pixels.split(32)])
    latents = latents * pipe.vae.config.scaling_factor
    gen = torch.Generator().manual_seed(0)
    leaks = {(name, data): signal_leak(x, schedules[name], generator=gen, draws=pick(8, 32, 64))
             for name in ("shapes (SD schedule)", "shapes-zsnr") for data, x in
             (("world images (pixels)", pixels), ("their VAE latents", latents))}

    # along the trajectory
    prompts = [s.caption for s in scenes[:cfg.trajectories]]
    runs = [follow(pipe, p, seed=i, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance)
            for i, p in enumerate(prompts)]
    save_figure(trajectory_figure(runs), out / "schedules_trajectory.png")
    t_traj = time.perf_counter() - t0

    timestep_rows, _ = timestep_comparison(pipe, cfg)

    trailing = with_components(pipe, scheduler=DDIMScheduler.from_config(pipe.scheduler.config,
                                                                          timestep_spacing="trailing"))
    arms = {"(a) SD schedule, leading": (pipe, {}),
            "(b) SD schedule, trailing": (trailing, {}),
            "(c) zero terminal SNR, v-prediction, trailing, CFG rescale 0.7": (zpipe, {"guidance_rescale": 0.7})}
    results = brightness_experiment(arms, cfg)
    save_figure(brightness_figure(results), out / "schedules_brightness.png")
    save_figure(examples_figure(results), out / "schedules_brightness_examples.png")

    black = {arm: results[arm, "black"][0].mean() for arm in arms}
    white = {arm: results[arm, "white"][0].mean() for arm in arms}
    span = {arm: white[arm] - black[arm] for arm in arms}
    truth_span = results["world (truth)", "white"][0].mean() - results["world (truth)", "black"][0].mean()
    parts = [
        "## Noise schedules: zero terminal SNR, spacing, and the trajectory\n",
        f"Models `{model}` (SD's schedule: scaled_linear 0.00085-0.012, epsilon, DDIM leading) and `{zsnr_model}` "
        f"(the same betas rescaled to zero terminal SNR, v-prediction, trailing; trained on the same world from the "
        f"same start). Their training budgets are in their model cards: where they differ, arms (b) and (c) below "
        f"differ in more than the schedule, while (a) and (b) are one model. Size `{size()}`.\n",
        "### Schedules and where sampling starts\n", "![schedules](schedules_snr.png)\n",
        schedules_table(schedules) + "\n",
        "With leading spacing SD samples from t = 901 at 10 steps (steps_offset 1), so the first latent it "
        "denoises still carries signal; trailing and linspace start at 999, but only a zero-terminal-SNR schedule "
        "makes that step pure noise.\n",
        "### Signal leak at the last training step\n",
        "Each image is noised to t = T-1 many times; the slope of the noisy image's channel means on the clean "
        "image's is the fraction of the mean brightness (the lowest frequency) that survives. Training always leaves "
        "that much signal in, so at inference, which starts from noise with mean ~0, the model is never asked to "
        "move the mean far.\n", leak_table(leaks) + "\n",
        f"### Along the trajectory ({cfg.trajectories} generations, {cfg.steps} DDIM steps)\n",
        "![trajectory](schedules_trajectory.png)\n",
        "Error of x0-hat (decoded, mean colour removed) against the final image, per radial frequency band "
        "(thirds of the radius up to the corner frequency):\n", trajectory_section(runs) + "\n",
        f"### Uniform vs Beta timesteps ({cfg.timestep_steps} Euler steps, {cfg.timestep_images} unseen one-object "
        f"captions, same seeds)\n",
        "Beta Sampling (Lee et al. 2024) spends steps at both ends of the schedule, where x0-hat changes most.\n",
        timestep_rows + "\n",
        f"### Black and white backgrounds (Lin et al.'s experiment), {cfg.per_background} one-object prompts per "
        f"background, {cfg.steps} DDIM steps, guidance {cfg.guidance}\n",
        "![brightness](schedules_brightness.png)\n\n![examples](schedules_brightness_examples.png)\n",
        brightness_table(results) + "\n",
        "Brightness range (mean over white prompts minus mean over black prompts; the world's own renderings: "
        f"{truth_span:.3f}): " + "; ".join(f"{arm.split(' ')[0]} {v:.3f}" for arm, v in span.items()) + ".\n",
        "Images darker than 0.9 for a white-background prompt / brighter than 0.1 for a black one: " + "; ".join(
            f"{arm.split(' ')[0]} {np.mean(results[arm, 'white'][0] < 0.9):.0%} / "
            f"{np.mean(results[arm, 'black'][0] > 0.1):.0%}" for arm in arms) + ".\n",
        f"_trajectories {t_traj:.0f} s, whole study {time.perf_counter() - t0:.0f} s on this machine._\n",
    ]
    section = "\n".join(parts)
    (out / "schedules.md").write_text(section)
    return section


if __name__ == "__main__":
    from analyses.run_all import run_one
    run_one(run)
