"""Noise-schedule analysis: pure tensor maths on any diffusers scheduler or its config, no weights needed.

    s = schedule_of(pipe.scheduler)             # or a config dict / JSON path / (SchedulerClass, config)
    s.log_snr, s.terminal_snr                   # (T,) tensors and floats in a frozen `Schedule`
    spaced_timesteps(10, "leading", steps_offset=1)  # tensor([901, 801, ..., 1]), as diffusers' DDIM/DDPM pick them
    first_step_snr(s, 10); with_zero_terminal_snr(s); rescale_zero_terminal_snr(betas); rescale_cfg(guided, cond)
    signal_leak(images, s); band_energy(x, bands=3); beta_timesteps(n); uniform_timesteps(n)
    run_with_timesteps(pipe, timesteps, prompt=...); published_schedules()     # plots: analyses.schedules.plots

Conventions: t indexes training timesteps 0..T-1 (t = T-1 is the noisiest); alpha-bar (``alphas_cumprod``) is the
signal variance kept at t, SNR(t) = abar / (1 - abar), log-SNR is the natural log. Schedule tensors are float64.
"""
from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
import torch

SPACINGS = ("leading", "linspace", "trailing")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")  # plus `trained_betas`
DATA_DIR = Path(__file__).parent.parent / "schedule_data"
# Schedulers commonly swapped into SD pipelines; the installed diffusers decides which accept `timesteps=`.
_COMMON_SCHEDULERS = (
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler", "LMSDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler", "DEISMultistepScheduler", "KDPM2DiscreteScheduler", "LCMScheduler", "TCDScheduler",
)


@dataclass(frozen=True, eq=False)
class Schedule:
    """A variance-preserving noise schedule as plain tensors (all (T,) float64, indexed by training timestep t).

        >>> s = schedule_of({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012})
        >>> round(float(s.sqrt_alphas_cumprod[-1]), 6), round(s.terminal_snr, 6)
        (0.068265, 0.004682)
    """

    name: str
    betas: torch.Tensor  # (T,)
    alphas_cumprod: torch.Tensor  # (T,) alpha-bar_t: signal variance kept at t
    sqrt_alphas_cumprod: torch.Tensor  # (T,) signal scale
    sqrt_one_minus_alphas_cumprod: torch.Tensor  # (T,) noise scale
    snr: torch.Tensor  # (T,) abar / (1 - abar)
    log_snr: torch.Tensor  # (T,) natural log; -inf where abar = 0
    terminal_snr: float  # snr[T-1]
    num_train_timesteps: int
    timestep_spacing: str  # the spacing the scheduler uses by default
    steps_offset: int  # added to "leading" timesteps
    prediction_type: str
    config: Mapping[str, Any] = field(repr=False)  # the full scheduler config it came from (read-only)


def _schedule_from_betas(betas: torch.Tensor, name: str, config: Mapping[str, Any]) -> Schedule:
    betas = betas.detach().to("cpu", torch.float64)  # (T,)
    abar = torch.cumprod(1.0 - betas, dim=0)  # (T,)
    snr = abar / (1.0 - abar)  # (T,)
    spacing = config.get("timestep_spacing") or "leading"
    return Schedule(
        name=name, betas=betas, alphas_cumprod=abar, sqrt_alphas_cumprod=abar.sqrt(),
        sqrt_one_minus_alphas_cumprod=(1.0 - abar).sqrt(), snr=snr, log_snr=snr.log(),
        terminal_snr=float(snr[-1]), num_train_timesteps=len(betas), timestep_spacing=spacing,
        steps_offset=int(config.get("steps_offset") or 0),
        prediction_type=config.get("prediction_type") or "epsilon", config=MappingProxyType(dict(config)),
    )


def _cosine_betas(T: int, max_beta: float = 0.999) -> torch.Tensor:
    """diffusers' `betas_for_alpha_bar` with the Glide cosine alpha-bar (squaredcos_cap_v2)."""
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)], dtype=torch.float32)


