"""What happens along a denoising trajectory, step by step, on any Stable Diffusion pipeline (1.x, 2.x, SDXL).

    >>> import lab
    >>> from analyses.schedules import follow
    >>> run = follow(lab.load("shapes"), "a small red circle on a white background", seed=0, num_inference_steps=10)
    >>> run.x0_images.shape            # what the model expects the final image to be, at each step
    (10, 128, 128, 3)
    >>> run.band_error.shape           # how far that is from the final image, per frequency band (low, mid, high)
    torch.Size([10, 3])

Per step i (timestep ``timesteps[i]``): the latent ``latents[i]`` entering the step, the predicted clean latent
``x0[i]`` (x0-hat, from the guided model output exactly as the pipeline combined it), both decoded, the step size, and
the energy of the decoded x0-hat in low / mid / high spatial-frequency bands. "Diffusion Models Generate Images Like
Painters" (Wang & Vastola 2023) and "Beta Sampling is All You Need" (Lee et al. 2024) report that the outline
settles first and the details last; ``band_error`` measures it: per band, the energy of x0-hat minus the final image,
over the energy of the final image.

How it reads the model: ``lab.trajectory.record(..., unet=True)`` records an ordinary pipeline call with the UNet's
input and output at each step, so any scheduler, ``timesteps=``, ``guidance_rescale`` and SDXL's added conditioning
work unchanged. x0-hat is computed from the UNet's input (the variance-preserving x_t, also for Euler-type
schedulers whose latents are scaled) and the guided output: uncond + g (cond - uncond), then CFG rescale when the
call set it, then the epsilon or v formula.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lab.trajectory import decode as _decode_unit, predict_x0, record

from .flow_trajectory import follow_flow, is_flow_pipeline
from .maths import band_power, rescale_cfg


@dataclass
class Run:
    """One generation with every step kept; step i turns ``latents[i]`` into ``latents[i + 1]`` at ``timesteps[i]``."""
    prompt: str
    seed: int
    timesteps: torch.Tensor      # (steps,) the scheduler's timestep at each step
    alphas: torch.Tensor         # (steps,) alpha-bar at each timestep: the signal share of x_t
    latents: torch.Tensor        # (steps + 1, C, h, w) the variance-preserving x_t entering each step; [-1] final
    x0: torch.Tensor             # (steps, C, h, w) the clean latent predicted at each step
    x0_images: np.ndarray        # (steps, H, W, 3) uint8: x0 decoded
    xt_images: np.ndarray        # (steps + 1, H, W, 3) uint8: the variance-preserving x_t decoded as if clean
    image: np.ndarray            # (H, W, 3) uint8: the pipeline's output
    bands: torch.Tensor          # (steps, bands) energy of each decoded x0-hat per band, mean colour removed
    band_error: torch.Tensor     # (steps, bands) energy of (x0-hat image - final image) / energy of the final image
    step_size: torch.Tensor      # (steps,) RMS change of the variance-preserving latent over the step
    meta: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def settled(self, tolerance: float = 0.1) -> list[int]:
        """Per band, the first step from which x0-hat stays within `tolerance` of the final image's energy."""
        out = []
        for b in range(self.band_error.shape[1]):
            above = (self.band_error[:, b] > tolerance).nonzero().flatten()
            out.append(0 if len(above) == 0 else int(above[-1]) + 1)
        return out


def _decode(pipe, latents: torch.Tensor, batch: int = 8) -> np.ndarray:
    """(N, C, h, w) latents -> (N, H, W, 3) uint8 images, decoded as the pipeline decodes its output."""
    return (_decode_unit(pipe, latents, batch=batch) * 255).round().astype(np.uint8)


def _unit(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1] with each image's channel means removed."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 127.5 - 1
    return x - x.mean(dim=(2, 3), keepdim=True)


@torch.no_grad()
def follow(pipe, prompt: str, seed: int = 0, num_inference_steps: int = 25, bands: int = 3, decode: bool = True,
           **call_kwargs) -> Run:
    """Generate ``prompt`` with ``pipe`` (one image, noise from a CPU generator seeded ``seed``) and keep every step.

    ``call_kwargs`` go to the pipeline unchanged (guidance_scale, negative_prompt, timesteps, guidance_rescale, ...).
    ``decode=False`` skips decoding the x_t (saves one VAE pass per step; x0-hat is always decoded).
    SD3 / SD3.5 / Flux pipelines go to `flow_trajectory.follow_flow` (x0-hat = x_t - sigma * v, Flux unpacked).
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string; got {prompt!r}")
    if bands < 1:
        raise ValueError(f"bands={bands} must be at least 1")
    if is_flow_pipeline(pipe):
        return follow_flow(pipe, prompt, seed, num_inference_steps, bands, decode, **call_kwargs)
    traj = record(pipe, prompt, seeds=seed, num_inference_steps=num_inference_steps, unet=True, **call_kwargs)
    sched = pipe.scheduler
    g, phi = float(getattr(pipe, "guidance_scale", 1.0)), float(getattr(pipe, "guidance_rescale", 0.0) or 0.0)
    alphas_cumprod = sched.alphas_cumprod.double().cpu()
    T = len(alphas_cumprod)
    xs, x0s, ts, alphas = [], [], [], []
    calls = traj.unet
    for sample, output, t in zip(calls.inputs, calls.outputs, calls.timesteps.tolist()):  # (rows, C, h, w) each
        if sample.shape[0] == 2:  # classifier-free guidance: the batch is [uncond, cond]
            guided = output[0] + g * (output[1] - output[0])
            if phi > 0:
                guided = rescale_cfg(guided[None], output[1:2], phi)[0]
            sample = sample[1]
        else:
            guided, sample = output[0], sample[0]
        alpha = float(alphas_cumprod[min(max(int(round(t)), 0), T - 1)])
        xs.append(sample), ts.append(t), alphas.append(alpha)
        x0s.append(predict_x0(sample, guided, alpha, sched.config.prediction_type))
    x0 = torch.stack(x0s)  # (steps, C, h, w)
    x_vp = torch.stack(xs + [traj.latents[-1, 0]])  # (steps + 1, C, h, w): the variance-preserving x_t, then z_0
    image = traj.images[0]  # (H, W, 3) uint8
    x0_images = _decode(pipe, x0)
    xt_images = _decode(pipe, x_vp) if decode else np.zeros((len(x_vp), *image.shape), np.uint8)
    final = _unit(image[None])  # (1, 3, H, W)
    x0_unit = _unit(x0_images)  # (steps, 3, H, W)
    per_band = band_power(x0_unit, bands)  # (steps, bands)
    error = band_power(x0_unit - final, bands) / band_power(final, bands).clamp_min(1e-12)
    size = (x_vp[1:] - x_vp[:-1]).pow(2).mean(dim=(1, 2, 3)).sqrt()  # (steps,)
    return Run(prompt=prompt, seed=seed, timesteps=torch.tensor(ts), alphas=torch.tensor(alphas),
               latents=x_vp, x0=x0, x0_images=x0_images,
               xt_images=xt_images, image=image, bands=per_band, band_error=error, step_size=size,
               meta={"pipeline": type(pipe).__name__, "scheduler": type(sched).__name__, "guidance_scale": g,
                     "guidance_rescale": phi, "prediction_type": sched.config.prediction_type,
                     "unet_calls": calls.calls})
