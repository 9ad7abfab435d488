"""Study: noise schedules on the built-in models, and Lin et al.'s brightness experiment, scored by the world's parser.

    python -m analyses.schedules [OUT_DIR]       # LAB_SIZE=small | default | full
    run(out, config=config())                    # the REPORT section; config() sizes it from LAB_SIZE

1. The schedules of SD 1.5, SD 2.1, SDXL and both built-in models: terminal SNR and the first timestep each spacing
   samples. 2. Signal leak at the last training step, measured on rendered world images and their latents.
3. Along the trajectory: when x0-hat settles in low / mid / high frequencies. 4. Uniform vs Beta(a, a) timesteps at
   equal step counts. 5. Prompts asking for black and for white backgrounds, generated (a) with SD's schedule and
   leading spacing, (b) with trailing spacing, (c) by the zero-terminal-SNR v-prediction model with trailing spacing
   and CFG rescale 0.7: the distribution of mean brightness and the parser's accuracy for each.

Experiments: experiments.py; figures: plots.py; tables and the section: report.py.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import lab
from lab.load import with_components
from lab.plotting import save_figure
from lab.sizes import pick

from .experiments import brightness_experiment, signal_leaks, timestep_comparison, trajectories
from .maths import published_schedules, schedule_of
from .plots import brightness_figure, examples_figure, schedules_figure, trajectory_figure
from .report import section


@dataclasses.dataclass(frozen=True)
class Config:
    """How big the study runs: steps and the number of generations of each experiment."""
    steps: int           # DDIM steps of the brightness experiment and the trajectories
    per_background: int  # generations per background per arm
    trajectories: int    # generations followed step by step
    timestep_steps: int  # steps of the uniform-vs-Beta comparison
    timestep_images: int
    leak_images: int
    leak_draws: int      # noisings per image in the signal-leak measurement
    guidance: float = 7.5
    beta_a: float = 0.5


def config(**overrides) -> Config:
    """The study's size for LAB_SIZE (small | default | full), with any field overridden: config(steps=4)."""
    cfg = Config(steps=pick(10, 25, 25), per_background=pick(3, 24, 100), trajectories=pick(2, 6, 16),
                 timestep_steps=pick(5, 10, 10), timestep_images=pick(4, 48, 200), leak_images=pick(16, 200, 500),
                 leak_draws=pick(8, 32, 64))
    return dataclasses.replace(cfg, **overrides)


def run(out: Path, model: str = "shapes", zsnr_model: str = "shapes-zsnr", config: Config | None = None) -> str:
    """Run the study; writes figures and schedules.md into ``out`` and returns its REPORT section (Markdown)."""
    from diffusers import DDIMScheduler
    out, t0 = Path(out), time.perf_counter()
    cfg = config if config is not None else globals()["config"]()
    pipe, zpipe = lab.load(model), lab.load(zsnr_model)
    schedules = dict(published_schedules())
    schedules["shapes (SD schedule)"] = schedule_of(pipe.scheduler)
    schedules["shapes-zsnr"] = schedule_of(zpipe.scheduler)
    save_figure(schedules_figure(schedules), out / "schedules_snr.png")
    leaks = signal_leaks(pipe, schedules, cfg)
    runs = trajectories(pipe, cfg)
    save_figure(trajectory_figure(runs), out / "schedules_trajectory.png")
    t_traj = time.perf_counter() - t0
    timestep_results = timestep_comparison(pipe, cfg)
    trailing = with_components(pipe, scheduler=DDIMScheduler.from_config(pipe.scheduler.config,
                                                                          timestep_spacing="trailing"))
    arms = {"(a) SD schedule, leading": (pipe, {}),
            "(b) SD schedule, trailing": (trailing, {}),
            "(c) zero terminal SNR, v-prediction, trailing, CFG rescale 0.7": (zpipe, {"guidance_rescale": 0.7})}
    results = brightness_experiment(arms, cfg)
    save_figure(brightness_figure(results), out / "schedules_brightness.png")
    save_figure(examples_figure(results), out / "schedules_brightness_examples.png")
    text = section(model, zsnr_model, cfg, schedules, leaks, runs, timestep_results, results,
                   {"trajectories": t_traj, "total": time.perf_counter() - t0})
    (out / "schedules.md").write_text(text)
    return text


if __name__ == "__main__":
    from analyses.run_all import run_one
    run_one(run)