def betas_from_config(config: Mapping[str, Any]) -> torch.Tensor:
    """The (T,) float32 betas a diffusers scheduler builds from `config` (its defaults: linear 1e-4..0.02, T=1000).

        >>> betas_from_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}).shape
        torch.Size([1000])
    """
    T = int(config.get("num_train_timesteps") or 1000)
    b0, b1 = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    kind = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None:
        betas = torch.tensor(config["trained_betas"], dtype=torch.float32)
    elif kind == "linear":
        betas = torch.linspace(b0, b1, T, dtype=torch.float32)
    elif kind == "scaled_linear":
        betas = torch.linspace(b0**0.5, b1**0.5, T, dtype=torch.float32) ** 2
    elif kind == "squaredcos_cap_v2":
        betas = _cosine_betas(T)
    elif kind == "sigmoid":
        betas = torch.sigmoid(torch.linspace(-6, 6, T)) * (b1 - b0) + b0
    else:
        raise ValueError(f"beta_schedule {kind!r} is not supported; valid: {', '.join(BETA_SCHEDULES)} "
                         "(or pass trained_betas)")
    return rescale_zero_terminal_snr(betas) if config.get("rescale_betas_zero_snr") else betas


def _class_defaults(class_name: str | None) -> dict[str, Any]:
    """Constructor defaults of the named diffusers scheduler class ({} if unknown)."""
    try:
        import diffusers

        params = inspect.signature(getattr(diffusers, class_name).__init__).parameters.values()
    except Exception:  # unknown, missing or unimportable class: fall back to DDPM/DDIM defaults
        return {}
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def schedule_of(source: Any, config: Mapping[str, Any] | None = None, *, name: str | None = None) -> Schedule:
    """The `Schedule` of a scheduler instance, a pipeline, a scheduler class + config, a config dict or a JSON path.

        >>> from diffusers import DDIMScheduler
        >>> s = schedule_of(DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012))
        >>> s.name, s.num_train_timesteps
        ('DDIMScheduler', 1000)

    A scheduler instance's own `betas` are used (so `rescale_betas_zero_snr` and `trained_betas` count); configs are
    turned into betas by `betas_from_config`, with missing fields taken from the class named in `_class_name`.
    """
    if isinstance(source, Schedule):
        return source
    if isinstance(source, type):  # a scheduler class + its config
        source = source.from_config(dict(config or {}))
    elif config is not None:
        raise ValueError(f"config= is only used with a scheduler class; got a {type(source).__name__} as well")
    if hasattr(source, "scheduler") and hasattr(source.scheduler, "config"):  # a pipeline
        source = source.scheduler
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
        return schedule_of(json.loads(path.read_text()), name=name or path.stem)
    if isinstance(source, Mapping):
        full = {**_class_defaults(source.get("_class_name")), **source}
        return _schedule_from_betas(betas_from_config(full), name or source.get("_class_name", "schedule"), full)
    if hasattr(source, "config") and isinstance(source.config, Mapping):
        full = dict(source.config)
        betas = getattr(source, "betas", None)
        if betas is None:
            betas = betas_from_config(full)
        return _schedule_from_betas(torch.as_tensor(betas), name or type(source).__name__, full)
    raise TypeError(f"cannot read a schedule from a {type(source).__name__}; pass a diffusers scheduler, a pipeline, "
                    "a scheduler class with config=, a config dict or a JSON path")


def published_configs() -> dict[str, dict[str, Any]]:
    """The shipped published scheduler configs, {name: config dict}, from analyses/schedule_data/*.json.

        >>> sorted(published_configs())
        ['sd-1.5', 'sd-2.1', 'sdxl-base']
    """
    return {p.stem: json.loads(p.read_text()) for p in sorted(DATA_DIR.glob("*.json"))}


