"""Flow-matching noise schedules (SD3 / SD3.5 / FLUX.1): the sigmas FlowMatchEulerDiscreteScheduler visits, SD3's
static shift, Flux's resolution-dependent shift, and their signal-to-noise ratio beside the DDPM one.

    >>> from analyses.schedules.flow import flow_schedule, flux_mu, image_seq_len
    >>> sd3 = flow_schedule(28, shift=3.0)                    # SD3 / SD3.5's scheduler config
    >>> flux = flow_schedule(28, mu=flux_mu(image_seq_len(1024, 1024)), base="flux")   # FLUX.1 at 1024 px
    >>> sd3.sigmas.shape, sd3.start_sigma, sd3.start_snr     # (n + 1,): the n steps' sigmas, then 0
    (torch.Size([29]), 1.0, 0.0)

Flow matching noises linearly: x_t = (1 - sigma) x_0 + sigma * noise, so SNR(sigma) = ((1 - sigma) / sigma)^2 and
log-SNR = 2 log((1 - sigma) / sigma); the DDPM one is alphas_cumprod / (1 - alphas_cumprod). Sampling starts at
sigma = 1 (pure noise, SNR 0: a zero terminal SNR by construction, where SD 1.x / SDXL start at SNR 0.0047).

Shifts: ``static_shift(s, shift) = shift s / (1 + (shift - 1) s)`` (SD3, shift 3.0) and ``time_shift(s, mu) =
e^mu / (e^mu + 1/s - 1)`` (Flux, ``use_dynamic_shifting``) with mu linear in the image token count, 0.5 at 256 tokens
(256 px) and 1.15 at 4096 (1024 px): both move the steps towards the noisy end, where large images need more of them.

Unshifted sigmas (``base``): "scheduler" is what set_timesteps(n) picks by itself, linspace(sigma_max, sigma_min, n)
of the shifted training sigmas (SD3's pipeline passes no sigmas); "flux" is FluxPipeline's linspace(1, 1/n, n).
Values are float64; diffusers computes in float32, so they agree to float32 rounding (tests: rtol 1e-6).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

BASES = ("scheduler", "flux")
FLUX_SHIFT = dict(base_seq_len=256, max_seq_len=4096, base_shift=0.5, max_shift=1.15)  # FLUX.1's scheduler config
SD3_SHIFT = 3.0  # SD3-medium / SD3.5's scheduler config


@dataclass(frozen=True, eq=False)
class FlowSchedule:
    """The sigmas of one n-step flow-matching sampling, with their SNR (float64 tensors).

        >>> round(flow_schedule(10, shift=3.0).sigmas[1].item(), 4)
        0.9601
    """
    name: str
    sigmas: torch.Tensor     # (n + 1,) sigma at each step, then the final 0
    timesteps: torch.Tensor  # (n,) the timesteps the transformer is given: sigma * num_train_timesteps
    snr: torch.Tensor        # (n,) ((1 - sigma) / sigma)^2 at each step
    log_snr: torch.Tensor    # (n,) natural log; -inf at sigma = 1
    shift: float | None      # the static shift, or None with a dynamic one
    mu: float | None         # the dynamic (exponential) shift's mu, or None

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @property
    def start_sigma(self) -> float:
        """sigma at the first step: where sampling starts (1.0 = pure noise)."""
        return float(self.sigmas[0])

    @property
    def start_snr(self) -> float:
        """SNR at the first step (0.0 when sampling starts from pure noise)."""
        return float(self.snr[0])


def static_shift(sigmas: torch.Tensor | np.ndarray | float, shift: float = SD3_SHIFT):
    """SD3's shift: shift * s / (1 + (shift - 1) * s), for sigmas in [0, 1].

        >>> static_shift(0.5, 3.0)
        0.75
    """
    if shift <= 0:
        raise ValueError(f"shift={shift} must be > 0 (SD3 uses 3.0; 1.0 leaves the sigmas as they are)")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def time_shift(sigmas: torch.Tensor | np.ndarray | float, mu: float):
    """Flux's exponential time shift: e^mu / (e^mu + (1 / s - 1)), for sigmas in (0, 1].

        >>> round(time_shift(0.5, math.log(3.0)), 6)        # mu = log(shift) is the static shift
        0.75
    """
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))


def image_seq_len(height: int, width: int, vae_scale_factor: int = 8, patch_size: int = 2) -> int:
    """Image tokens of a DiT at height x width px: (latent side / patch) squared; Flux packs 2 x 2 latents per token.

        >>> image_seq_len(1024, 1024), image_seq_len(512, 512)
        (4096, 1024)
    """
    for name, value in (("height", height), ("width", width)):
        if value % (vae_scale_factor * patch_size):
            raise ValueError(f"{name}={value} px is not a multiple of {vae_scale_factor * patch_size} (the VAE's "
                             f"{vae_scale_factor}x times the {patch_size}x{patch_size} patch)")
    return (height // vae_scale_factor // patch_size) * (width // vae_scale_factor // patch_size)


def flux_mu(seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
            max_shift: float = 1.15) -> float:
    """mu for ``seq_len`` image tokens, linear through (base_seq_len, base_shift) and (max_seq_len, max_shift), as
    FluxPipeline's ``calculate_shift``.

        >>> flux_mu(256), flux_mu(4096)
        (0.5, 1.15)
    """
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} image tokens; use an integer >= 1 (image_seq_len(height, width))")
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return seq_len * m + b  # in calculate_shift's order, so the floats agree bit for bit


def _base_sigmas(n: int, base: str, shift: float | None, num_train_timesteps: int) -> np.ndarray:
    if base == "flux":
        return np.linspace(1.0, 1 / n, n)
    if base == "scheduler":  # set_timesteps: linspace between the first and last of __init__'s (shifted) sigmas
        T = num_train_timesteps
        train = np.linspace(1, T, T, dtype=np.float32)[::-1] / T  # (T,) float32, as __init__ builds them
        if shift is not None:
            train = static_shift(train, shift)
        sigma_max, sigma_min = float(np.float32(train[0])), float(np.float32(train[-1]))
        return np.linspace(sigma_max * T, sigma_min * T, n) / T
    raise ValueError(f"base={base!r} is not one of {', '.join(BASES)}")


def flow_schedule(n: int, shift: float | None = 1.0, mu: float | None = None, *, base: str = "scheduler",
                  num_train_timesteps: int = 1000, name: str | None = None) -> FlowSchedule:
    """The n-step sigmas of FlowMatchEulerDiscreteScheduler: with a static ``shift`` (SD3: 3.0), or with ``mu`` the
    dynamic exponential shift (Flux; the scheduler's use_dynamic_shifting=True, shift then unused).

        >>> s = flow_schedule(4, mu=flux_mu(1024), base="flux")      # FLUX.1 at 512 px, 4 steps
        >>> [round(x, 3) for x in s.sigmas.tolist()]
        [1.0, 0.849, 0.652, 0.385, 0.0]
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n={n!r} steps; use an integer >= 1")
    dynamic = mu is not None
    base_sigmas = _base_sigmas(int(n), base, None if dynamic else shift, num_train_timesteps)  # (n,)
    sigmas = time_shift(base_sigmas, mu) if dynamic else static_shift(base_sigmas, 1.0 if shift is None else shift)
    sigmas = torch.from_numpy(np.asarray(sigmas, dtype=np.float64))  # (n,)
    snr = ((1 - sigmas) / sigmas) ** 2  # (n,)
    label = name or (f"flow, mu={mu:.3g}" if dynamic else f"flow, shift={shift:g}")
    return FlowSchedule(name=label, sigmas=torch.cat([sigmas, sigmas.new_zeros(1)]),
                        timesteps=sigmas * num_train_timesteps, snr=snr, log_snr=snr.log(),
                        shift=None if dynamic else float(shift), mu=None if not dynamic else float(mu))


def flow_snr(sigmas: torch.Tensor) -> torch.Tensor:
    """((1 - sigma) / sigma)^2: the SNR of x_t = (1 - sigma) x_0 + sigma * noise (any shape; inf at sigma = 0).

        >>> flow_snr(torch.tensor([1.0, 0.5]))
        tensor([0., 1.])
    """
    return ((1 - sigmas) / sigmas) ** 2


def ddpm_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """alphas_cumprod / (1 - alphas_cumprod): the SNR of x_t = sqrt(abar) x_0 + sqrt(1 - abar) noise.

        >>> ddpm_snr(torch.tensor([0.5]))
        tensor([1.])
    """
    return alphas_cumprod / (1 - alphas_cumprod)


def pipeline_flow_schedule(pipe: Any, n: int, height: int | None = None, width: int | None = None) -> FlowSchedule:
    """The schedule ``pipe(..., num_inference_steps=n, height=, width=)`` samples with, read from the pipeline's
    scheduler config (static shift, or mu from the image token count with use_dynamic_shifting) and pipeline kind.

        >>> s = pipeline_flow_schedule(pipe, 28, 1024, 1024)     # pipe: a StableDiffusion3Pipeline or FluxPipeline
    """
    cfg = pipe.scheduler.config
    if type(pipe.scheduler).__name__ != "FlowMatchEulerDiscreteScheduler":
        raise ValueError(f"{type(pipe).__name__} samples with {type(pipe.scheduler).__name__}; flow schedules are "
                         f"those of FlowMatchEulerDiscreteScheduler (SD3 / SD3.5 / FLUX.1 pipelines)")
    for key in ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas"):
        if cfg.get(key):
            raise ValueError(f"the scheduler sets {key}={cfg[key]!r}, which flow_schedule does not reproduce; "
                             f"supported: shift, use_dynamic_shifting with time_shift_type='exponential'")
    if cfg.get("use_dynamic_shifting") and cfg.get("time_shift_type", "exponential") != "exponential":
        raise ValueError(f"time_shift_type={cfg['time_shift_type']!r}; supported: 'exponential'")
    flux = hasattr(pipe, "_unpack_latents")
    default = pipe.default_sample_size * pipe.vae_scale_factor
    height, width = height or default, width or default
    patch = 2 if flux else pipe.transformer.config.patch_size
    mu = None
    if cfg.get("use_dynamic_shifting"):
        mu = flux_mu(image_seq_len(height, width, pipe.vae_scale_factor, patch), cfg.get("base_image_seq_len", 256),
                     cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                     cfg.get("max_shift", 1.15 if flux else 1.16))  # SD3's pipeline defaults max_shift to 1.16
    return flow_schedule(n, cfg.get("shift", 1.0), mu, base="flux" if flux else "scheduler",
                         num_train_timesteps=cfg.get("num_train_timesteps", 1000), name=type(pipe).__name__)


def published_flow_schedules(n: int = 28, sizes: tuple[int, ...] = (512, 1024)) -> dict[str, FlowSchedule]:
    """{name: FlowSchedule}: SD3 / SD3.5 (shift 3.0, any size) and FLUX.1 at each size in px (its shift grows with
    the image token count).

        >>> sorted(published_flow_schedules(28))
        ['flux-1024', 'flux-512', 'sd3']
    """
    out = {"sd3": flow_schedule(n, SD3_SHIFT, name="sd3")}
    for px in sizes:
        out[f"flux-{px}"] = flow_schedule(n, mu=flux_mu(image_seq_len(px, px), **FLUX_SHIFT), base="flux",
                                          name=f"flux-{px}")
    return out


def plot_flow_snr(ax: Any = None, n: int = 28, ddpm: tuple[str, ...] = ("sd-1.5", "sdxl-base"),
                  sizes: tuple[int, ...] = (512, 1024), floor: float = -12.0) -> Any:
    """log-SNR at each of n sampling steps: SD 1.5 / SDXL (DDPM schedule at their default spacing) beside SD3
    (shift 3) and FLUX.1 at each size; x is the step's place in sampling (0 = first, 1 = last). Returns the ax.

        >>> ax = plot_flow_snr(plt.subplots()[1], n=28)

    Flow matching starts at SNR 0 (log-SNR -inf), drawn as a triangle on the ``floor``; DDPM models start at their
    first timestep's SNR (0.0047 for SD's trailing spacing, more for leading).
    """
    from .maths import published_schedules, sampled_timesteps

    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4))
    x = np.linspace(0, 1, n)  # (n,)
    published = published_schedules()
    for name in ddpm:
        if name not in published:
            raise ValueError(f"unknown DDPM schedule {name!r}; known: {', '.join(published)}")
        s = published[name]
        ts = sampled_timesteps(s, n)  # (n,) descending
        ax.plot(x, s.log_snr[ts], ls="--", label=f"{name} (DDPM, {s.timestep_spacing}; first SNR "
                                                 f"{float(s.snr[ts[0]]):.3g})")
    for name, f in published_flow_schedules(n, sizes).items():
        y = f.log_snr.clamp_min(floor)  # (n,)
        line, = ax.plot(x, y, label=f"{name} (flow; first sigma {f.start_sigma:g}, SNR {f.start_snr:g})")
        ax.plot(x[f.log_snr < floor], y[f.log_snr < floor], "v", color=line.get_color())
    ax.set(xlabel="sampling progress (first step = 0, last = 1)", ylabel="log SNR",
           title=f"Signal-to-noise ratio over {n} sampling steps")
    ax.legend(fontsize=7)
    return ax
