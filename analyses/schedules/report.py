"""The noise-schedule study's REPORT tables and section, from its results (no model runs here).

    schedules_table(schedules); leak_table(leaks); trajectory_section(runs); timestep_table(choices, verdicts)
    brightness_table(results); section(...) -> str (Markdown)
"""
from __future__ import annotations

import numpy as np
import torch

from lab.sizes import size
from lab.world.quality import wilson

from .maths import SPACINGS, sampled_timesteps
from .plots import BAND_NAMES


def schedules_table(schedules: dict, steps=(10, 25, 50)) -> str:
    rows = ["| schedule | sqrt(abar_T) | terminal SNR | " + " | ".join(
        f"first t, {n} steps ({'/'.join(SPACINGS)})" for n in steps) + " |",
        "|---|---|---|" + "---|" * len(steps)]
    for name, s in schedules.items():
        cells = [" / ".join(str(int(sampled_timesteps(s, n, sp)[0])) for sp in SPACINGS) for n in steps]
        rows.append(f"| {name} | {float(s.sqrt_alphas_cumprod[-1]):.6f} | {s.terminal_snr:.3g} | "
                    + " | ".join(cells) + " |")
    return "\n".join(rows)


def leak_table(leaks: dict) -> str:
    rows = ["| schedule | data | surviving fraction of channel means at t = T-1 (measured +- se) | predicted "
            "sqrt(abar_T) | correlation clean vs noisy mean |", "|---|---|---|---|---|"]
    for (sched, data), leak in leaks.items():
        rows.append(f"| {sched} | {data} | {leak.measured:.4f} +- {leak.stderr:.4f} | {leak.predicted:.4f} | "
                    f"{leak.correlation:.3f} |")
    return "\n".join(rows)


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


def rate_cell(verdicts: list[dict], key: str) -> str:
    k, n = sum(v[key] for v in verdicts), len(verdicts)
    lo, hi = wilson(k, n)
    return f"{k}/{n} = {k / n:.0%} ({lo:.0%}-{hi:.0%})"


def timestep_table(choices: dict, verdicts: dict) -> str:
    """The uniform-vs-Beta table: per choice of timesteps, the parser's rates with Wilson intervals."""
    rows = ["| timesteps | which | colour | shape | background | all |", "|---|---|---|---|---|---|"]
    for name, ts in choices.items():
        rows.append(f"| {name} | {', '.join(str(int(t)) for t in ts)} | " + " | ".join(
            rate_cell(verdicts[name], k) for k in ("colour", "shape", "background", "all")) + " |")
    return "\n".join(rows)


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


def section(model: str, zsnr_model: str, cfg, schedules: dict, leaks: dict, runs: list, timestep_results: tuple,
            results: dict, seconds: dict) -> str:
    """The Markdown section. timestep_results: timestep_comparison()'s (choices, verdicts); results:
    brightness_experiment()'s; seconds: {"trajectories", "total"}."""
    arms = [arm for arm in dict.fromkeys(arm for arm, _ in results) if arm != "world (truth)"]
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
        timestep_table(*timestep_results) + "\n",
        f"### Black and white backgrounds (Lin et al.'s experiment), {cfg.per_background} one-object prompts per "
        f"background, {cfg.steps} DDIM steps, guidance {cfg.guidance}\n",
        "![brightness](schedules_brightness.png)\n\n![examples](schedules_brightness_examples.png)\n",
        brightness_table(results) + "\n",
        "Brightness range (mean over white prompts minus mean over black prompts; the world's own renderings: "
        f"{truth_span:.3f}): " + "; ".join(f"{arm.split(' ')[0]} {v:.3f}" for arm, v in span.items()) + ".\n",
        "Images darker than 0.9 for a white-background prompt / brighter than 0.1 for a black one: " + "; ".join(
            f"{arm.split(' ')[0]} {np.mean(results[arm, 'white'][0] < 0.9):.0%} / "
            f"{np.mean(results[arm, 'black'][0] > 0.1):.0%}" for arm in arms) + ".\n",
        f"_trajectories {seconds['trajectories']:.0f} s, whole study {seconds['total']:.0f} s on this machine._\n",
    ]
    return "\n".join(parts)
