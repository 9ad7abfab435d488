"""Noise schedules: the maths of any diffusers scheduler (no weights needed), and what happens along a trajectory.

    s = schedule_of(pipe.scheduler)             # or a config dict / JSON path / (SchedulerClass, config)
    s.log_snr, s.terminal_snr                   # (T,) tensors and floats in a frozen `Schedule`
    spaced_timesteps(10, "leading", steps_offset=1)  # tensor([901, 801, ..., 1]), as diffusers' DDIM/DDPM pick them
    first_step_snr(s, 10); with_zero_terminal_snr(s); rescale_zero_terminal_snr(betas); rescale_cfg(guided, cond)
    signal_leak(images, s); band_power(x); band_energy(x); beta_timesteps(n); uniform_timesteps(n)
    run_with_timesteps(pipe, timesteps, prompt=...); published_schedules(); plot_snr(...); plot_spacings(...)
    run = follow(pipe, prompt, seed, num_inference_steps)   # per step: x_t, x0-hat, their images, bands, step size
    flow_schedule(28, shift=3.0); flow_schedule(28, mu=flux_mu(image_seq_len(1024, 1024)), base="flux")  # SD3, Flux
    pipeline_flow_schedule(pipe, n, height, width); flow_snr(sigmas); ddpm_snr(abar); plot_flow_snr(ax)

Modules: `flow` (flow-matching sigmas, SD3's and Flux's shifts, their SNR), `maths` (schedules, spacings, rescales,
signal leak, frequency bands, timestep selection), `plots` (Axes helpers and the study's figures), `trajectory`
(`follow`, on lab.trajectory's recorder), `views` (the notebook's figures and widgets), `study`
(``python -m analyses.schedules``) with its `experiments` and `report`.
"""
from .maths import (BETA_SCHEDULES, DATA_DIR, SPACINGS, Schedule, SignalLeak, band_energy, band_power,
                    beta_timesteps, betas_from_config, check_custom_timesteps, custom_timestep_schedulers,
                    first_step_snr, published_configs, published_schedules, rescale_cfg, rescale_zero_terminal_snr,
                    run_with_timesteps, sampled_timesteps, schedule_of, signal_leak, spaced_timesteps,
                    supports_custom_timesteps, uniform_timesteps, with_zero_terminal_snr)
from .flow import (FlowSchedule, ddpm_snr, flow_schedule, flow_snr, flux_mu, image_seq_len, pipeline_flow_schedule,
                   plot_flow_snr, published_flow_schedules)
from .plots import plot_snr, plot_spacings
from .trajectory import Run, follow

__all__ = ["BETA_SCHEDULES", "DATA_DIR", "SPACINGS", "Schedule", "SignalLeak", "band_energy", "band_power",
           "beta_timesteps", "betas_from_config", "check_custom_timesteps", "custom_timestep_schedulers",
           "first_step_snr", "plot_snr", "plot_spacings", "published_configs", "published_schedules", "rescale_cfg",
           "rescale_zero_terminal_snr", "run_with_timesteps", "sampled_timesteps", "schedule_of", "signal_leak",
           "spaced_timesteps", "supports_custom_timesteps", "uniform_timesteps", "with_zero_terminal_snr", "Run",
           "follow", "FlowSchedule", "ddpm_snr", "flow_schedule", "flow_snr", "flux_mu", "image_seq_len",
           "pipeline_flow_schedule", "plot_flow_snr", "published_flow_schedules"]