def published_schedules() -> dict[str, Schedule]:
    """{name: Schedule} for SD 1.5, SD 2.1 and SDXL base (all scaled_linear 0.00085..0.012, so the same curve).

        >>> published_schedules()["sd-2.1"].prediction_type
        'v_prediction'
    """
    return {n: schedule_of(c, name=n) for n, c in published_configs().items()}


# --- which timesteps a sampler visits -------------------------------------------------------------------------------
def spaced_timesteps(n: int, spacing: str = "leading", *, num_train_timesteps: int = 1000,
                     steps_offset: int = 0) -> torch.Tensor:
    """The n descending integer timesteps DDIM/DDPM `set_timesteps(n)` picks under `timestep_spacing=spacing`.

        >>> spaced_timesteps(10, "leading", steps_offset=1)[:3], spaced_timesteps(10, "trailing")[:3]
        (tensor([901, 801, 701]), tensor([999, 899, 799]))

    leading: (0, r, 2r, ...) with r = T // n, reversed, plus steps_offset (the only spacing the offset touches).
    linspace: round(linspace(0, T-1, n)), reversed.  trailing: round(T - i T/n) - 1 for i = 0..n-1.
    Where diffusers' trailing `np.arange` overshoots (e.g. n=61 gives 62 steps ending at t=-1) this returns the n it
    means. Euler-family schedulers use float timesteps for "linspace"; PNDM repeats one step for PLMS warm-up.
    """
    T = num_train_timesteps
    if not 1 <= n <= T:
        raise ValueError(f"n={n} steps is outside 1..num_train_timesteps={T}")
    if spacing == "leading":
        t = (np.arange(n) * (T // n)).round()[::-1] + steps_offset
    elif spacing == "linspace":
        t = np.linspace(0, T - 1, n).round()[::-1]
    elif spacing == "trailing":
        t = np.round(T - np.arange(n) * (T / n)) - 1
    else:
        raise ValueError(f"timestep spacing {spacing!r} is not one of {', '.join(SPACINGS)}")
    t = torch.from_numpy(t.astype(np.int64).copy())  # (n,) descending
    if t.max() > T - 1 or t.min() < 0:
        raise ValueError(f"{spacing} spacing with n={n}, steps_offset={steps_offset} picks t={t.max().item()}, "
                         f"outside the training timesteps 0..{T - 1}")
    return t


def sampled_timesteps(schedule: Any, n: int, spacing: str | None = None) -> torch.Tensor:
    """`spaced_timesteps` with T, steps_offset and (unless given) the spacing taken from the schedule.

        >>> sampled_timesteps(published_schedules()["sd-1.5"], 10)[0]
        tensor(901)
    """
    s = schedule_of(schedule)
    return spaced_timesteps(n, spacing or s.timestep_spacing, num_train_timesteps=s.num_train_timesteps,
                            steps_offset=s.steps_offset)


def first_step_snr(schedule: Any, n: int, spacing: str | None = None) -> float:
    """SNR at the first (noisiest) timestep an n-step sampler visits; compare with `schedule.terminal_snr`.

        >>> round(first_step_snr(published_schedules()["sd-1.5"], 10, "trailing"), 6)
        0.004682
    """
    s = schedule_of(schedule)
    return float(s.snr[sampled_timesteps(s, n, spacing)[0]])


# --- Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed" ------------------------------
def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. Algorithm 1: betas whose last alpha-bar is 0 (terminal SNR 0) and first alpha-bar unchanged.

        >>> float(rescale_zero_terminal_snr(torch.linspace(1e-4, 0.02, 1000))[-1])
        1.0
    """
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()  # (T,) sqrt(alpha-bar)
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))  # shift so the last is 0, scale so the first is unchanged
    abar = root**2  # (T,)
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])  # (T,) undo the cumulative product
    return 1.0 - alphas


def with_zero_terminal_snr(schedule: Any) -> Schedule:
    """The schedule with `rescale_zero_terminal_snr` applied to its betas.

        >>> with_zero_terminal_snr(published_schedules()["sd-1.5"]).terminal_snr
        0.0
    """
    s = schedule_of(schedule)
    config = {**s.config, "rescale_betas_zero_snr": True}
    return _schedule_from_betas(rescale_zero_terminal_snr(s.betas), f"{s.name} (zero terminal SNR)", config)


def rescale_cfg(guided: torch.Tensor, conditional: torch.Tensor, phi: float = 0.7) -> torch.Tensor:
    """Lin et al. Sec 3.4: rescale the guided prediction to the conditional one's std (per sample), mix by phi.

        >>> g, c = torch.randn(2, 4, 8, 8) * 3, torch.randn(2, 4, 8, 8)
        >>> rescale_cfg(g, c, phi=1.0).std(dim=(1, 2, 3)).allclose(c.std(dim=(1, 2, 3)))
        True
    """
    dims = list(range(1, guided.ndim))  # every non-batch dim
    std_cond = conditional.std(dim=dims, keepdim=True)  # (B, 1, ..., 1)
    std_guided = guided.std(dim=dims, keepdim=True)  # (B, 1, ..., 1)
    return phi * guided * (std_cond / std_guided) + (1.0 - phi) * guided


# --- signal leak and spatial-frequency bands ------------------------------------------------------------------------
@dataclass(frozen=True)
class SignalLeak:
    """How much of the per-image channel means survives noising at timestep t (see `signal_leak`)."""

    measured: float  # least-squares slope of noisy channel mean on clean channel mean
    stderr: float  # standard error of `measured`: large when the clean means barely differ
    predicted: float  # sqrt(alpha-bar_t)
    correlation: float  # Pearson r of clean vs noisy channel means: how visible the leak is to a model
    t: int
    draws: int


def signal_leak(images: torch.Tensor, schedule: Any, *, draws: int = 64, t: int | None = None,
                generator: torch.Generator | None = None) -> SignalLeak:
    """Fraction of the low-frequency content (per-image channel means) that survives noising at t (default T-1).

        >>> images = (torch.rand(8, 3, 1, 1) - 0.5 + 0.3 * torch.randn(8, 3, 32, 32)).clamp(-1, 1)
        >>> leak = signal_leak(images, published_schedules()["sd-1.5"])
        >>> abs(leak.measured - leak.predicted) < 0.02
        True

    images: (N, C, H, W) in [-1, 1], or latents. Each draw noises them with diffusers' `DDPMScheduler.add_noise`
    built from the schedule's betas (the VP forward process shared by DDIM/PNDM/DPM-Solver; Euler-family schedulers
    add x + sigma * eps, the same thing once `scale_model_input` divides by sqrt(sigma^2 + 1)).
    The channel means of the noise shrink as 1/sqrt(H W), so even a small surviving fraction is easy to read.
    The slope is only as precise as the clean means are spread out: see `stderr`.
    """
    from diffusers import DDPMScheduler

    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W); got shape {tuple(images.shape)}")
    s = schedule_of(schedule)
    T = s.num_train_timesteps
    t = T - 1 if t is None else int(t)
    if not 0 <= t < T:
        raise ValueError(f"t={t} is outside the training timesteps 0..{T - 1}")
    noiser = DDPMScheduler(num_train_timesteps=T, trained_betas=s.betas.float().numpy(), clip_sample=False)
    x = images.detach().float().cpu()  # (N, C, H, W)
    clean = x.mean(dim=(2, 3))  # (N, C)
    ts = torch.full((len(x),), t, dtype=torch.long)  # (N,)
    noisy = torch.stack([noiser.add_noise(x, torch.randn(x.shape, generator=generator), ts).mean(dim=(2, 3))
                         for _ in range(draws)])  # (draws, N, C)
    a = clean.expand_as(noisy).reshape(-1).double()  # (draws*N*C,)
    b = noisy.reshape(-1).double()  # (draws*N*C,)
    a, b = a - a.mean(), b - b.mean()
    if float(a.pow(2).sum()) == 0.0:
        raise ValueError("all images have the same channel means, so the surviving fraction cannot be measured; "
                         "pass images whose means differ")
    slope = (a * b).sum() / a.pow(2).sum()
    stderr = ((b - slope * a).pow(2).sum() / (len(a) - 2) / a.pow(2).sum()).sqrt()
    return SignalLeak(measured=float(slope), stderr=float(stderr), predicted=float(s.sqrt_alphas_cumprod[t]),
                      correlation=float((a * b).sum() / (a.norm() * b.norm())), t=t, draws=draws)


def band_power(x: torch.Tensor, bands: int = 3) -> torch.Tensor:
    """(N, bands) spatial energy of each image in equal-width radial frequency bands (low to high), float64.

        >>> band_power(torch.ones(1, 1, 4, 4))
        tensor([[16.,  0.,  0.]], dtype=torch.float64)

    x: (N, C, H, W); channels are summed. The radius of frequency (fy, fx), in cycles per pixel, is
    sqrt(fy^2 + fx^2) / sqrt(0.5^2 + 0.5^2), so 0 is the mean (DC) and 1 the corner (Nyquist in both axes, a
    checkerboard); band k holds radii in [k/bands, (k+1)/bands), the last also 1. Energy is |rfft2|^2 / (H W) with
    the half-spectrum columns counted twice, so the bands add up to sum(x^2) (Parseval).
    """
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W); got shape {tuple(x.shape)}")
    if bands < 1:
        raise ValueError(f"bands={bands} must be at least 1")
    N, C, H, W = x.shape
    power = torch.fft.rfft2(x.detach().double()).abs().pow(2).sum(dim=1) / (H * W)  # (N, H, W//2+1)
    weight = torch.full((W // 2 + 1,), 2.0, dtype=torch.float64)  # (W//2+1,) mirrored columns count twice
    weight[0] = 1.0
    if W % 2 == 0:
        weight[-1] = 1.0  # the Nyquist column has no mirror
    fy, fx = torch.fft.fftfreq(H, dtype=torch.float64), torch.fft.rfftfreq(W, dtype=torch.float64)
    radius = (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt() / math.sqrt(0.5)  # (H, W//2+1) in [0, 1]
    band = (radius * bands).floor().long().clamp(max=bands - 1)  # (H, W//2+1)
    onehot = torch.nn.functional.one_hot(band, bands).double()  # (H, W//2+1, bands)
    return torch.einsum("nhw,w,hwb->nb", power, weight, onehot)  # (N, bands)


def band_energy(x: torch.Tensor, bands: int = 3) -> torch.Tensor:
    """(N, bands) fractions of each image's spatial energy in `band_power`'s frequency bands (low to high).

        >>> band_energy(torch.ones(1, 3, 8, 8))
        tensor([[1., 0., 0.]], dtype=torch.float64)
    """
    energy = band_power(x, bands)  # (N, bands)
    total = energy.sum(dim=1, keepdim=True)  # (N, 1)
    if (total == 0).any():
        raise ValueError(f"images {torch.nonzero(total[:, 0] == 0).flatten().tolist()} are all zero; "
                         "their band fractions are undefined")
    return energy / total


# --- Beta timestep selection ("Beta Sampling is All You Need", Lee et al. 2024) and custom-timestep sampling --------
def _distinct_descending(t: np.ndarray, T: int) -> torch.Tensor:
    """Round ascending floats to distinct ints in 0..T-1, nudging collisions apart; returned descending."""
    t = np.round(np.sort(t)).astype(np.int64)
    for i in range(1, len(t)):
        t[i] = max(t[i], t[i - 1] + 1)
    t[-1] = min(t[-1], T - 1)
    for i in range(len(t) - 2, -1, -1):
        t[i] = min(t[i], t[i + 1] - 1)
    return torch.from_numpy(t[::-1].copy())  # (n,)


def beta_timesteps(n: int, a: float = 0.5, num_train_timesteps: int = 1000) -> torch.Tensor:
    """n distinct descending timesteps at the quantiles of Beta(a, a): for a < 1, dense at both ends.

        >>> beta_timesteps(6)
        tensor([999, 904, 654, 345,  95,   0])

    Quantile levels are linspace(1, 0, n) (n = 1 gives T-1); the quantiles are scaled to 0..T-1 and rounded,
    and rounding collisions (large n) are nudged apart by one step.
    """
    from scipy.stats import beta

    T = num_train_timesteps
    if not 1 <= n <= T:
        raise ValueError(f"n={n} steps is outside 1..num_train_timesteps={T}")
    if a <= 0:
        raise ValueError(f"a={a} must be positive")
    return _distinct_descending(beta.ppf(np.linspace(1, 0, n), a, a) * (T - 1), T)


def uniform_timesteps(n: int, num_train_timesteps: int = 1000) -> torch.Tensor:
    """n evenly spaced descending timesteps from T-1 to 0 (the comparison for `beta_timesteps`).

        >>> uniform_timesteps(4)
        tensor([999, 666, 333,   0])
    """
    T = num_train_timesteps
    if not 1 <= n <= T:
        raise ValueError(f"n={n} steps is outside 1..num_train_timesteps={T}")
    return _distinct_descending(np.linspace(T - 1, 0, n), T)


def supports_custom_timesteps(scheduler: Any) -> bool:
    """Whether `scheduler.set_timesteps` accepts `timesteps=` (a scheduler instance or class).

        >>> from diffusers import DDPMScheduler
        >>> supports_custom_timesteps(DDPMScheduler)
        True
    """
    return "timesteps" in inspect.signature(scheduler.set_timesteps).parameters


def custom_timestep_schedulers() -> list[str]:
    """Names of the common SD schedulers whose `set_timesteps` takes `timesteps=` in the installed diffusers.

        >>> "EulerDiscreteScheduler" in custom_timestep_schedulers()
        True
    """
    import diffusers

    found = []
    for name in _COMMON_SCHEDULERS:
        try:
            if supports_custom_timesteps(getattr(diffusers, name)):
                found.append(name)
        except Exception:  # missing from, or unimportable in, this diffusers version
            continue
    return found


def check_custom_timesteps(scheduler: Any, timesteps: Sequence[int] | torch.Tensor) -> list[int]:
    """The timesteps as a list of ints, after checking the scheduler takes them and they are valid for it.

        >>> from diffusers import EulerDiscreteScheduler
        >>> check_custom_timesteps(EulerDiscreteScheduler(), beta_timesteps(4))
        [999, 749, 250, 0]
    """
    if not supports_custom_timesteps(scheduler):
        raise ValueError(f"{type(scheduler).__name__}.set_timesteps does not accept timesteps=; swap in one that "
                         f"does: {', '.join(custom_timestep_schedulers())}")
    ts = [int(t) for t in (timesteps.tolist() if isinstance(timesteps, torch.Tensor) else timesteps)]
    T = scheduler.config.num_train_timesteps
    if not ts or any(b >= a for a, b in zip(ts, ts[1:])) or ts[0] > T - 1 or ts[-1] < 0:
        raise ValueError(f"timesteps must be strictly descending within 0..{T - 1}; got {ts}")
    return ts


def run_with_timesteps(pipe: Any, timesteps: Sequence[int] | torch.Tensor, **call_kwargs: Any) -> Any:
    """Call a diffusers pipeline with custom timesteps, e.g. `beta_timesteps(n)`, on its own scheduler.

        >>> out = run_with_timesteps(pipe, beta_timesteps(8), prompt="a red circle")  # doctest: +SKIP

    The pipeline is not changed: if its scheduler cannot take custom timesteps the error names ones that can.
    """
    return pipe(timesteps=check_custom_timesteps(pipe.scheduler, timesteps), **call_kwargs)
